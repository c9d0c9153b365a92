"""Recovery on open, verify, compact, reindex and stats: the archive's housekeeping.

The segments are the log and the index is derived from them, so every
procedure here comes down to replaying records into the index in the one
order-independent way: for each SOP Instance UID the newest record wins,
unless a newer tombstone says it was deleted.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import codec
from engine.errors import ArchiveLockedError, CorruptRecordError, EngineError
from engine.index import changes
from engine.index import keys as K
from engine.index.catalog import ApplyResult, Catalog
from engine.index.env import IndexEnv
from engine.ingest import entry_from_meta
from engine.scan import scan
from engine.storage import _io
from engine.storage.format import (
    CODEC_RAW,
    CODEC_ZSTD,
    KIND_TOMBSTONE,
    RecordHeader,
    crc32c,
    pack_record_header,
)
from engine.storage.segment import (
    RecoveredRecord,
    SegmentWriter,
    StoredRecord,
    fsync_dir,
    list_segment_ids,
    recover_segment,
    segment_path,
    try_lock,
)

if TYPE_CHECKING:
    from engine.archive import Archive

log = logging.getLogger("engine.maintenance")
Progress = Callable[[int, int], None]  # (segments done, segments in all), for the CLI
REPLAY_BATCH = 1000


@dataclass(slots=True)
class RecoveryReport:
    """What opening the archive found and repaired."""

    segments_replayed: int = 0
    records_replayed: int = 0
    truncated: list[tuple[int, int]] = field(default_factory=list)  # (segment, offset)
    corruptions: list[str] = field(default_factory=list)
    removed_segments: list[int] = field(default_factory=list)
    index_ahead: list[int] = field(default_factory=list)  # segments shorter than indexed
    rebuilt: bool = False  # the index was rebuilt from the segments
    seconds: float = 0.0


@dataclass(slots=True)
class VerifyReport:
    records: int = 0
    instances: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(slots=True)
class CompactReport:
    segments: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    records_kept: int = 0


@dataclass(slots=True)
class ReindexReport:
    segments: int = 0
    records: int = 0
    instances: int = 0
    corruptions: list[str] = field(default_factory=list)


# -- replay ---------------------------------------------------------------------


def replay(catalog: Catalog, segment_id: int, records: Iterable[RecoveredRecord],
           tombs: dict[str, int], report: list[str]) -> int:  # fmt: skip
    """Index recovered records in batches; return how many were applied."""
    batch: list[RecoveredRecord] = []
    count = 0

    def flush() -> None:
        def apply(txn: Any) -> None:
            result = ApplyResult()
            for rec in batch:
                _apply_one(catalog, txn, segment_id, rec, tombs, result, report)

        catalog.env.write(apply)
        batch.clear()

    for rec in records:
        batch.append(rec)
        count += 1
        if len(batch) >= REPLAY_BATCH:
            flush()
    if batch:
        flush()
    return count


def _apply_one(catalog: Catalog, txn: Any, seg_id: int, rec: RecoveredRecord,
               tombs: dict[str, int], result: ApplyResult, report: list[str]) -> None:  # fmt: skip
    h = rec.header
    if h.kind == KIND_TOMBSTONE:
        tombs[rec.uid] = max(tombs.get(rec.uid, 0), h.stored_at_ns)
        catalog.apply_tombstone(txn, rec.uid, h.stored_at_ns, result)
        return
    if max(tombs.get(rec.uid, 0), catalog.deleted_at(txn, rec.uid)) > h.stored_at_ns:
        return  # deleted after this record was written (maybe by another writer)
    loc = K.Location(seg_id, rec.offset, h.total, h.meta_span, h.stored_at_ns)
    try:
        entry = entry_from_meta(rec.meta, loc)
    except (EngineError, KeyError) as exc:
        report.append(f"segment {seg_id} @ {rec.offset}: cannot index record: {exc}")
        return
    catalog.put(txn, entry, result)


def recover(archive: Archive) -> RecoveryReport:
    """Bring the index up to date with every segment no live writer owns."""
    t0 = time.perf_counter()
    rep = RecoveryReport()
    root, catalog = archive.segments_dir, archive.catalog
    states = catalog.segments()
    files = list_segment_ids(root)
    tombs: dict[str, int] = {}
    if files:  # before any allocation: a repair below may need a new segment
        catalog.env.call(_bump_next_id, catalog, max(files) + 1)
    for seg_id in sorted(set(files) | set(states)):
        st = states.get(seg_id)
        path = segment_path(root, seg_id)
        if seg_id not in files:
            if st is not None and st.state in (K.SEG_RETIRED, K.SEG_COMPACTING):
                catalog.env.call(catalog.delete_segment, seg_id)
            continue
        lock = try_lock(path)
        if lock is None:
            continue  # a live writer (or compaction) in another process owns it
        try:
            if st is not None and st.state in (K.SEG_RETIRED, K.SEG_COMPACTING):
                catalog.env.sync()  # the state that allows the removal must outlive it
                _io.unlink(path)  # moved away, or a compaction that never committed
                fsync_dir(root)
                catalog.env.call(catalog.delete_segment, seg_id)
                rep.removed_segments.append(seg_id)
                continue
            _recover_one(catalog, root, seg_id, st, tombs, rep, repair=bool(states))
        finally:
            os.close(lock)
    if rep.index_ahead:
        _rebuild_after_power_loss(archive, rep)
    rep.seconds = time.perf_counter() - t0
    if rep.records_replayed or rep.truncated:
        log.info("recovery: replayed %d records from %d segments in %.3f s",
                 rep.records_replayed, rep.segments_replayed, rep.seconds)  # fmt: skip
    return rep


def _recover_one(catalog: Catalog, root: Path, seg_id: int, st: K.SegmentState | None,
                 tombs: dict[str, int], rep: RecoveryReport, *, repair: bool) -> None:  # fmt: skip
    """Check and replay one segment from where it was last known durable; repair a torn tail.

    `repair`: the index is there (a segment it does not know was allocated in
    its lost last transaction). Without an index nothing says which segments
    were sealed, and a sealed one is never changed: bad bytes are only reported.

    The scan starts at the synced mark, not at ``indexed_upto``: the index
    commit overlaps the fsync, so a power cut can leave indexed records that
    never reached the disk, and the file size alone does not show it (a
    later write may have landed past a hole of zeros).
    """
    path = segment_path(root, seg_id)
    sealed = st is not None and st.state == K.SEG_SEALED
    start = st.indexed_upto if st is not None else 0
    synced = start if st is None or st.synced_upto is None else st.synced_upto
    size = os.path.getsize(path)
    if sealed and synced >= start == size:
        return  # sealed, fully indexed and durable: nothing to check
    try:
        found = recover_segment(root, seg_id, min(synced, size), truncate=not sealed)
    except CorruptRecordError as exc:
        # its own header is unreadable: keep it as it is for an
        # operator, serve everything else (verify reports it too)
        log.error("segment %d left unread: %s", seg_id, exc)
        rep.corruptions.append(str(exc))
        return
    records = found.records
    bad = min((c.offset for c in found.corruptions), default=None)
    if bad is not None and not sealed and (st is not None or repair):
        # bad bytes with whole records after them, past the synced mark (or in a
        # segment whose allocation the index lost): writes the disk reordered before a power cut,
        # or damage. Keep every whole record (moved to a new segment) and cut the
        # file at the bad bytes, so that the log reads clean again.
        after = [r for r in records if r.offset > bad]
        moved_to, moved, moved_end = _move_tail(catalog, root, seg_id, bad, after)
        records = [r for r in records if r.offset < bad]
        rep.truncated.append((seg_id, bad))
        rep.records_replayed += replay(catalog, moved_to, moved, tombs, rep.corruptions)
        catalog.env.call(_seal, catalog, moved_to, K.SegmentState(K.SEG_SEALED, moved_end))
        found.end, found.truncated_at = bad, bad
    if found.truncated_at is not None:
        log.warning("segment %d: torn tail cut off at byte %d", seg_id, found.truncated_at)
        if (seg_id, found.truncated_at) not in rep.truncated:
            rep.truncated.append((seg_id, found.truncated_at))
    for c in found.corruptions:
        log.error("corruption: %s", c)
        rep.corruptions.append(str(c))
    if size < start or (found.truncated_at is not None and found.truncated_at < start):
        # the index commit reached the disk, some of the segment's bytes did not
        log.error("segment %d: index is ahead of the file (indexed to %d, whole to %d)",
                  seg_id, start, found.end)  # fmt: skip
        rep.index_ahead.append(seg_id)
    replay(catalog, seg_id, records, tombs, rep.corruptions)  # those re-checked are no-ops
    rep.records_replayed += sum(r.offset >= start for r in records)
    rep.segments_replayed += 1
    new_state = K.SegmentState(K.SEG_SEALED, found.end)
    if st is not None:
        new_state = K.SegmentState(K.SEG_SEALED, found.end, st.live_bytes, st.dead_bytes, st.flags)
    catalog.env.call(_seal, catalog, seg_id, new_state)


def _move_tail(
    catalog: Catalog, root: Path, seg_id: int, cut: int, records: list[RecoveredRecord]
) -> tuple[int, list[RecoveredRecord], int]:
    """Copy `records` into a new sealed segment, made durable; then cut segment `seg_id` there.

    A crash in between leaves both copies: replay keeps one (same UID, same stamp).
    """
    new_id = catalog.env.call(catalog.allocate_segment, K.SEG_SEALED)
    writer = SegmentWriter(root, new_id, max_bytes=1 << 62)
    moved = []
    fd = _io.open_rw(segment_path(root, seg_id))
    try:
        for r in records:
            offset = writer.append([os.pread(fd, r.header.total, r.offset)])
            moved.append(RecoveredRecord(offset, r.header, r.uid, r.meta))
        end = writer.sync()
        _io.ftruncate(fd, cut)
        _io.fsync(fd)
    finally:
        os.close(fd)
        writer.close()
    log.warning("segment %d: %d whole records after bad bytes at %d moved to segment %d",
                seg_id, len(moved), cut, new_id)  # fmt: skip
    return new_id, moved, end


def _rebuild_after_power_loss(archive: Archive, rep: RecoveryReport) -> None:
    """The index names records the segments lost: rebuild it from the segments alone.

    Only the log knows what is really there (a lost record may have replaced
    an older copy of its UID, or a lost tombstone deleted one), so a targeted
    fix is not enough: the whole index is derived again, exactly.
    """
    try:
        result = reindex(archive)
    except ArchiveLockedError as exc:
        log.error("index ahead of the segments, and %s; run `pacs reindex` with the server "
                  "stopped", exc)  # fmt: skip
        rep.corruptions.append(f"index ahead of segments {rep.index_ahead}: not rebuilt: {exc}")
        return
    log.warning("index rebuilt from %d segments after a power loss: %d instances",
                result.segments, result.instances)  # fmt: skip
    rep.rebuilt = True


def _seal(txn: Any, catalog: Catalog, seg_id: int, state: K.SegmentState) -> None:
    current = catalog.get_segment(txn, seg_id)
    if current is not None:  # replay updated the byte counts meanwhile
        state.live_bytes, state.dead_bytes = current.live_bytes, current.dead_bytes
    catalog.put_segment(txn, seg_id, state)


def _bump_next_id(txn: Any, catalog: Catalog, at_least: int) -> None:
    # The allocation of a segment id can be lost with the last transaction
    # (metasync off); never hand out an id whose file exists.
    raw = txn.get(b"next_segment_id", db=catalog.db["meta"])
    if not raw or int(raw) < at_least:
        txn.put(b"next_segment_id", str(at_least).encode(), db=catalog.db["meta"])


# -- verify ---------------------------------------------------------------------


def verify(archive: Archive, progress: Progress | None = None) -> VerifyReport:
    """Check every record's checksums, and that the index points at intact records."""
    rep = VerifyReport()
    root = archive.segments_dir
    found: dict[tuple[int, int], str] = {}
    ids = list_segment_ids(root)
    for done, seg_id in enumerate(ids):
        if progress is not None:
            progress(done, len(ids))
        try:
            scanned = recover_segment(root, seg_id, 0, truncate=False)
        except (CorruptRecordError, OSError) as exc:
            rep.problems.append(f"segment {seg_id}: {exc}")
            continue
        rep.records += len(scanned.records)
        rep.problems.extend(str(c) for c in scanned.corruptions)
        for rec in scanned.records:
            found[(seg_id, rec.offset)] = rec.uid
    if progress is not None:
        progress(len(ids), len(ids))
    with archive.env.read() as txn:
        for uid, loc, _ in archive.catalog.all_instances(txn):
            rep.instances += 1
            at = found.get((loc.segment_id, loc.offset))
            if at != uid:
                what = "no intact record" if at is None else f"a record of {at}"
                rep.problems.append(
                    f"index: {uid} points at segment {loc.segment_id} @ {loc.offset}, {what} there"
                )
    return rep


# -- compact --------------------------------------------------------------------


Parts = list[bytes | memoryview]


def _cold_pixel_codec(transfer_syntax: str, rec: StoredRecord) -> int:
    """How a record's pixel part is recompressed: BitsAllocated is read from its metadata
    (the index does not keep it); plain zstd when that cannot be read."""
    if not rec.pixel or not codec.pixels_compressible(transfer_syntax):
        return CODEC_RAW
    try:
        bits = dict(scan(rec.meta).attributes).get("BitsAllocated")
    except EngineError:  # it was scanned when stored; whatever it says now, zstd is safe
        bits = None
    return codec.cold_pixel_codec(transfer_syntax, bits, len(rec.pixel))


def _recode(rec_meta: bytes | memoryview, rec_pixel: bytes | memoryview, h: RecordHeader,
            uid: str, pixel_codec: int, level: int) -> tuple[Parts, RecordHeader]:  # fmt: skip
    meta = codec.encode(rec_meta, CODEC_ZSTD, level) if rec_meta else b""
    meta_codec = CODEC_ZSTD if rec_meta else CODEC_RAW
    pixel: bytes | memoryview = rec_pixel
    if pixel_codec != CODEC_RAW and rec_pixel:
        pixel = codec.encode(rec_pixel, pixel_codec, level)
    else:
        pixel_codec = CODEC_RAW
    if len(pixel) >= len(rec_pixel):
        pixel, pixel_codec = rec_pixel, CODEC_RAW  # zstd did not pay
    new = RecordHeader(
        h.kind, meta_codec, pixel_codec, h.uid_len, h.flags, len(meta), len(rec_meta),
        len(pixel), len(rec_pixel), h.fmi_len, h.pixel_at, h.stored_at_ns,
        crc32c(meta), crc32c(pixel),
    )  # fmt: skip
    parts: list[bytes | memoryview] = [pack_record_header(new, uid.encode())]
    if meta:
        parts.append(meta)
    if pixel:
        parts.append(pixel)
    return parts, new


def compact(
    archive: Archive, *, max_segments: int | None = None, progress: Progress | None = None
) -> CompactReport:
    """Rewrite sealed segments: drop dead records, recompress for the cold tier."""
    rep = CompactReport()
    catalog = archive.catalog
    todo = [
        seg_id
        for seg_id, st in sorted(catalog.segments().items())
        if st.state == K.SEG_SEALED and not (st.flags & K.SEG_FLAG_COLD and st.dead_bytes == 0)
    ]
    for done, seg_id in enumerate(todo):
        if progress is not None:
            progress(done, len(todo))
        if max_segments is not None and rep.segments >= max_segments:
            break
        path = segment_path(archive.segments_dir, seg_id)
        lock = try_lock(path)
        if lock is None:
            continue
        try:
            _compact_one(archive, seg_id, rep)
        finally:
            os.close(lock)
    if progress is not None:
        progress(len(todo), len(todo))
    return rep


def _compact_one(archive: Archive, seg_id: int, rep: CompactReport) -> None:
    root, catalog, level = archive.segments_dir, archive.catalog, archive.config.cold_zstd_level
    old_path = segment_path(root, seg_id)
    rep.bytes_before += os.path.getsize(old_path)
    new_id = catalog.env.call(catalog.allocate_segment, K.SEG_COMPACTING)
    writer = SegmentWriter(root, new_id, max_bytes=1 << 62)
    moves: list[tuple[str, K.Location, K.Location]] = []
    try:
        scanned = recover_segment(root, seg_id, 0, truncate=False)
        for rec in scanned.records:
            h = rec.header
            if h.kind == KIND_TOMBSTONE:
                parts, _ = _recode(b"", b"", h, rec.uid, CODEC_RAW, level)
                writer.append(parts)  # tombstones outlive the records they delete
                continue
            with archive.env.read() as txn:
                found = catalog.lookup(txn, rec.uid)
            if found is None or (found[0].segment_id, found[0].offset) != (seg_id, rec.offset):
                continue  # dead: deleted or superseded
            loc, doc = found
            full = archive.reader.read_record(seg_id, rec.offset, h.total)
            pixel_codec = _cold_pixel_codec(str(doc["a"].get("TransferSyntaxUID", "")), full)
            parts, nh = _recode(full.meta, full.pixel, h, rec.uid, pixel_codec, level)
            offset = writer.append(parts)
            new_loc = K.Location(new_id, offset, nh.total, nh.meta_span, h.stored_at_ns)
            moves.append((rec.uid, loc, new_loc))
        writer.sync()
        fsync_dir(root)
        end = writer.end

        def commit(txn: Any) -> None:
            live = 0
            for uid, old_loc, new_loc in moves:
                if catalog.relocate(txn, uid, old_loc, new_loc):
                    live += new_loc.total
            catalog.put_segment(
                txn, new_id, K.SegmentState(K.SEG_SEALED, end, live, 0, K.SEG_FLAG_COLD)
            )
            old = catalog.get_segment(txn, seg_id) or K.SegmentState(K.SEG_RETIRED, 0)
            old.state = K.SEG_RETIRED
            catalog.put_segment(txn, seg_id, old)

        catalog.env.write(commit)
    finally:
        # Held until the commit: while the new segment is still "compacting", a
        # recovery in another process that could take its lock would delete it.
        writer.close()
    archive.reader.forget(seg_id)
    # metasync is off: the commit that moved every record away may not survive a
    # power cut yet, and the file it moved them from must outlive it
    catalog.env.sync()
    _io.unlink(old_path)
    fsync_dir(root)
    catalog.env.call(catalog.delete_segment, seg_id)
    rep.segments += 1
    rep.records_kept += len(moves)
    rep.bytes_after += end


# -- reindex --------------------------------------------------------------------


def reindex(archive: Archive, progress: Progress | None = None) -> ReindexReport:
    """Rebuild the index from the segments into a new LMDB, then swap it in."""
    rep = ReindexReport()
    # No store of ours appends while the log is read and the index swapped:
    # they wait, then go to a segment numbered by the rebuilt index.
    with archive.writes.paused():
        _reindex_paused(archive, rep, progress)
    return rep


def _reindex_paused(archive: Archive, rep: ReindexReport, progress: Progress | None) -> None:
    root = archive.segments_dir
    ids = list_segment_ids(root)
    locks = []
    try:
        for seg_id in ids:
            fd = try_lock(segment_path(root, seg_id))
            if fd is None:
                raise ArchiveLockedError(
                    f"segment {seg_id} is being written by another process; stop the server first"
                )
            locks.append(fd)
        old_states = archive.catalog.segments()
        tmp = archive.path / "index.rebuild"
        shutil.rmtree(tmp, ignore_errors=True)
        env = IndexEnv(tmp, archive.config.index_map_bytes, sync=False)
        catalog = Catalog(env, log_changes=False)
        tombs: dict[str, int] = {}
        for done, seg_id in enumerate(ids):
            if progress is not None:
                progress(done, len(ids))
            found = recover_segment(root, seg_id, 0, truncate=False)
            rep.corruptions.extend(str(c) for c in found.corruptions)
            flags = old_states[seg_id].flags if seg_id in old_states else 0
            state = K.SegmentState(K.SEG_SEALED, found.end, 0, 0, flags)
            env.call(catalog.put_segment, seg_id, state)
            rep.records += replay(catalog, seg_id, found.records, tombs, rep.corruptions)
            rep.segments += 1
        if progress is not None:
            progress(len(ids), len(ids))
        if ids:
            env.call(_bump_next_id, catalog, max(ids) + 1)
        rep.instances = catalog.counters().get("instances", 0)
        with archive.env.read() as old:  # stores are paused: the log is complete
            env.write(lambda txn: changes.copy_log(old, archive.catalog.db, txn, env.db))
        env.sync()
        env.close()
        archive.env.replace_with(tmp)  # waits until no transaction of ours is open
    finally:
        for fd in locks:
            os.close(fd)


# -- stats ----------------------------------------------------------------------


def stats(archive: Archive) -> dict[str, Any]:
    counters = archive.catalog.counters()
    segs = archive.catalog.segments()
    disk = sum(
        os.path.getsize(segment_path(archive.segments_dir, s))
        for s in list_segment_ids(archive.segments_dir)
    )
    with archive.env.read() as txn:
        patients = txn.stat(archive.catalog.db["patients"])["entries"]
    return {
        "patients": patients,
        "studies": counters.get("studies", 0),
        "series": counters.get("series", 0),
        "instances": counters.get("instances", 0),
        "duplicates": counters.get("duplicates", 0),
        "stored_bytes": counters.get("bytes", 0),
        "disk_bytes": disk,
        "segments": len(segs),
        "cold_segments": sum(1 for s in segs.values() if s.flags & K.SEG_FLAG_COLD),
        "dead_bytes": sum(s.dead_bytes for s in segs.values()),
    }
