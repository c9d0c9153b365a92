"""Segment files: the writer of the active segment, positioned reads, recovery.

Caveats
-------
- One writer per segment, across processes: the writer holds an exclusive
  ``flock`` on its file for as long as it is open. Recovery skips segments
  whose lock it cannot take (a live writer in another process owns them).
- A write that fails (ENOSPC, EIO) is cut off again with ``ftruncate`` so the
  file never ends in a half record that a later append would bury.
- An fsync that fails poisons the writer (the PostgreSQL "fsyncgate" lesson:
  after a failed fsync the kernel may have dropped the dirty pages, so a
  retry that succeeds proves nothing). The caller seals it and opens another.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine import codec
from engine.errors import CorruptRecordError, StorageFullError, StorageIOError
from engine.storage import _io
from engine.storage.format import (
    RECORD_HEADER,
    RECORD_MAGIC,
    SEGMENT_HEADER,
    UID_MAX_LEN,
    RecordHeader,
    crc32c,
    pack_segment_header,
    unpack_record_header,
    unpack_segment_header,
)

SEGMENT_MAX_BYTES = 1 << 30
SEGMENT_SUFFIX = ".seg"
READ_FDS_MAX = 256  # open read descriptors kept per reader
VERIFIED_SPANS_MAX = 4096  # pixel parts whose checksum a reader has checked already
_VERIFY_CHUNK_BYTES = 4 << 20
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def segment_name(segment_id: int) -> str:
    return f"{segment_id:010d}{SEGMENT_SUFFIX}"


def segment_path(root: Path, segment_id: int) -> Path:
    return root / segment_name(segment_id)


def list_segment_ids(root: Path) -> list[int]:
    """Ids of the segment files in `root`, ascending."""
    ids = []
    for entry in os.scandir(root):
        stem, suffix = os.path.splitext(entry.name)
        if suffix == SEGMENT_SUFFIX and stem.isdigit():
            ids.append(int(stem))
    return sorted(ids)


def fsync_dir(path: Path) -> None:
    """Make a new or renamed directory entry durable (a new file is not, until this)."""
    _io.fsync_dir(path)


def io_error(exc: OSError, what: str) -> StorageIOError:
    """Wrap an OSError once, keeping "the disk is full" apart from "the I/O failed"."""
    cls = StorageFullError if exc.errno in _FULL_ERRNOS else StorageIOError
    hint = "; free disk space and retry" if cls is StorageFullError else ""
    return cls(exc.errno or errno.EIO, f"{what}: {exc.strerror or exc}{hint}")


class SegmentWriter:
    """Appends records to one segment file that this process owns."""

    def __init__(self, root: Path, segment_id: int, max_bytes: int = SEGMENT_MAX_BYTES) -> None:
        self.segment_id = segment_id
        self.path = segment_path(root, segment_id)
        self.max_bytes = max_bytes
        self.failed = False
        try:
            self._fd = _io.create(self.path)
        except OSError as exc:
            raise io_error(exc, f"cannot create {self.path.name}") from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _io.pwrite(self._fd, pack_segment_header(segment_id), 0)
            _io.fsync(self._fd)
            _io.fsync_dir(root)
        except OSError as exc:
            os.close(self._fd)
            with contextlib.suppress(FileNotFoundError):
                _io.unlink(self.path)
            raise io_error(exc, f"cannot create {self.path.name}") from exc
        self.end = SEGMENT_HEADER.size
        self.synced = self.end

    def append(self, parts: Sequence[bytes | memoryview]) -> int:
        """Write one record (its parts in order) at the end; return its offset.

        Not thread-safe: the caller serialises appends. On failure the file
        is cut back to where it was and the error raised.
        """
        if self.failed:
            raise StorageIOError(errno.EIO, f"{self.path.name} is sealed after an I/O error")
        offset = self.end
        total = sum(len(p) for p in parts)
        try:
            written = _io.pwritev(self._fd, parts, offset)
            while written < total:  # short write: finish it piecewise
                rest = b"".join(bytes(p) for p in parts)[written:]
                written += _io.pwrite(self._fd, rest, offset + written)
        except OSError as exc:
            self._cut_back(offset)
            raise io_error(exc, f"append to {self.path.name}") from exc
        self.end = offset + total
        return offset

    def _cut_back(self, offset: int) -> None:
        try:
            _io.ftruncate(self._fd, offset)
        except OSError:
            self.failed = True  # cannot even truncate: never append here again

    def sync(self) -> int:
        """fdatasync the file; return the offset that is now durable."""
        target = self.end
        if self.failed:
            raise StorageIOError(errno.EIO, f"{self.path.name} is sealed after an I/O error")
        try:
            _io.fdatasync(self._fd)
        except OSError as exc:
            self.failed = True  # fsyncgate: a later fsync that succeeds proves nothing
            raise io_error(exc, f"fsync of {self.path.name}") from exc
        self.synced = max(self.synced, target)
        return target

    @property
    def full(self) -> bool:
        return self.end >= self.max_bytes or self.failed

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the flock
            self._fd = -1


@dataclass(slots=True)
class StoredRecord:
    """A record read back: header, UID and the decoded parts."""

    header: RecordHeader
    uid: str
    meta: bytes | memoryview
    pixel: bytes | memoryview


def decode_record(
    buf: bytes | memoryview, segment: str, offset: int, *, with_pixel: bool = True
) -> StoredRecord:
    """Check and decode a record that starts at buf[0]; CorruptRecordError if anything is off."""
    try:
        h, uid = unpack_record_header(buf)
    except ValueError as exc:
        raise CorruptRecordError(segment, offset, str(exc)) from None
    need = h.total if with_pixel else h.meta_span
    if len(buf) < need:
        raise CorruptRecordError(segment, offset, f"record needs {need} bytes, {len(buf)} there")
    view = memoryview(buf)
    meta_start = RECORD_HEADER.size + h.uid_len
    meta: bytes | memoryview = view[meta_start : h.meta_span]
    if crc32c(meta) != h.meta_crc:
        raise CorruptRecordError(segment, offset, "metadata part checksum mismatch")
    pixel: bytes | memoryview = b""
    if with_pixel:
        pixel = view[h.meta_span : h.total]
        if crc32c(pixel) != h.pixel_crc:
            raise CorruptRecordError(segment, offset, "pixel part checksum mismatch")
    try:
        meta = codec.decode(meta, h.meta_codec, h.meta_raw)
        if with_pixel:
            pixel = codec.decode(pixel, h.pixel_codec, h.pixel_raw)
    except Exception as exc:  # zstd raises its own error type; the bytes are bad
        raise CorruptRecordError(segment, offset, f"part does not decode: {exc}") from exc
    return StoredRecord(h, uid.decode("ascii"), meta, pixel)


class _Handle:
    """A cached read descriptor; closed once dropped from the cache and unused."""

    __slots__ = ("dropped", "fd", "users")

    def __init__(self, fd: int) -> None:
        self.fd, self.users, self.dropped = fd, 0, False


class SegmentReader:
    """Positioned reads of records, with a bounded cache of open descriptors.

    A descriptor evicted or forgotten while another thread reads through it
    is closed by that reader when it is done, never under it (a closed
    number can be reused at once by another file or a socket).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fds: OrderedDict[int, _Handle] = OrderedDict()
        self._lock = threading.Lock()
        self._verified: OrderedDict[tuple[int, int], None] = OrderedDict()

    def _acquire(self, segment_id: int) -> _Handle:
        with self._lock:
            h = self._fds.get(segment_id)
            if h is not None:
                self._fds.move_to_end(segment_id)
            else:
                try:
                    fd = os.open(segment_path(self.root, segment_id), os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    raise io_error(exc, f"cannot open {segment_name(segment_id)}") from exc
                h = self._fds[segment_id] = _Handle(fd)
                if len(self._fds) > READ_FDS_MAX:
                    self._drop(self._fds.popitem(last=False)[1])
            h.users += 1
            return h

    def _release(self, h: _Handle) -> None:
        with self._lock:
            h.users -= 1
            if h.dropped and h.users == 0:
                os.close(h.fd)

    @staticmethod
    def _drop(h: _Handle) -> None:  # with the lock held
        h.dropped = True
        if h.users == 0:
            os.close(h.fd)

    def forget(self, segment_id: int) -> None:
        """Close the cached descriptor of a segment that was removed or replaced."""
        with self._lock:
            h = self._fds.pop(segment_id, None)
            if h is not None:
                self._drop(h)

    def read(self, segment_id: int, offset: int, length: int) -> bytes:
        h = self._acquire(segment_id)
        try:
            data = os.pread(h.fd, length, offset)
        except OSError as exc:
            raise io_error(exc, f"read of {segment_name(segment_id)} @ {offset}") from exc
        finally:
            self._release(h)
        return data

    def check_span(self, segment_id: int, offset: int, length: int, crc: int) -> None:
        """Check the CRC32C of `length` bytes at `offset` before parts of them are served alone.

        Frame reads fetch one frame of a raw pixel part with one positioned
        read, which its checksum cannot cover: the whole part is checked
        once here (in chunks; remembered per reader, records never change).
        """
        key = (segment_id, offset)
        with self._lock:
            if key in self._verified:
                return
        value, pos, end = 0, offset, offset + length
        while pos < end:
            chunk = self.read(segment_id, pos, min(_VERIFY_CHUNK_BYTES, end - pos))
            if not chunk:
                break
            value, pos = crc32c(chunk, value), pos + len(chunk)
        if pos != end or value != crc:
            name = segment_name(segment_id)
            raise CorruptRecordError(name, offset, "pixel part checksum mismatch")
        with self._lock:
            self._verified[key] = None
            if len(self._verified) > VERIFIED_SPANS_MAX:
                self._verified.popitem(last=False)

    def read_record(
        self, segment_id: int, offset: int, length: int, *, with_pixel: bool = True
    ) -> StoredRecord:
        """One positioned read of `length` bytes (the whole record, or its meta span)."""
        buf = self.read(segment_id, offset, length)
        return decode_record(buf, segment_name(segment_id), offset, with_pixel=with_pixel)

    def close(self) -> None:
        with self._lock:
            for h in self._fds.values():
                self._drop(h)
            self._fds.clear()


# -- recovery -------------------------------------------------------------------


@dataclass(slots=True)
class RecoveredRecord:
    offset: int
    header: RecordHeader
    uid: str
    meta: bytes  # decoded metadata part, for re-indexing


@dataclass(slots=True)
class RecoveryReport:
    segment_id: int
    records: list[RecoveredRecord]
    corruptions: list[CorruptRecordError]
    truncated_at: int | None  # where a torn tail was cut off, if one was
    end: int  # file size after recovery


_RESYNC_CHUNK = 1 << 20


def _next_header(fd: int, start: int, size: int) -> int | None:
    """Offset of the next plausible record header after `start`, or None."""
    pos = start + 1
    while pos < size:
        chunk = os.pread(fd, _RESYNC_CHUNK + RECORD_HEADER.size + UID_MAX_LEN, pos)
        hit = chunk.find(RECORD_MAGIC)
        while 0 <= hit < _RESYNC_CHUNK:
            try:
                h, _ = unpack_record_header(chunk[hit : hit + RECORD_HEADER.size + UID_MAX_LEN])
            except ValueError:
                hit = chunk.find(RECORD_MAGIC, hit + 1)
                continue
            if pos + hit + h.total <= size:
                return pos + hit
            hit = chunk.find(RECORD_MAGIC, hit + 1)
        pos += _RESYNC_CHUNK
    return None


def recover_segment(root: Path, segment_id: int, start: int, *, truncate: bool) -> RecoveryReport:
    """Read every record from `start` on, checking each checksum.

    A bad record followed by good ones is reported and skipped. A bad or
    incomplete record with nothing good after it is a torn tail: with
    `truncate` the file is cut there (and synced), as LevelDB drops a torn
    log tail; without it (sealed segments never change) it is only reported.
    """
    path = segment_path(root, segment_id)
    name = path.name
    records: list[RecoveredRecord] = []
    corruptions: list[CorruptRecordError] = []
    truncated_at = None
    fd = _io.open_rw(path) if truncate else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if truncate and size < SEGMENT_HEADER.size:
            # The writer died between creating the file and writing its header:
            # no record can follow, so write the header it never wrote.
            _io.ftruncate(fd, 0)
            _io.pwrite(fd, pack_segment_header(segment_id), 0)
            _io.fsync(fd)
            return RecoveryReport(segment_id, [], [], 0, SEGMENT_HEADER.size)
        try:
            unpack_segment_header(os.pread(fd, SEGMENT_HEADER.size, 0))
        except ValueError as exc:
            raise CorruptRecordError(name, 0, str(exc)) from None
        pos = max(start, SEGMENT_HEADER.size)
        while pos < size:
            head = os.pread(fd, RECORD_HEADER.size + UID_MAX_LEN, pos)
            try:
                try:
                    h, _ = unpack_record_header(head)
                except ValueError as exc:
                    raise CorruptRecordError(name, pos, str(exc)) from None
                rec = decode_record(os.pread(fd, h.total, pos), name, pos)
            except CorruptRecordError as exc:
                nxt = _next_header(fd, pos, size)
                if nxt is None:
                    truncated_at = pos
                    if not truncate:
                        corruptions.append(exc)
                    break
                corruptions.append(exc)
                pos = nxt
                continue
            records.append(RecoveredRecord(pos, rec.header, rec.uid, bytes(rec.meta)))
            pos += h.total
        if truncated_at is not None and truncate:
            _io.ftruncate(fd, truncated_at)
            _io.fsync(fd)
            size = truncated_at
    finally:
        os.close(fd)
    return RecoveryReport(segment_id, records, corruptions, truncated_at, size)


def try_lock(path: Path) -> int | None:
    """Take the segment's writer lock without waiting; return the fd, or None if held."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def iter_segment_records(root: Path, segment_id: int) -> Iterator[RecoveredRecord]:
    """Every intact record of a segment, in order (corruptions skipped)."""
    yield from recover_segment(root, segment_id, 0, truncate=False).records
