"""The storage layer's file system calls, in one place that tests can swap.

Every call that changes a segment file or its directory goes through this
module (``_io.pwritev(...)``, looked up at call time: one attribute lookup,
as ``os.pwritev`` is). The power-loss tests replace these names with
recording versions to learn which writes were made durable by which sync,
and the I/O-error tests with failing ones. The engine itself never swaps
them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def create(path: str | os.PathLike[str]) -> int:
    """Create a new file (never an existing one); its directory entry is not durable yet."""
    return os.open(path, CREATE_FLAGS, 0o644)


def open_rw(path: str | os.PathLike[str]) -> int:
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)


def pwritev(fd: int, parts: Sequence[bytes | memoryview], offset: int) -> int:
    return os.pwritev(fd, parts, offset)


def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
    return os.pwrite(fd, data, offset)


def ftruncate(fd: int, length: int) -> None:
    os.ftruncate(fd, length)


def fdatasync(fd: int) -> None:
    os.fdatasync(fd)


def fsync(fd: int) -> None:
    os.fsync(fd)


def unlink(path: str | os.PathLike[str]) -> None:
    os.unlink(path)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make new, renamed or removed directory entries durable (a new file is not, until this)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
