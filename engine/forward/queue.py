"""The durable queue of one forward rule: a cursor over the change log, retries, dead letters.

The queue holds no copy of what it sends: its cursor is the number of the
last change (:mod:`engine.index.changes`) it has handled, so taking in a
store costs nothing beyond the change entry the index writes anyway. What
the destination refused waits as a retry entry (attempts, when next); what
it refused ``max_attempts`` times, or what waited longer than ``max_age_s``,
is a dead letter until ``pacs queue --retry`` or ``--purge``.

Everything lives in the index's ``forward`` database, and a batch's
outcome (cursor, retries, dead letters, counts) commits in one transaction
after the destination answered: a crash before it sends the batch again
(at-least-once delivery; a peer takes a SOP Instance UID twice as one).
LMDB commits in order, so a durable cursor implies the changes it passed
are durable too, even with the index's ``metasync`` off.

Keys: ``c:NAME`` cursor, ``s:NAME`` counts, ``r:NAME NUL UID`` retries,
``d:NAME NUL UID`` dead letters. A rule with ``commit = true`` moves what
the destination took into a pending Storage Commitment transaction
(:mod:`engine.index.commitments`) in the same commit; :meth:`ForwardQueue.settle`
counts it sent once the report commits it, or retries it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.index import changes, commitments
from engine.index import keys as K
from engine.index.commitments import Pending
from engine.index.env import IndexEnv

RETRY_BASE_S = 2.0  # the wait before the first retry of a refused instance; doubles
RETRY_MAX_S = 600.0
RATE_WINDOW_S = 60.0  # the send rate shown is over the last window this long that ended


@dataclass(frozen=True, slots=True)
class Waiting:
    """A retry or a dead letter."""

    sop_uid: str
    attempts: int
    error: str
    first_ns: int  # when the instance was first refused
    next_ns: int = 0  # retries: not before


@dataclass(frozen=True, slots=True)
class QueueState:
    name: str
    cursor: int
    head: int  # the newest change of the archive
    retries: int
    dead: int
    sent: int
    refused: int
    last_error: str
    last_sent_ns: int
    awaiting: int = 0  # sent, the destination's Storage Commitment report not in yet
    lag_s: float = 0.0  # how long the oldest change not looked at yet has waited
    rate_per_s: float = 0.0  # instances delivered per second over the last rate window

    @property
    def behind(self) -> int:
        """Changes not looked at yet (stores this rule may or may not match)."""
        return max(0, self.head - self.cursor)


@dataclass(slots=True)
class Outcome:
    """What one batch came to, committed at once by :meth:`ForwardQueue.commit`."""

    cursor: int  # the last change the batch covered
    sent: list[str]
    refused: list[tuple[str, str]]  # (UID, why) the destination refused or we could not send
    expired: list[tuple[str, str]]  # (UID, why) waited past max_age_s: dead letters now
    gone: list[str] = field(default_factory=list)  # retries of instances deleted since
    # commit = true: what the destination took waits for its report (not counted sent yet);
    # each UID's attempts and first wait are filled in from its retry entry, if any
    awaiting: Pending | None = None


def _key(kind: str, name: str, uid: str = "") -> bytes:
    return f"{kind}:{name}".encode() + (b"\x00" + uid.encode() if uid else b"")


class ForwardQueue:
    """The queue of the rule `name` in the archive's index."""

    def __init__(self, env: IndexEnv, name: str) -> None:
        self.env, self.name, self.db = env, name, env.db

    # -- reading -------------------------------------------------------------------

    def cursor(self) -> int:
        """The cursor; a queue seen for the first time starts at the log's head (and keeps it)."""
        with self.env.read() as txn:
            raw = txn.get(_key("c", self.name), db=self.db["forward"])
            if raw is not None:
                return int(raw)
        return self.env.write(self._start)

    def _start(self, txn: Any) -> int:
        raw = txn.get(_key("c", self.name), db=self.db["forward"])
        if raw is not None:  # another process started it meanwhile
            return int(raw)
        head = changes.head(txn, self.db)
        txn.put(_key("c", self.name), b"%d" % head, db=self.db["forward"])
        return head

    def changes_after(self, cursor: int, limit: int) -> list[changes.Change]:
        with self.env.read() as txn:
            return changes.after(txn, self.db, cursor, limit)

    def retries_due(self, now_ns: int, limit: int) -> list[Waiting]:
        return [w for w in self._list("r", limit * 4) if w.next_ns <= now_ns][:limit]

    def retries(self, limit: int = 1000) -> list[Waiting]:
        return self._list("r", limit)

    def dead_letters(self, limit: int = 1000) -> list[Waiting]:
        return self._list("d", limit)

    def _list(self, kind: str, limit: int) -> list[Waiting]:
        prefix = _key(kind, self.name) + b"\x00"
        out: list[Waiting] = []
        with self.env.read() as txn:
            cur = txn.cursor(db=self.db["forward"])
            if not cur.set_range(prefix):
                return out
            for key, value in cur:
                if not key.startswith(prefix) or len(out) >= limit:
                    break
                out.append(Waiting(key[len(prefix) :].decode(), **orjson.loads(value)))
        return out

    def state(self, *, start: bool = True) -> QueueState:
        """The queue's figures; `start`: a queue listed before it ran starts now, as it would
        (``pacs queue``); else it is only read (``pacs stats``), as if at the log's head."""
        if start:
            self.cursor()
        with self.env.read() as txn:
            db = self.db["forward"]
            raw = txn.get(_key("c", self.name), db=db)
            cursor = int(raw) if raw is not None else changes.head(txn, self.db)
            counts = orjson.loads(txn.get(_key("s", self.name), db=db) or b"{}")
            head = changes.head(txn, self.db)
            awaiting = sum(len(p.uids) for p in commitments.pending_of(txn, self.db, self.name))
            lag_s = self._lag_s(txn, cursor, head)
        return QueueState(self.name, cursor, head, self._count("r"), self._count("d"),
                          counts.get("sent", 0), counts.get("refused", 0),
                          counts.get("last_error", ""), counts.get("last_sent_ns", 0),
                          awaiting, lag_s, self._rate(counts))  # fmt: skip

    @staticmethod
    def _rate(counts: dict[str, Any]) -> float:
        """The last window's rate; 0 once nothing was sent for a whole window."""
        idle_ns = time.time_ns() - counts.get("last_sent_ns", 0)
        return 0.0 if idle_ns > RATE_WINDOW_S * 1e9 else float(counts.get("rate", 0.0))

    def _lag_s(self, txn: Any, cursor: int, head: int) -> float:
        """Seconds since the oldest store after the cursor (deletions and gone UIDs skipped)."""
        if head <= cursor:
            return 0.0
        for ch in changes.after(txn, self.db, cursor, 256):
            raw = txn.get(ch.sop_uid.encode(), db=self.db["instances"]) if ch.kind == \
                changes.STORED else None
            if raw:
                stored_ns = K.unpack_location(raw).stored_at_ns
                return max(0.0, (time.time_ns() - stored_ns) / 1e9)
        return 0.0

    def _count(self, kind: str) -> int:
        prefix = _key(kind, self.name) + b"\x00"
        n = 0
        with self.env.read() as txn:
            cur = txn.cursor(db=self.db["forward"])
            if cur.set_range(prefix):
                for key in cur.iternext(values=False):
                    if not key.startswith(prefix):
                        break
                    n += 1
        return n

    # -- writing -------------------------------------------------------------------

    def commit(self, out: Outcome, max_attempts: int) -> list[str]:
        """Record a batch's outcome in one transaction; the UIDs that became dead letters."""
        now = time.time_ns()

        def write(txn: Any) -> list[str]:
            db, dead = self.db["forward"], list[str]()
            for uid in [*out.sent, *out.gone]:
                txn.delete(_key("r", self.name, uid), db=db)
            for uid, why in out.refused:
                attempts, first_ns = self._attempts(txn, uid, now)
                self._refuse(txn, uid, why, attempts, first_ns, max_attempts, now, dead)
            if out.awaiting is not None:
                self._await(txn, out.awaiting, now)
            for uid, why in out.expired:
                raw = txn.get(_key("r", self.name, uid), db=db)
                old = orjson.loads(raw) if raw else {"attempts": 0, "first_ns": now}
                dead.append(uid)
                self._bury(txn, uid, old["attempts"], why, old["first_ns"])
            cursor_key = _key("c", self.name)
            if out.cursor > int(txn.get(cursor_key, db=db) or b"0"):
                txn.put(cursor_key, b"%d" % out.cursor, db=db)
            self._count_up(txn, out, now)
            return dead

        return self.env.write(write)

    def _attempts(self, txn: Any, uid: str, now: int) -> tuple[int, int]:
        """An instance's refusals so far and when it first waited (from its retry entry)."""
        raw = txn.get(_key("r", self.name, uid), db=self.db["forward"])
        old = orjson.loads(raw) if raw else {"attempts": 0, "first_ns": now}
        return int(old["attempts"]), int(old["first_ns"])

    def _refuse(self, txn: Any, uid: str, why: str, before: int, first_ns: int,
                max_attempts: int, now: int, dead: list[str]) -> None:  # fmt: skip
        """One more refusal: a retry after a backoff, or a dead letter at `max_attempts`."""
        attempts = before + 1
        if attempts >= max_attempts:
            dead.append(uid)
            self._bury(txn, uid, attempts, f"{why} ({attempts} attempts)", first_ns)
            return
        wait_s = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (attempts - 1))
        txn.put(_key("r", self.name, uid), orjson.dumps({
            "attempts": attempts, "error": why, "first_ns": first_ns,
            "next_ns": now + int(wait_s * 1e9)}), db=self.db["forward"])  # fmt: skip

    def _await(self, txn: Any, p: Pending, now: int) -> None:
        uids = {}
        for uid in p.uids:
            uids[uid] = self._attempts(txn, uid, now)
            txn.delete(_key("r", self.name, uid), db=self.db["forward"])  # not due while it waits
        commitments.add_pending(txn, self.db, Pending(p.transaction, self.name, uids, now))

    def awaiting(self) -> list[Pending]:
        """The Storage Commitment transactions this rule waits on, oldest first."""
        with self.env.read() as txn:
            return commitments.pending_of(txn, self.db, self.name)

    def report(self, transaction: str) -> commitments.Report | None:
        with self.env.read() as txn:
            return commitments.get_report(txn, self.db, transaction)

    def settle(self, transaction: str, committed: list[str], failed: list[tuple[str, str]],
               max_attempts: int) -> list[str]:  # fmt: skip
        """A transaction answered (or given up on): `committed` count as sent, `failed` as
        refused; the UIDs that became dead letters. Nothing if it was settled already."""
        now = time.time_ns()

        def write(txn: Any) -> list[str]:
            p = commitments.get_pending(txn, self.db, transaction)
            dead: list[str] = []
            if p is None:
                return dead
            commitments.drop(txn, self.db, transaction)
            done = [u for u in committed if u in p.uids]
            refused = [(u, why) for u, why in failed if u in p.uids]
            for uid, why in refused:
                before, first_ns = p.uids[uid]
                self._refuse(txn, uid, why, before, first_ns, max_attempts, now, dead)
            self._count_up(txn, Outcome(0, done, refused, []), now)
            return dead

        return self.env.write(write)

    def _bury(self, txn: Any, uid: str, attempts: int, why: str, first_ns: int) -> None:
        db = self.db["forward"]
        txn.delete(_key("r", self.name, uid), db=db)
        txn.put(_key("d", self.name, uid), orjson.dumps(
            {"attempts": attempts, "error": why, "first_ns": first_ns}), db=db)  # fmt: skip

    def _count_up(self, txn: Any, out: Outcome, now: int) -> None:
        key, db = _key("s", self.name), self.db["forward"]
        counts = orjson.loads(txn.get(key, db=db) or b"{}")
        counts["sent"] = counts.get("sent", 0) + len(out.sent)
        counts["refused"] = counts.get("refused", 0) + len(out.refused)
        start = counts.setdefault("window_ns", now)
        if now - start >= 2 * RATE_WINDOW_S * 1e9:  # idle meanwhile: a window starts now
            start, counts["window_ns"], counts["window_sent"] = now, now, 0
        counts["window_sent"] = counts.get("window_sent", 0) + len(out.sent)
        if now - start >= RATE_WINDOW_S * 1e9:  # a window ended: its rate is the one shown
            counts["rate"] = counts["window_sent"] / ((now - start) / 1e9)
            counts["window_ns"], counts["window_sent"] = now, 0
        if out.sent:
            counts["last_sent_ns"] = now
        if out.refused or out.expired:
            counts["last_error"] = (out.refused or out.expired)[-1][1]
        txn.put(key, orjson.dumps(counts), db=db)

    def note_error(self, why: str) -> None:
        """Keep the reason the destination could not be reached (shown by ``pacs queue``)."""

        def write(txn: Any) -> None:
            key, db = _key("s", self.name), self.db["forward"]
            counts = orjson.loads(txn.get(key, db=db) or b"{}")
            counts["last_error"] = why
            txn.put(key, orjson.dumps(counts), db=db)

        self.env.write(write)

    def retry_dead(self, uids: Iterable[str] | None = None) -> int:
        """Dead letters (all, or `uids`) back to the queue, due now; how many."""
        return self._move_dead(uids, keep=True)

    def purge_dead(self, uids: Iterable[str] | None = None) -> int:
        """Forget dead letters (all, or `uids`); how many."""
        return self._move_dead(uids, keep=False)

    def _move_dead(self, uids: Iterable[str] | None, *, keep: bool) -> int:
        chosen = None if uids is None else set(uids)
        letters = [w for w in self.dead_letters(limit=10**9)
                   if chosen is None or w.sop_uid in chosen]  # fmt: skip

        def write(txn: Any) -> int:
            db = self.db["forward"]
            for w in letters:
                txn.delete(_key("d", self.name, w.sop_uid), db=db)
                if keep:
                    txn.put(_key("r", self.name, w.sop_uid), orjson.dumps(
                        {"attempts": 0, "error": w.error, "first_ns": time.time_ns(),
                         "next_ns": 0}), db=db)  # fmt: skip
            return len(letters)

        return self.env.write(write)
