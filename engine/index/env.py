"""The LMDB environment: opening it, growing its map, retrying a full transaction.

Caveats
-------
- Open the environment in the process that uses it, after any fork (lmdb.h:
  "Use an MDB_env* in the process which opened it, not after fork()").
  ``pacs serve`` workers each open their own.
- LMDB allows one write transaction at a time across every process: keep
  write transactions short and batched (the group commit does).
- The map grows by itself: a write that hits MDB_MAP_FULL is retried after
  doubling the map; a process that sees MDB_MAP_RESIZED adopts the new size.
- Durability: the segments are the log. The index is synced with
  ``metasync=False``: a crash may lose the last committed transaction but
  never the integrity of the file, and the replay of the segment tails on
  open restores what was lost.
- Stale reader slots of killed processes are cleared on open (``reader_check``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from engine.errors import IndexFailureError, StorageFullError

T = TypeVar("T")

MAP_SIZE_INITIAL_BYTES = 1 << 30  # address space only: the file grows as data does
MAP_SIZE_MAX_BYTES = 1 << 40
MAX_READERS = 1024
GROW_ATTEMPTS = 400  # x 5 ms
DB_NAMES = (
    b"meta",
    b"segments",
    b"instances",
    b"series",
    b"studies",
    b"patients",
    b"study_series",
    b"series_instances",
    b"patient_studies",
    b"ix_study",
)


class IndexEnv:
    """An open LMDB environment with its named databases."""

    def __init__(
        self, path: Path, map_size: int = MAP_SIZE_INITIAL_BYTES, sync: bool = True
    ) -> None:
        path.mkdir(parents=True, exist_ok=True)
        try:
            self.env = lmdb.open(
                str(path),
                map_size=map_size,
                max_dbs=len(DB_NAMES) + 2,
                max_readers=MAX_READERS,
                sync=sync,
                metasync=False,
                readahead=False,
                lock=True,
            )
            self.env.reader_check()
            self.db: dict[str, Any] = {n.decode(): self.env.open_db(n) for n in DB_NAMES}
        except lmdb.Error as exc:
            raise IndexFailureError(f"cannot open the index in {path}: {exc}") from exc
        self._grow_lock = threading.Lock()
        # Remapping under a reader of another thread would pull its pages
        # away: growth waits until no read transaction of ours is open.
        self._gate = threading.Condition()
        self._readers = 0
        self._growing = False

    @contextlib.contextmanager
    def read(self) -> Iterator[Any]:
        """A read-only transaction; the map is never remapped while one is open."""
        with self._gate:
            while self._growing:
                self._gate.wait()
            self._readers += 1
        try:
            try:
                txn = self.env.begin(buffers=False)
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)  # another process grew the map: adopt its size
                txn = self.env.begin(buffers=False)
            with txn:
                yield txn
        finally:
            with self._gate:
                self._readers -= 1
                self._gate.notify_all()

    def write(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(txn)` in one write transaction, growing the map and retrying if it is full."""
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    return fn(txn)
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as exc:
                raise IndexFailureError(f"index write failed: {exc}") from exc

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(txn, *args)`` in one write transaction (see :meth:`write`)."""
        return self.write(lambda txn: fn(txn, *args))

    def _grow(self) -> None:
        with self._grow_lock:
            size = self.env.info()["map_size"]
            if size >= MAP_SIZE_MAX_BYTES:
                raise StorageFullError(28, f"index map is at its {size >> 30} GiB limit")
            with self._gate:
                self._growing = True
                while self._readers:
                    self._gate.wait()
            try:
                for _ in range(GROW_ATTEMPTS):
                    try:
                        self.env.set_mapsize(min(size * 2, MAP_SIZE_MAX_BYTES))
                        return
                    except lmdb.Error:
                        # refused while another thread is inside a write
                        # transaction; those are short, so wait for it to end
                        time.sleep(0.005)
                raise IndexFailureError("could not grow the index map: a transaction stayed open")
            finally:
                with self._gate:
                    self._growing = False
                    self._gate.notify_all()

    def sync(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        self.env.close()
