"""The write path: appends to the active segment, group commit, rotation.

Concurrent stores append under one lock (appends never wait for disk), then
wait for their turn to be durable. The first waiter to find no flush under
way becomes the leader: it takes every record appended so far, fsyncs each
segment they are in once, indexes them all in one LMDB transaction, and
wakes everyone it covered. So N concurrent stores share one fsync and one
index commit (group commit, as in LevelDB's write queue).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.errors import EngineError
from engine.index import keys as K
from engine.index.catalog import ApplyResult, Catalog, IndexEntry
from engine.ingest import Prepared
from engine.storage.segment import SegmentWriter


@dataclass(slots=True)
class _Pending:
    seq: int
    writer: SegmentWriter
    end: int  # offset one past the record
    entry: IndexEntry | None  # None for a tombstone
    tombstone: tuple[str, int] | None = None  # (sop_uid, stamp)
    error: BaseException | None = None
    duplicate: bool = False


@dataclass(slots=True)
class Batch:
    """What one leader made durable and indexed."""

    items: list[_Pending]
    result: ApplyResult = field(default_factory=ApplyResult)


class WritePath:
    """Owns this process's active segment and the group commit onto it and the index."""

    def __init__(
        self,
        root: Path,
        catalog: Catalog,
        config: Config,
        apply: Callable[[Any, list[_Pending], ApplyResult], None],
    ) -> None:
        self.root = root
        self.catalog = catalog
        self.config = config
        self._apply = apply  # indexes a batch inside the leader's transaction
        self._append_lock = threading.Lock()
        self._cond = threading.Condition()
        self._writer: SegmentWriter | None = None
        self._retiring: list[SegmentWriter] = []
        self._pending: list[_Pending] = []
        self._seq = 0
        self._done = 0
        self._flushing = False
        self.last_write_ns = 0
        self._commit_pool: ThreadPoolExecutor | None = None
        self._seal_lock = threading.Lock()

    # -- appending ----------------------------------------------------------------

    def _active(self) -> SegmentWriter:
        w = self._writer
        if w is not None and not w.full:
            return w
        seg_id = self.catalog.env.write(lambda txn: self.catalog.allocate_segment(txn))
        new = SegmentWriter(self.root, seg_id, self.config.segment_max_bytes)
        if w is not None:
            self._retiring.append(w)
        self._writer = new
        return new

    def submit(self, prepared: Prepared) -> _Pending:
        """Append a prepared instance record; the caller then waits on it."""
        with self._append_lock:
            w = self._active()
            offset = w.append(prepared.parts)
            self.last_write_ns = time.monotonic_ns()
            e = prepared.entry
            e.loc = K.Location(
                w.segment_id, offset, prepared.total, e.loc.meta_span, e.loc.stored_at_ns
            )
            return self._enqueue(w, offset + prepared.total, e, None)

    def submit_tombstone(
        self, parts: list[bytes | memoryview], total: int, uid: str, stamp: int
    ) -> _Pending:
        with self._append_lock:
            w = self._active()
            offset = w.append(parts)
            return self._enqueue(w, offset + total, None, (uid, stamp))

    def _enqueue(
        self, w: SegmentWriter, end: int, e: IndexEntry | None, tomb: tuple[str, int] | None
    ) -> _Pending:
        with self._cond:
            self._seq += 1
            p = _Pending(self._seq, w, end, e, tomb)
            self._pending.append(p)
            return p

    # -- group commit ---------------------------------------------------------------

    def wait(self, p: _Pending) -> _Pending:
        """Block until `p` is durable and indexed; raise its error if it failed."""
        with self._cond:
            while self._done < p.seq:
                if self._flushing:
                    self._cond.wait()
                    continue
                self._flushing = True
                batch, self._pending = self._pending, []
                self._cond.release()
                try:
                    self._flush(batch)
                except BaseException as exc:
                    for q in batch:  # never let a waiter of this batch see success
                        if q.error is None:
                            q.error = exc
                    raise
                finally:
                    self._cond.acquire()
                    self._flushing = False
                    self._done = max(self._done, batch[-1].seq) if batch else self._done
                    self._cond.notify_all()
        if p.error is not None:
            raise p.error
        return p

    def _flush(self, batch: list[_Pending]) -> None:
        """Make `batch` durable and indexed: segment fdatasync and index commit run at once.

        The two are independent waits on the disk, so they overlap (measured
        here: 2 to 4 times the stores per second of doing them one after the
        other). The acknowledgement waits for both. Should the machine lose
        power after the index commit but before the segment reached the disk,
        the index is ahead of the log; recovery detects that and rebuilds the
        index from the segments (maintenance.recover).
        """
        if not batch:
            return
        result = ApplyResult()

        def index(txn: Any) -> None:
            nonlocal result
            result = ApplyResult()  # env.write may run this again after growing the map
            marks: dict[int, tuple[int, SegmentWriter]] = {}
            for p in batch:
                upto = max(marks.get(p.writer.segment_id, (0, p.writer))[0], p.end)
                marks[p.writer.segment_id] = (upto, p.writer)
            self._apply(txn, batch, result)
            for seg_id, (upto, w) in marks.items():
                # w.synced: what earlier flushes made durable (this one's fsync runs alongside)
                self.catalog.mark_indexed(txn, seg_id, upto, w.synced)

        committing = self._committer().submit(self.catalog.env.write, index)
        failed: dict[int, BaseException] = {}
        if self.config.durability == "fsync":
            for w in {id(p.writer): p.writer for p in batch}.values():
                try:
                    w.sync()
                except EngineError as exc:
                    failed[id(w)] = exc
        try:
            committing.result()
        except Exception as exc:  # noqa: BLE001 -- every waiter of the batch raises it
            for p in batch:
                p.error = exc
        for p in batch:
            if id(p.writer) in failed:
                # refused although indexed: after a failed fsync the bytes may
                # never reach the disk (recovery then finds the index ahead)
                p.error = failed[id(p.writer)]
        if self._retiring:
            self._seal_retired()
        dup = set(result.duplicate_uids)
        for p in batch:
            if p.entry is not None and p.entry.sop_uid in dup:
                p.duplicate = True

    def _committer(self) -> ThreadPoolExecutor:
        if self._commit_pool is None:
            self._commit_pool = ThreadPoolExecutor(1, thread_name_prefix="engine-index-commit")
        return self._commit_pool

    def _seal_retired(self) -> None:
        """Mark segments that rotated out and have nothing left in flight as sealed."""
        with self._seal_lock:  # the leader of a flush and a drain (close, reindex) may race
            with self._cond:
                in_flight = {id(p.writer) for p in self._pending}
            done = [w for w in self._retiring if id(w) not in in_flight]
            if done:
                self._seal(done)

    def _seal(self, done: list[SegmentWriter]) -> None:

        def seal(txn: Any) -> None:  # may run twice (map growth): no side effects here
            for w in done:
                st = self.catalog.get_segment(txn, w.segment_id) or K.SegmentState(K.SEG_ACTIVE, 0)
                st.state = K.SEG_SEALED
                st.synced_upto = w.synced  # short of indexed_upto only after a failed fsync
                self.catalog.put_segment(txn, w.segment_id, st)

        self.catalog.env.write(seal)
        for w in done:  # released only once the index says sealed
            w.close()
            self._retiring.remove(w)

    @property
    def active_segment_id(self) -> int | None:
        return self._writer.segment_id if self._writer else None

    def seal_active(self, min_bytes: int) -> bool:
        """Seal the active segment if it holds at least `min_bytes` (the next store opens
        another); whether it did."""
        with self._append_lock:
            w = self._writer
            if w is None or w.end < min_bytes:
                return False
            self._drain_and_seal()
            return True

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Inside, every record is durable, indexed and sealed, and no store can append."""
        with self._append_lock:
            self._drain_and_seal()
            yield

    def close(self) -> None:
        """Flush what is pending, seal the active segment, release it."""
        with self._append_lock:
            self._drain_and_seal()
            if self._commit_pool is not None:
                self._commit_pool.shutdown()
                self._commit_pool = None

    def _drain_and_seal(self) -> None:
        """Wait for every pending record, then seal the active segment (append lock held)."""
        if self._writer is not None:
            self._retiring.append(self._writer)
            self._writer = None
        with self._cond:
            last = self._pending[-1] if self._pending else None
        if last is not None:
            with contextlib.suppress(EngineError):  # each waiter got its own error
                self.wait(last)
        if self._retiring:
            self._seal_retired()
