"""The replica's side: follow a primary's segment log, store its records here, index them.

Each round asks the primary for its log state (a long poll past the change we
last saw), then for each of its segments fetches the committed bytes past our
cursor, checks every record (header, metadata and pixel checksums), appends
the records as they are (compressed parts, stamps and all) through this
archive's own write path (group commit, fsync), and once they are durable and
indexed moves the cursor, saved in the index with the round's end (and at
least every SAVE_EVERY_S while catching up). The index is kept up to date from the
records as they come, never rebuilt; our segments are our own, so recovery,
recompression and compaction work here as on any archive.

Order: the primary's writers each fill a segment, and we fetch them one after
the other; the index is stamp-ordered (the newest record of a UID wins, a
tombstone deletes what is older than it), so the order does not change the
result. A record held already (fetched again after a crash between its commit
and the cursor's, or copied by the primary's compaction) is recognised by its
UID and stamp and skipped.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson

from engine.errors import CorruptRecordError, EngineError
from engine.index import replica as role
from engine.index.keys import Location
from engine.ingest import Prepared, entry_from_meta
from engine.storage.format import (
    KIND_TOMBSTONE,
    RECORD_HEADER,
    SEGMENT_HEADER,
    UID_MAX_LEN,
    crc32c,
    unpack_record_header,
)
from engine.storage.segment import decode_record, segment_name
from engine.writer import _Pending

if TYPE_CHECKING:
    from engine.archive import Archive

log = logging.getLogger("engine.replica")

CHUNK_BYTES = 16 << 20  # one request; the records in it share one fsync and one index commit
LONG_POLL_S = 1.0  # caught up: how long one request waits for a commit (bounds promote's wait)
TIMEOUT_S = 30.0
WAIT_MARGIN_S = 5.0  # a long poll's answer may take this long past its wait
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
# Cursors are saved with the round's end, and at least this often while catching up: a
# crash before that fetches a few records again, which are then recognised and skipped.
SAVE_EVERY_S = 1.0
# A round is at least this long: under a full-speed ingest the primary's head moves every few
# milliseconds, and a round per move cost the primary two HTTP requests per group commit (a
# tenth of its CPU); a round per 0.1 s carries ten times the records for the same requests.
ROUND_MIN_S = 0.1


class ReplicationError(EngineError):
    """The primary answered something a replica cannot use."""


@dataclass(frozen=True, slots=True)
class ReplicaSettings:
    """The ``[replica]`` table (or ``--replica-of``): whom to follow, as whom.

    ``primary`` is the primary's HTTP(S) root (``https://pacs1:8042``); a user
    and password may be in it or given apart; ``ca`` is a PEM file of CAs to
    trust for HTTPS (default: the system's).
    """

    primary: str  # without credentials: what is stored, shown and logged
    user: str | None = None
    password: str | None = None
    ca: str | None = None

    @classmethod
    def from_mapping(cls, table: dict[str, Any] | None) -> ReplicaSettings | None:
        if not table or not table.get("primary"):
            return None
        parts = urlsplit(str(table["primary"]))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"[replica] primary must be an http(s) URL, not {parts.geturl()!r}")
        netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        shown = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        user = table.get("user") or parts.username
        password = table.get("password") or parts.password
        return cls(shown, user, password, table.get("ca"))


class Primary:
    """The HTTP client of one primary's replication endpoints (one kept-alive connection).

    The standard library's ``http.client``, not httpx: a span's body is read
    straight into one buffer of its Content-Length, where httpx's parser cost
    the replica more CPU than the rest of applying the records.
    """

    def __init__(self, settings: ReplicaSettings) -> None:
        parts = urlsplit(settings.primary)
        self.url = settings.primary
        self.host, self.port = parts.hostname or "", parts.port
        self.base = parts.path.rstrip("/") + "/replication/v1"
        self.tls = None
        if parts.scheme == "https":
            self.tls = ssl.create_default_context(cafile=settings.ca)
        self.headers = {}
        if settings.user:
            token = f"{settings.user}:{settings.password or ''}".encode()
            self.headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        self._conn: http.client.HTTPConnection | None = None
        self._buf: bytearray | None = None  # the spans' buffer: 16 MiB zeroed once, not per span

    def log(self, after: int | None, wait: float) -> dict[str, Any]:
        params = {} if after is None else {"after": after, "wait": int(wait) or 1}
        body = self._get("/log", params)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict) or not {"now_ns", "head", "segments"} <= doc.keys():
            raise ReplicationError(f"{self.url}: not a replication log state: "
                                   f"{bytes(body[:200])!r}")  # fmt: skip
        return doc

    def span(self, segment_id: int, start: int, length: int) -> memoryview:
        """The bytes of a span, in a buffer reused by the next call: use them before it."""
        if self._buf is None or len(self._buf) < length:
            self._buf = bytearray(length)  # a new one: views of the old may still be alive
        return self._get(f"/segments/{segment_id}", {"start": start, "length": length},
                         self._buf)  # fmt: skip

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            timeout = TIMEOUT_S + WAIT_MARGIN_S
            if self.tls is not None:
                self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                                         context=self.tls)  # fmt: skip
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        return self._conn

    def _get(self, path: str, params: dict[str, Any],
             buf: bytearray | None = None) -> memoryview:  # fmt: skip
        target = self.base + path + (f"?{urlencode(params)}" if params else "")
        try:
            conn = self._connection()
            conn.request("GET", target, headers=self.headers)
            rsp = conn.getresponse()
            body = _read_body(rsp, buf)
        except (OSError, http.client.HTTPException) as exc:
            self.close()  # a new connection next time
            raise ReplicationError(f"GET {self.url}{target}: {type(exc).__name__}: {exc}") from exc
        if rsp.status != 200:
            raise ReplicationError(f"GET {self.url}{target}: {rsp.status} "
                                   f"{bytes(body[:300]).decode(errors='replace')}")  # fmt: skip
        return body

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _read_body(rsp: http.client.HTTPResponse, buf: bytearray | None) -> memoryview:
    """The whole body: into `buf` when its length is known and it fits, else a new buffer."""
    if rsp.length is None:
        return memoryview(rsp.read())
    if buf is None or len(buf) < rsp.length:
        buf = bytearray(rsp.length)
    view, got = memoryview(buf)[: rsp.length], 0
    while got < len(view):
        n = rsp.readinto(view[got:])
        if not n:
            raise http.client.IncompleteRead(bytes(view[:got]), len(view) - got)
        got += n
    return view


@dataclass(slots=True)
class Shipped:
    """One checked record of a span: where it was on the primary, and its bytes."""

    offset: int
    kind: int
    uid: str
    stamp: int
    meta_span: int
    data: memoryview
    meta: bytes | memoryview  # the decoded metadata part (empty for a tombstone)


def split_records(data: bytes | memoryview, segment_id: int,
                  offset: int) -> tuple[list[Shipped], int, int]:  # fmt: skip
    """The whole records at the start of `data` (read at `offset` of a primary's segment).

    Returns (records, bytes they take, bytes the next record needs in all: 0 if
    `data` ended on a record boundary). Every record is checked against its
    three checksums; a bad one raises :class:`CorruptRecordError`, and nothing
    after it is used.
    """
    view, pos = memoryview(data), 0
    out: list[Shipped] = []
    name = segment_name(segment_id)
    while pos < len(view):
        head = view[pos : pos + RECORD_HEADER.size + UID_MAX_LEN]
        if len(head) < RECORD_HEADER.size + 1:
            return out, pos, RECORD_HEADER.size + UID_MAX_LEN
        try:
            h, _ = unpack_record_header(head)
        except ValueError as exc:
            if len(head) < RECORD_HEADER.size + UID_MAX_LEN and "truncated" in str(exc):
                return out, pos, RECORD_HEADER.size + UID_MAX_LEN
            raise CorruptRecordError(name, offset + pos, str(exc)) from None
        if pos + h.total > len(view):
            return out, pos, h.total
        rec_view = view[pos : pos + h.total]
        rec = decode_record(rec_view, name, offset + pos, with_pixel=False)
        if crc32c(rec_view[h.meta_span :]) != h.pixel_crc:
            raise CorruptRecordError(name, offset + pos, "pixel part checksum mismatch")
        out.append(Shipped(offset + pos, h.kind, rec.uid, h.stored_at_ns, h.meta_span, rec_view,
                           rec.meta))  # fmt: skip
        pos += h.total
    return out, pos, 0


class Follower:
    """Keeps one archive a replica of one primary, until stopped or promoted."""

    def __init__(self, archive: Archive, primary: Primary, stop: threading.Event) -> None:
        self.archive, self.primary, self.stop = archive, primary, stop
        self.env = archive.env
        with self.env.read() as txn:
            doc = role.state(txn, self.env.db)
        if doc is None:
            raise ReplicationError("this archive is not a replica (promoted meanwhile?)")
        self.doc = doc
        self._saved_at, self._dirty = time.monotonic(), False  # cursors moved since saved

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> bool:
        """Follow until `stop` is set (False) or a promotion was asked for and done (True)."""
        failures = 0
        while not self.stop.is_set():
            if self._promotion_asked():
                self._promote()
                return True
            began = time.monotonic()
            try:
                caught_up = self.doc["applied_head"] >= self.doc["seen_head"]
                state = self.primary.log(self.doc["seen_head"] if caught_up else None, LONG_POLL_S)
                self._observe(state)
                if self._catch_up(state):
                    self._applied(state)
                failures = 0
                self.stop.wait(ROUND_MIN_S - (time.monotonic() - began))
            except EngineError as exc:  # unreachable, bad bytes, the disk: again later
                failures += 1
                self._failed(exc)
                self.stop.wait(BACKOFF_S[min(failures, len(BACKOFF_S)) - 1])
        return False

    def _observe(self, state: dict[str, Any]) -> None:
        """Note how far the primary is: its head, its clock, the bytes we lack."""
        cursors = self.doc["cursors"]
        behind = sum(max(0, end - cursors.get(str(sid), SEGMENT_HEADER.size))
                     for sid, end, _ in state["segments"])  # fmt: skip
        self.doc.update(seen_head=state["head"], seen_ns=state["now_ns"], behind_bytes=behind,
                        contact_ns=time.time_ns(), error=None)  # fmt: skip

    def _catch_up(self, state: dict[str, Any]) -> bool:
        """Fetch and apply every segment up to its listed end; whether all got there."""
        listed = set()
        for seg_id, end, _sealed in state["segments"]:
            listed.add(str(seg_id))
            while self._cursor(seg_id) < end:
                if self.stop.is_set() or self._promotion_asked():
                    return False
                self._fetch(seg_id, end)
        gone = [sid for sid in self.doc["cursors"] if sid not in listed]
        if gone:  # compacted away on the primary: its records came again in the new segment
            for sid in gone:
                del self.doc["cursors"][sid]
            self._save()
        return True

    def _cursor(self, seg_id: int) -> int:
        return int(self.doc["cursors"].get(str(seg_id), SEGMENT_HEADER.size))

    def _fetch(self, seg_id: int, end: int) -> None:
        start = self._cursor(seg_id)
        want = min(CHUNK_BYTES, end - start)
        data = self.primary.span(seg_id, start, want)
        records, used, need = split_records(data, seg_id, start)
        if not records and need > len(data):  # one record larger than a chunk
            data = self.primary.span(seg_id, start, need)
            records, used, need = split_records(data, seg_id, start)
        if not records:
            raise ReplicationError(f"{self.primary.url}: segment {seg_id} @ {start}: {len(data)} "
                                   f"bytes and no whole record (end {end})")  # fmt: skip
        self._apply(records)
        self.doc["cursors"][str(seg_id)] = start + used
        self.doc["behind_bytes"] = max(0, self.doc["behind_bytes"] - used)
        self.doc["records"] = self.doc.get("records", 0) + len(records)
        self._dirty = True
        if time.monotonic() - self._saved_at >= SAVE_EVERY_S:  # else once the round is done
            self._save()

    # -- applying -----------------------------------------------------------------------

    def _apply(self, records: list[Shipped]) -> None:
        """Store the records we do not hold yet; return once they are durable and indexed."""
        catalog, writes = self.archive.catalog, self.archive.writes
        deleted: dict[str, int] = {}
        pending: list[_Pending] = []
        with self.env.read() as txn:
            for r in records:
                gone = max(deleted.get(r.uid, 0), catalog.deleted_at(txn, r.uid))
                if r.kind == KIND_TOMBSTONE:
                    if gone < r.stamp:
                        deleted[r.uid] = r.stamp
                        pending.append(writes.submit_tombstone([r.data], len(r.data), r.uid,
                                                               r.stamp))  # fmt: skip
                    continue
                held = catalog.location(txn, r.uid)
                if gone > r.stamp or (held is not None and held.stored_at_ns >= r.stamp):
                    continue  # deleted since, or this record (or a newer one) is here
                loc = Location(0, 0, len(r.data), r.meta_span, r.stamp)
                entry = entry_from_meta(bytes(r.meta), loc)
                pending.append(writes.submit(Prepared(entry, [r.data], len(r.data))))
        # every one waited for, even after a failure: they hold views of the span's buffer,
        # which the next fetch overwrites
        failed: EngineError | None = None
        for p in pending:
            try:
                writes.wait(p)
            except EngineError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed

    def _save(self) -> None:
        """Write our document, keeping a promotion asked for meanwhile by `pacs promote`."""

        def save(txn: Any) -> None:
            stored = role.state(txn, self.env.db)
            if stored is None:
                raise ReplicationError("promoted meanwhile: this archive follows no one now")
            if stored.get("promote"):
                self.doc["promote"] = True
            role.put_state(txn, self.env.db, self.doc)

        self.env.write(save)
        self._saved_at, self._dirty = time.monotonic(), False

    def _applied(self, state: dict[str, Any]) -> None:
        """Everything the primary had committed at `state` is here now (cursors saved with it)."""
        if (self.doc["applied_head"], self.doc["applied_ns"]) == (state["head"], state["now_ns"]) \
                and not self._dirty:
            return
        self.doc.update(applied_head=state["head"], applied_ns=state["now_ns"])
        self._save()

    def _failed(self, exc: BaseException) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if self.doc.get("error") != text:
            log.error("replication from %s: %s", self.primary.url, text)
        self.doc["error"] = text
        try:
            self._save()
        except EngineError as save_exc:
            log.error("cannot record the replication error: %s", save_exc)

    # -- promotion ----------------------------------------------------------------------

    def _promotion_asked(self) -> bool:
        if self.doc.get("promote"):
            return True
        with self.env.read() as txn:
            stored = role.state(txn, self.env.db)
        return stored is None or bool(stored.get("promote"))

    def _promote(self) -> None:
        """Stop following: this archive takes stores from now on."""
        now = time.time_ns()
        last = self.env.write(lambda txn: role.finish_promotion(txn, self.env.db, now))
        if last is not None:
            lag = role.lag(last)
            log.warning("promoted: no longer a replica of %s; every instance it acknowledged "
                        "before %s is here (%d changes behind when promoted)",
                        self.primary.url, iso_ns(lag["point_ns"]), lag["records"])  # fmt: skip


def iso_ns(ns: int) -> str:
    """A wall-clock time in nanoseconds as ISO 8601 UTC with milliseconds."""
    if not ns:
        return "never"
    when = datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
