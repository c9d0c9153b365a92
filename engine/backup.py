"""Online backup and restore: a point-in-time copy taken while the archive serves and ingests.

The point is one LMDB read transaction. Every instance acknowledged before
it began is in it (a store is acknowledged once its index transaction has
committed), and the copy holds what that transaction sees:

- the index, copied from that transaction (``mdb_env_copy2`` with
  compaction: only live pages);
- every segment the index names as sealed or active, up to where the index
  names it. Sealed segments never change; an active one only grows past
  what is indexed (its bytes beyond may still be cut back by a failed
  append, so they are not copied). A later backup into the same folder
  copies only new segments and what active ones grew by, once the kept
  copy's last bytes are found the same in the segment; otherwise the
  segment is copied again under a temporary name and renamed over it.

Compaction may retire a segment while it is being copied. Every segment file
is opened before the point and read through that descriptor, so an unlink
cannot take its bytes away. A segment created after the point (and so not
named by the copy's index) is not copied at all.

The index goes into place last, renamed over the one of the previous backup
once every segment is on disk and fsynced. A backup that dies midway leaves
the previous one whole (one that died between the two renames is put back
by the next backup or restore). A segment of the previous backup that the
new index no longer names (compacted away since) is removed after that
rename. ``BACKUP.json`` says when the point was, what it holds and which
segments.

:func:`restore` copies a backup (its index and the segments it names) into
a folder beside the data folder and renames it into place once whole.
Opening it runs recovery, and ``pacs verify`` checks every record.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from engine.index import changes
from engine.index import keys as K
from engine.storage.segment import fsync_dir, list_segment_ids, segment_name, segment_path

if TYPE_CHECKING:
    from engine.archive import Archive

MANIFEST = "BACKUP.json"
INDEX_DIR, SEGMENTS_DIR = "index", "segments"
COPY_CHUNK_BYTES = 64 << 20
KEPT_STATES = (K.SEG_SEALED, K.SEG_ACTIVE)  # retired and compacting ones hold no live record
REUSE_CHECK_BYTES = (
    64 << 10
)  # a copy kept from an earlier backup must end as the segment does there
_OURS = {SEGMENTS_DIR, INDEX_DIR, INDEX_DIR + ".partial", INDEX_DIR + ".old", MANIFEST + ".tmp"}

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


class BackupError(RuntimeError):
    """The backup or restore could not be made; what was there before is untouched."""


@dataclass
class BackupReport:
    """What one backup did. ``point`` is when its read transaction began (UTC)."""

    point: str = ""
    change: int = 0  # the newest change (index change log) the backup holds
    instances: int = 0
    segments: int = 0  # named by the index and present in the backup
    segments_copied: int = 0  # new or grown since the previous backup
    bytes_copied: int = 0
    bytes_unchanged: int = 0  # already in the folder from an earlier backup
    segments_removed: list[int] = field(default_factory=list)
    seconds: float = 0.0
    segment_ids: list[int] = field(
        default_factory=list
    )  # what the index names: restore copies these


@dataclass(frozen=True, slots=True)
class _Segment:
    seg_id: int
    fd: int
    length: int  # bytes to have in the copy


def backup(archive: Archive, dest: Path, progress: Progress | None = None) -> BackupReport:
    """Copy `archive` into folder `dest` as of now; incremental if `dest` holds a backup."""
    t0 = time.perf_counter()
    dest = Path(dest)
    check_backup_dest(archive.path, dest)
    _undo_half_swap(dest)
    (dest / SEGMENTS_DIR).mkdir(parents=True, exist_ok=True)
    staged = dest / (INDEX_DIR + ".partial")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    fds = _open_all(archive.segments_dir)  # before the point: an unlink cannot take them away
    rep = BackupReport()
    try:
        named = _snapshot(archive, staged, rep)
        todo = [_segment(archive.segments_dir, seg_id, st, fds)
                for seg_id, st in sorted(named.items())]  # fmt: skip
        _copy_segments(todo, dest / SEGMENTS_DIR, rep, progress)
    finally:
        for fd in fds.values():
            os.close(fd)
    _swap_index(dest, staged)
    rep.segments_removed = _remove_unnamed(dest / SEGMENTS_DIR, named)
    rep.seconds = time.perf_counter() - t0
    rep.segment_ids = sorted(named)
    _write_manifest(dest, rep)
    return rep


def check_backup_dest(archive_path: Path, dest: Path) -> None:
    """BackupError unless `dest` is absent, empty or an earlier backup, outside the archive."""
    here, there = Path(archive_path).resolve(), Path(dest).resolve()
    if there == here or here in there.parents:
        raise BackupError(f"{dest} is inside the archive it would back up")
    if there.exists() and not (there / MANIFEST).is_file():
        strangers = {p.name for p in there.iterdir()} - _OURS
        if strangers:  # an interrupted first backup leaves only our own names: it may go on
            raise BackupError(f"{dest} holds files and no {MANIFEST}: not a backup folder "
                              f"({', '.join(sorted(strangers)[:3])})")  # fmt: skip


def _open_all(root: Path) -> dict[int, int]:
    fds = {}
    for seg_id in list_segment_ids(root):
        try:
            fds[seg_id] = os.open(segment_path(root, seg_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # retired meanwhile: its records are elsewhere now
            continue
    return fds


def _snapshot(archive: Archive, staged: Path, rep: BackupReport) -> dict[int, K.SegmentState]:
    """Copy the index as one read transaction sees it; the segments that transaction names."""
    rep.point = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    env = archive.env
    with env.read() as txn:
        env.env.copy(str(staged), compact=True, txn=txn)
        rep.change = changes.head(txn, env.db)
        rep.instances = int(txn.stat(env.db["instances"])["entries"])
        cur = txn.cursor(db=env.db["segments"])
        states = {int.from_bytes(k, "big"): K.unpack_segment(v) for k, v in cur}
    _fsync_tree(staged)
    return {seg_id: st for seg_id, st in states.items() if st.state in KEPT_STATES}


def _segment(root: Path, seg_id: int, st: K.SegmentState, fds: dict[int, int]) -> _Segment:
    """The segment's descriptor and how much of it the copy holds: what the index names
    (an active segment's bytes past that may still be cut back by a failed append)."""
    fd = fds.get(seg_id)
    if fd is None:  # created between the listing and the point
        try:
            fd = fds[seg_id] = os.open(segment_path(root, seg_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BackupError(f"segment {seg_id} vanished during the backup (a compaction "
                              "retired it): run the backup again") from None  # fmt: skip
    size = os.fstat(fd).st_size
    if size < st.indexed_upto:
        raise BackupError(f"segment {seg_id} holds {size} bytes, the index names "
                          f"{st.indexed_upto}: run pacs verify")  # fmt: skip
    return _Segment(seg_id, fd, size if st.state == K.SEG_SEALED else st.indexed_upto)


def _copy_segments(todo: list[_Segment], folder: Path, rep: BackupReport,
                   progress: Progress | None) -> None:  # fmt: skip
    total = sum(s.length for s in todo)
    done = 0
    for s in todo:
        target = folder / segment_name(s.seg_id)
        have = target.stat().st_size if target.exists() else 0
        if have > s.length or (have and not _same_end(s.fd, target, have)):
            have = 0  # not a prefix of the segment now: a new copy, renamed over the old one
            partial = target.with_name(target.name + ".partial")
            _copy_range(s.fd, partial, 0, s.length)
            os.replace(partial, target)
        elif have < s.length:
            _copy_range(s.fd, target, have, s.length)  # only appended to since
        if have < s.length:
            rep.segments_copied += 1
            rep.bytes_copied += s.length - have
        rep.bytes_unchanged += have
        done += s.length
        if progress is not None:
            progress(done, total)
    rep.segments = len(todo)
    fsync_dir(folder)


def _same_end(src_fd: int, target: Path, have: int) -> bool:
    """Whether the last bytes of the copy in `target` are the source's at the same offsets."""
    n = min(have, REUSE_CHECK_BYTES)
    with open(target, "rb") as f:
        f.seek(have - n)
        kept = f.read(n)
    return kept == os.pread(src_fd, n, have - n)


def _copy_range(src_fd: int, target: Path, start: int, end: int) -> None:
    """Bytes [start, end) of `src_fd` into `target` (kept up to `start`), fsynced."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, start)
        at = start
        while at < end:
            n = os.copy_file_range(src_fd, fd, min(COPY_CHUNK_BYTES, end - at), at, at)
            if n == 0:
                raise BackupError(f"{target.name}: the source ended at byte {at} of {end}")
            at += n
        os.fsync(fd)
    finally:
        os.close(fd)


def _undo_half_swap(dest: Path) -> None:
    """A backup that died between the two renames of :func:`_swap_index` left the previous
    index as ``index.old``: it is the index again."""
    index, old = dest / INDEX_DIR, dest / (INDEX_DIR + ".old")
    if not index.exists() and old.exists():
        os.rename(old, index)
        fsync_dir(dest)


def _swap_index(dest: Path, staged: Path) -> None:
    index, old = dest / INDEX_DIR, dest / (INDEX_DIR + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if index.exists():
        os.rename(index, old)
    os.rename(staged, index)
    fsync_dir(dest)
    shutil.rmtree(old, ignore_errors=True)


def _remove_unnamed(folder: Path, named: dict[int, K.SegmentState]) -> list[int]:
    gone = [seg_id for seg_id in list_segment_ids(folder) if seg_id not in named]
    for seg_id in gone:
        os.unlink(segment_path(folder, seg_id))
    for left in folder.glob("*.partial"):  # a copy an interrupted backup did not finish
        left.unlink()
    if gone:
        fsync_dir(folder)
    return gone


def _write_manifest(dest: Path, rep: BackupReport) -> None:
    tmp = dest / (MANIFEST + ".tmp")
    tmp.write_bytes(orjson.dumps(asdict(rep), option=orjson.OPT_INDENT_2) + b"\n")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dest / MANIFEST)
    fsync_dir(dest)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(folder)


def read_manifest(folder: Path) -> BackupReport:
    """The report a backup in `folder` wrote; BackupError if it is not a backup."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BackupError(f"{folder} is not a backup: no {MANIFEST}")
    data = orjson.loads(path.read_bytes())
    return BackupReport(**data)


def check_restore(src: Path, data_dir: Path) -> BackupReport:
    """The backup's manifest; BackupError if `src` is no backup or `data_dir` is not empty."""
    manifest = read_manifest(src)
    _undo_half_swap(Path(src))
    if not (Path(src) / INDEX_DIR).is_dir():
        raise BackupError(f"{src} has no {INDEX_DIR}/: not a whole backup")
    if Path(data_dir).exists() and any(Path(data_dir).iterdir()):
        raise BackupError(f"{data_dir} is not empty: restore into an empty folder")
    return manifest


def restore(src: Path, data_dir: Path, progress: Progress | None = None) -> BackupReport:
    """Copy the backup in `src` into `data_dir`, which must be empty or absent.

    The copy is made in a sibling folder and renamed to `data_dir` once whole, so a restore
    that dies midway leaves no folder that looks like an archive.
    """
    src, data_dir = Path(src), Path(data_dir)
    manifest = check_restore(src, data_dir)
    files = sorted((src / INDEX_DIR).iterdir())
    files += [segment_path(src / SEGMENTS_DIR, i) for i in manifest.segment_ids]
    total = sum(p.stat().st_size for p in files)
    partial = data_dir.with_name(data_dir.name + ".restoring")
    shutil.rmtree(partial, ignore_errors=True)
    for sub in (INDEX_DIR, SEGMENTS_DIR):
        (partial / sub).mkdir(parents=True)
    done = 0
    for path in files:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _copy_range(fd, partial / path.parent.name / path.name, 0, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        done += path.stat().st_size
        if progress is not None:
            progress(done, total)
    for sub in (INDEX_DIR, SEGMENTS_DIR):
        fsync_dir(partial / sub)
    fsync_dir(partial)
    if data_dir.exists():
        data_dir.rmdir()  # empty: checked
    os.rename(partial, data_dir)
    fsync_dir(data_dir.parent)
    return manifest
