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
import errno
import os
import shutil
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
    b"tombstones",
    b"changes",
    b"forward",
)


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NEARLY_FULL_BYTES = 1 << 20  # below this much free space, an LMDB EIO is taken for a full disk


def _nearly_full(path: Path | None) -> bool:
    if path is None:
        return False
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < NEARLY_FULL_BYTES


def index_error(
    exc: lmdb.Error, what: str, path: Path | None = None
) -> IndexFailureError | StorageFullError:
    """Wrap an LMDB error once: a full disk is StorageFullError (A700), as for the segments.

    py-lmdb raises a plain ``lmdb.Error`` for an errno from the system, with
    only its strerror in the message: match that. LMDB also turns a short
    write into EIO, which is what a filesystem that is full mid-page gives
    (seen on tmpfs): an EIO with (almost) no free space under `path` is a
    full disk too.
    """
    text = str(exc)
    for code in _FULL_ERRNOS:
        if os.strerror(code) in text:
            return StorageFullError(code, f"{what}: {text}; free disk space and retry")
    if os.strerror(errno.EIO) in text and _nearly_full(path):
        return StorageFullError(errno.ENOSPC, f"{what}: {text} with the disk (nearly) full; "
                                "free disk space and retry")  # fmt: skip
    return IndexFailureError(f"{what}: {exc}")


class IndexEnv:
    """An open LMDB environment with its named databases."""

    def __init__(
        self, path: Path, map_size: int = MAP_SIZE_INITIAL_BYTES, sync: bool = True
    ) -> None:
        self.path, self._map_size, self._sync = path, map_size, sync
        self.db: dict[str, Any] = {}
        self._open()
        self._grow_lock = threading.Lock()
        # Remapping under a reader of another thread would pull its pages
        # away: growth waits until no read transaction of ours is open.
        self._gate = threading.Condition()
        self._readers = 0
        self._growing = False

    def _open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self.env = lmdb.open(
                str(self.path),
                map_size=self._map_size,
                max_dbs=len(DB_NAMES) + 2,
                max_readers=MAX_READERS,
                sync=self._sync,
                metasync=False,
                readahead=False,
                lock=True,
            )
            self.env.reader_check()
            dbs = {n.decode(): self.env.open_db(n) for n in DB_NAMES}
        except lmdb.Error as exc:
            raise IndexFailureError(f"cannot open the index in {self.path}: {exc}") from exc
        self.db.clear()  # in place: the Catalog holds this dict
        self.db.update(dbs)

    def _enter(self) -> None:
        with self._gate:
            while self._growing:
                self._gate.wait()
            self._readers += 1

    def _leave(self) -> None:
        with self._gate:
            self._readers -= 1
            self._gate.notify_all()

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """No transaction of this process is open inside, and none can start."""
        with self._gate:
            self._growing = True
            while self._readers:
                self._gate.wait()
        try:
            yield
        finally:
            with self._gate:
                self._growing = False
                self._gate.notify_all()

    def replace_with(self, rebuilt: Path) -> None:
        """Swap in the index rebuilt in folder `rebuilt`, while no transaction is open."""
        old = self.path.with_name(self.path.name + ".old")
        with self._exclusive():
            self.env.close()
            shutil.rmtree(old, ignore_errors=True)
            os.rename(self.path, old)
            os.rename(rebuilt, self.path)
            fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)  # the renames are what makes the new index the index
            finally:
                os.close(fd)
            self._open()
        shutil.rmtree(old, ignore_errors=True)

    @contextlib.contextmanager
    def read(self) -> Iterator[Any]:
        """A read-only transaction; the map is never remapped while one is open."""
        self._enter()
        try:
            try:
                txn = self.env.begin(buffers=False)
            except lmdb.MapResizedError:
                self._leave()
                self._adopt_size()
                self._enter()
                txn = self.env.begin(buffers=False)
            with txn:
                yield txn
        finally:
            self._leave()

    def write(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(txn)` in one write transaction, growing the map and retrying if it is full."""
        while True:
            self._enter()
            try:
                with self.env.begin(write=True) as txn:
                    return fn(txn)
            except lmdb.MapResizedError:
                remedy = self._adopt_size
            except lmdb.MapFullError:
                remedy = self._grow
            except lmdb.Error as exc:
                raise index_error(exc, "index write failed", self.path) from exc
            finally:
                self._leave()
            remedy()  # outside any transaction of ours: both remap the file

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(txn, *args)`` in one write transaction (see :meth:`write`)."""
        return self.write(lambda txn: fn(txn, *args))

    def _adopt_size(self) -> None:
        """Another process grew the map: adopt its size (a remap, so exclusively)."""
        with self._exclusive():
            self.env.set_mapsize(0)

    def _grow(self) -> None:
        with self._grow_lock:
            size = self.env.info()["map_size"]
            if size >= MAP_SIZE_MAX_BYTES:
                raise StorageFullError(28, f"index map is at its {size >> 30} GiB limit")
            with self._exclusive():
                for _ in range(GROW_ATTEMPTS):
                    try:
                        self.env.set_mapsize(min(size * 2, MAP_SIZE_MAX_BYTES))
                        return
                    except lmdb.Error:
                        # refused while a write transaction is open (another
                        # process's, as ours are all closed): wait for it
                        time.sleep(0.005)
                raise IndexFailureError("could not grow the index map: a transaction stayed open")

    def sync(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        self.env.close()
