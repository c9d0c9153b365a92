"""The forwarder: one thread per rule, each following the change log with its queue.

A rule's round: read the changes after its cursor, keep the stored
instances its ``when`` matches (up to ``batch``), add the retries that are
due, send them (:mod:`engine.forward.senders`), and commit the outcome with
the new cursor (:class:`engine.forward.queue.ForwardQueue`). A destination
that cannot be reached leaves the cursor where it was and the rule waits,
longer each time (at most :data:`UNREACHABLE_WAIT_MAX_S`); what was
waiting longer than ``max_age_s`` then becomes a dead letter.

A rule with ``commit = true`` has a :class:`engine.forward.commit.Committer`:
what the destination took waits in a Storage Commitment transaction,
settled at the start of a later round once the report is in (committed:
sent; not committed: a refusal, retried), or after ``commit_timeout_s``
without one (a refusal too).

It runs off the store path: in ``pacs serve`` it is a process of its own
beside the workers (:func:`run_forwarder`), and a store costs it only the
change entry the index writes in the same transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydicom.multival import MultiValue
from pydicom.uid import generate_uid

from engine.forward.commit import Committer, not_committed
from engine.forward.queue import ForwardQueue, Outcome
from engine.forward.rules import Rule
from engine.forward.senders import Delivery, DicomSender, StowSender
from engine.index import changes
from engine.index.commitments import Pending
from engine.net.retrieve import Match

if TYPE_CHECKING:
    from engine.archive import Archive
    from engine.net.settings import ServerSettings

log = logging.getLogger("engine.forward")

POLL_S = 0.05  # how often an idle rule looks at the log
UNREACHABLE_WAIT_S = 0.5  # the first wait after a destination could not be reached; doubles
UNREACHABLE_WAIT_MAX_S = 30.0
LOOK_AHEAD = 4  # changes read per round, in batches: most may not match the rule


class Sender(Protocol):
    def send(self, matches: Sequence[Match], study_of: Any) -> Delivery: ...

    def idle(self) -> None:
        """Called when a round found nothing to do: release what was kept open."""
        ...

    def close(self) -> None: ...


@dataclass(slots=True)
class _Item:
    match: Match
    study: str
    waited_since_ns: int  # stored (or first refused): what max_age_s counts from
    doc: dict[str, Any]  # the instance's index document


def sender_for(archive: Archive, rule: Rule, settings: ServerSettings) -> Sender:
    if rule.target.kind == "dicom":
        return DicomSender(archive, settings, rule.target.address, rule.parallel,
                           client_tls(settings, rule.target.address))  # fmt: skip
    return StowSender(archive, rule.target.address, rule.parallel)


def committer_for(archive: Archive, rule: Rule, settings: ServerSettings) -> Committer | None:
    if not rule.commit:
        return None
    address = rule.target.address
    return Committer(archive, settings, address, client_tls(settings, address))


def client_tls(settings: ServerSettings, ae_title: str) -> Any:
    """The client TLS context for [remotes] entry `ae_title`; None when it is plain TCP."""
    from engine.net.tls import client_context

    return client_context(settings.tls) if settings.remotes[ae_title].tls else None


class RuleRunner:
    """Follows the change log for one rule until `stop` is set."""

    def __init__(self, archive: Archive, rule: Rule, sender: Sender, stop: threading.Event,
                 committer: Committer | None = None) -> None:  # fmt: skip
        self.archive, self.rule, self.sender, self.stop = archive, rule, sender, stop
        self.committer = committer
        self.queue = ForwardQueue(archive.env, rule.name)
        self._wait_s = 0.0

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    busy = self.round()
                except Exception:  # the rule must go on; the cursor did not move
                    log.exception("forward %s: round failed", self.rule.name)
                    busy = False
                    self.stop.wait(UNREACHABLE_WAIT_MAX_S / 10)
                if not busy:
                    self.sender.idle()
                    if self.committer is not None:
                        self.committer.idle()
                    self.stop.wait(POLL_S)
        finally:
            self.sender.close()
            if self.committer is not None:
                self.committer.close()

    def round(self) -> bool:
        """One batch; whether there was anything to do."""
        if self.committer is not None:
            self._settle()
        cursor = self.queue.cursor()
        items, last = self._from_log(cursor)
        retries, gone = self._due_retries({i.match.sop_instance for i in items})
        todo = items + retries
        if not todo:
            if last != cursor or gone:
                self.queue.commit(Outcome(last, [], [], [], gone), self.rule.max_attempts)
            return last != cursor
        study_of = {i.match.sop_instance: i.study for i in todo}
        delivery = self.sender.send([i.match for i in todo], lambda m: study_of[m.sop_instance])
        return self._commit(todo, delivery, cursor, last, gone)

    def _commit(self, todo: list[_Item], d: Delivery, cursor: int, last: int,
                gone: list[str]) -> bool:  # fmt: skip
        expired: list[tuple[str, str]] = []
        if d.unsent:
            limit_ns = time.time_ns() - int(self.rule.max_age_s * 1e9)
            waited = {i.match.sop_instance: i.waited_since_ns for i in todo}
            if self.rule.max_age_s and all(waited[u] < limit_ns for u in d.unsent):
                why = f"waited more than {self.rule.max_age_s:g} s: {d.error}"
                expired = [(u, why) for u in d.unsent]  # the queue moves past them
            else:
                last = cursor  # the queue holds: this batch goes again
        out = Outcome(last, d.sent, d.refused, expired, gone)
        if self.committer is not None and d.sent:  # delivered once committed, not before
            out.sent, out.awaiting = [], Pending(generate_uid(), self.rule.name,
                                                 dict.fromkeys(d.sent, (0, 0)), 0)  # fmt: skip
        dead = self.queue.commit(out, self.rule.max_attempts)
        if out.awaiting is not None:
            dead += self._ask(out.awaiting.transaction, d.sent, todo)
        for uid in dead:
            log.error("forward %s: %s is a dead letter", self.rule.name, uid)
        if d.unsent and not expired:
            self._wait_s = min(UNREACHABLE_WAIT_MAX_S, max(UNREACHABLE_WAIT_S, self._wait_s * 2))
            log.warning("forward %s: %d instances wait: %s; next try in %.1f s", self.rule.name,
                        len(d.unsent), d.error, self._wait_s)  # fmt: skip
            self.queue.note_error(d.error)
            self.stop.wait(self._wait_s)
            return False
        self._wait_s = 0.0
        if d.sent:
            log.debug("forward %s: %d sent, %d refused", self.rule.name, len(d.sent),
                     len(d.refused))  # fmt: skip
        return True

    def _ask(self, transaction: str, sent: list[str], todo: list[_Item]) -> list[str]:
        """Send the Storage Commitment request (its transaction is durable already); a request
        the destination did not take settles as refused at once. The new dead letters."""
        assert self.committer is not None
        class_of = {i.match.sop_instance: i.match.sop_class for i in todo}
        why = self.committer.request(transaction, [(class_of[u], u) for u in sent])
        if why is None:
            return []
        log.warning("forward %s: %s", self.rule.name, why)
        return self.queue.settle(transaction, [], [(u, why) for u in sent],
                                 self.rule.max_attempts)  # fmt: skip

    def _settle(self) -> None:
        """Settle the transactions whose report is in, or that waited past the timeout."""
        now = time.time_ns()
        for p in self.queue.awaiting():
            report = self.queue.report(p.transaction)
            if report is not None:
                failed = [(u, not_committed(r)) for u, r in report.failed.items()]
                answered = set(report.committed) | set(report.failed)
                failed += [(u, "not in the Storage Commitment report") for u in p.uids
                           if u not in answered]  # fmt: skip
                committed = report.committed
            elif now - p.asked_ns > self.rule.commit_timeout_s * 1e9:
                why = f"no Storage Commitment report within {self.rule.commit_timeout_s:g} s"
                committed, failed = [], [(u, why) for u in p.uids]
            else:
                continue
            for uid in self.queue.settle(p.transaction, committed, failed, self.rule.max_attempts):
                log.error("forward %s: %s is a dead letter", self.rule.name, uid)

    def _from_log(self, cursor: int) -> tuple[list[_Item], int]:
        """The stored instances after `cursor` the rule matches (at most ``batch``), and the
        number of the last change looked at."""
        items: list[_Item] = []
        last = cursor
        for ch in self.queue.changes_after(cursor, self.rule.batch * LOOK_AHEAD):
            if ch.kind == changes.STORED:
                item = self._item(ch.sop_uid, None)
                if item is not None and self._matches(ch.sop_uid, item):
                    items.append(item)
            last = ch.seq
            if len(items) >= self.rule.batch:
                break
        return items, last

    def _due_retries(self, taken: set[str]) -> tuple[list[_Item], list[str]]:
        """Retries that are due, as items, and the UIDs of retries no longer stored."""
        due: list[_Item] = []
        gone: list[str] = []
        for w in self.queue.retries_due(time.time_ns(), self.rule.batch):
            if w.sop_uid in taken:
                continue
            item = self._item(w.sop_uid, w.first_ns)
            if item is None:
                gone.append(w.sop_uid)
            else:
                due.append(item)
        return due, gone

    def _item(self, uid: str, waited_since: int | None) -> _Item | None:
        with self.archive.env.read() as txn:
            found = stored_match(txn, self.archive.catalog, uid)
        if found is None:  # deleted since
            return None
        m, doc, stored_at = found
        return _Item(m, doc["study"], waited_since or stored_at, doc)

    def _matches(self, uid: str, item: _Item) -> bool:
        rule = self.rule
        if not rule.conditions:
            return True
        stored = self._stored(uid) if rule.needs_metadata else None
        return rule.matches(self._indexed(item), stored)

    def _indexed(self, item: _Item) -> dict[str, Any]:
        """The instance's indexed attributes, every level merged, as a C-FIND would match."""
        cat, doc = self.archive.catalog, item.doc
        with self.archive.env.read() as txn:
            series = cat.doc(txn, "series", doc["series"]) or {"a": {}}
            study = cat.doc(txn, "studies", item.study) or {"a": {}, "mods": {}, "classes": {}}
        return {**study["a"], **series["a"], **doc["a"],
                "ModalitiesInStudy": "\\".join(sorted(study.get("mods", {}))),
                "SOPClassesInStudy": "\\".join(sorted(study.get("classes", {})))}  # fmt: skip

    def _stored(self, uid: str) -> dict[str, Any]:
        """The rule's non-indexed keys from the instance's metadata (File Meta included)."""
        try:
            ds = self.archive.get_metadata(uid)
        except Exception as exc:  # noqa: BLE001 -- unreadable: it matches no key
            log.warning("forward %s: cannot read %s to match it: %s", self.rule.name, uid, exc)
            return {}
        out: dict[str, Any] = {}
        for c in self.rule.conditions:
            if c.indexed:
                continue
            source = ds.file_meta if c.keyword.startswith("SourceApplication") else ds
            value = source.get(c.keyword)
            if value is not None:
                out[c.keyword] = _text(value)
        return out


def stored_match(txn: Any, catalog: Any, uid: str) -> tuple[Match, dict[str, Any], int] | None:
    """An indexed instance as a Match (how it is stored), its index document and its store
    time; None if it is not stored (``pacs send`` builds its matches here too)."""
    found = catalog.lookup(txn, uid)
    if found is None:
        return None
    loc, doc = found
    a = doc["a"]
    return (
        Match(uid, str(a.get("SOPClassUID", "")), str(a.get("TransferSyntaxUID", ""))),
        doc,
        loc.stored_at_ns,
    )


def _text(value: Any) -> str:
    """A pydicom value as the index writes one: multiple values joined by backslashes."""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def start_rules(archive: Archive, rules: Sequence[Rule], settings: ServerSettings,
                stop: threading.Event) -> list[threading.Thread]:  # fmt: skip
    """A thread per rule, started; they end once `stop` is set."""
    threads = []
    for rule in rules:
        runner = RuleRunner(archive, rule, sender_for(archive, rule, settings), stop,
                            committer_for(archive, rule, settings))  # fmt: skip
        t = threading.Thread(target=runner.run, name=f"forward-{rule.name}", daemon=True)
        t.start()
        threads.append(t)
    return threads
