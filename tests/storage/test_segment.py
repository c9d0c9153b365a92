"""Segments: torn tails, flipped bytes, a full disk, rotation and compaction, on real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import engine
from engine.errors import CorruptRecordError, NotFoundError, StorageFullError
from engine.storage.format import RECORD_HEADER, SEGMENT_HEADER
from engine.storage.segment import SegmentWriter, recover_segment
from tests._helpers import ROOT, Child, flip_byte, parse_events, segment_files, small_ct_bytes

# -- torn tails ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def crashed_archive(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[int, str], int, int]:
    """An archive whose writer died right after appending its 4th record (not synced, not indexed).

    Returns (folder, acknowledged {seed: uid}, offset of the 4th record, its length).
    """
    path = tmp_path_factory.mktemp("crashed")
    child = Child(path, 500, count=4, rows=1, point="after_append", at=4)
    child.go()
    code, lines, err = child.finish()
    assert code == -9, err
    begun, acked = parse_events(lines)
    assert len(acked) == 3 and len(begun) == 4
    [seg] = segment_files(path)
    size = seg.stat().st_size
    records = recover_segment(seg.parent, int(seg.stem), 0, truncate=False).records  # read only
    assert len(records) == 4
    start = records[-1].offset
    return path, acked, start, size - start


@pytest.fixture()
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A folder in /dev/shm when there is one: recovery's fsyncs cost nothing there."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        path = Path(tempfile.mkdtemp(dir=shm, prefix="pacs-test-"))
        yield path
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path


def test_truncated_tail_is_dropped_on_recovery(
    crashed_archive: tuple[Path, dict[int, str], int, int], scratch: Path
) -> None:
    base, acked, start, length = crashed_archive
    assert length < 2000  # a small record keeps "every offset" affordable
    expected = {uid: small_ct_bytes(seed, 1, 1) for seed, uid in acked.items()}
    work = scratch / "archive"
    shutil.copytree(base, work)
    [seg] = segment_files(work)
    files = [
        (base / "index" / "data.mdb", work / "index" / "data.mdb"),
        (segment_files(base)[0], seg),
    ]
    for cut in range(start, start + length):  # every byte offset inside the last record
        for src, dst in files:
            shutil.copyfile(src, dst)
        os.truncate(seg, cut)
        with engine.open_archive(work) as archive:
            if cut > start:
                assert archive.recovery.truncated == [(int(seg.stem), start)], cut
            for uid, data in expected.items():
                assert archive.get(uid) == data, cut
            assert archive.stats()["instances"] == 3, cut
            report = archive.verify()
            assert report.ok, (cut, report.problems)
            assert report.records == 3
        assert seg.stat().st_size == start, cut


def test_whole_unindexed_tail_record_is_replayed(
    crashed_archive: tuple[Path, dict[int, str], int, int], tmp_path: Path
) -> None:
    base, acked, _, _ = crashed_archive
    work = tmp_path / "whole"
    shutil.copytree(base, work)
    with engine.open_archive(work) as archive:
        assert archive.recovery.truncated == []
        assert archive.recovery.records_replayed == 1
        assert archive.stats()["instances"] == 4
        for seed, uid in acked.items():
            assert archive.get(uid) == small_ct_bytes(seed, 1, 1)
        assert archive.verify().ok


def test_empty_segment_from_a_crash_at_creation_is_repaired(tmp_path: Path) -> None:
    with engine.open_archive(tmp_path) as archive:
        uid = archive.store(small_ct_bytes(1)).sop_instance_uid
    # the writer died between creating its next segment and writing the header
    (tmp_path / "segments" / "0000000002.seg").write_bytes(b"PXSEG")
    with engine.open_archive(tmp_path) as archive:
        assert archive.get(uid) == small_ct_bytes(1)
        uid2 = archive.store(small_ct_bytes(2)).sop_instance_uid
        assert archive.verify().ok
    with engine.open_archive(tmp_path) as archive:
        assert archive.get(uid2) == small_ct_bytes(2)


# -- flipped bytes ------------------------------------------------------------------------


@pytest.fixture()
def sealed(tmp_path: Path) -> Iterator[tuple[Path, list[str], list[bytes]]]:
    datas = [small_ct_bytes(600 + i, 8, 8) for i in range(5)]
    with engine.open_archive(tmp_path) as archive:
        uids = [archive.store(d).sop_instance_uid for d in datas]
    yield tmp_path, uids, datas


def _location(path: Path, uid: str) -> tuple[int, int, int]:
    with engine.open_archive(path) as archive, archive.env.read() as txn:
        loc = archive.catalog.location(txn, uid)
    assert loc is not None
    return loc.offset, loc.meta_span, loc.total


@pytest.mark.parametrize("part", ["header", "uid", "meta", "pixel"])
def test_flipped_byte_is_detected(sealed: tuple[Path, list[str], list[bytes]], part: str) -> None:
    path, uids, datas = sealed
    victim = 2
    offset, meta_span, total = _location(path, uids[victim])
    at = {
        "header": offset + 20,
        "uid": offset + RECORD_HEADER.size + 3,
        "meta": offset + meta_span - 40,
        "pixel": offset + total - 7,
    }[part]
    [seg] = segment_files(path)
    flip_byte(seg, at)
    with engine.open_archive(path) as archive:
        with pytest.raises(CorruptRecordError) as info:
            archive.get(uids[victim])  # never the wrong bytes
        assert info.value.segment == seg.name and info.value.offset == offset
        if part == "pixel":
            # the metadata part has its own checksum: a metadata read still works
            assert archive.get_metadata(uids[victim]).SOPInstanceUID == uids[victim]
        else:
            with pytest.raises(CorruptRecordError):
                archive.get_metadata(uids[victim])
        for i, (uid, data) in enumerate(zip(uids, datas, strict=True)):
            if i != victim:
                assert archive.get(uid) == data
        report = archive.verify()
        assert not report.ok
        assert report.records == 4
        assert any(seg.name in p and f"@ {offset}" in p for p in report.problems), report.problems
        assert any(uids[victim] in p for p in report.problems), report.problems


def test_corrupt_middle_record_does_not_cost_the_good_ones_after_it(
    sealed: tuple[Path, list[str], list[bytes]],
) -> None:
    path, uids, datas = sealed
    offset, meta_span, _ = _location(path, uids[1])
    [seg] = segment_files(path)
    size = seg.stat().st_size
    flip_byte(seg, offset + meta_span - 40)
    shutil.rmtree(
        path / "index"
    )  # the index is lost: every record is replayed, with truncation allowed
    with engine.open_archive(path) as archive:
        assert archive.recovery.truncated == []
        assert (
            len(archive.recovery.corruptions) == 1
            and f"@ {offset}" in archive.recovery.corruptions[0]
        )
        with pytest.raises(NotFoundError):
            archive.get(uids[1])
        for i in (0, 2, 3, 4):
            assert archive.get(uids[i]) == datas[i]
        assert archive.stats()["instances"] == 4
    assert seg.stat().st_size == size


def test_flipped_segment_header_is_reported_by_verify(
    sealed: tuple[Path, list[str], list[bytes]],
) -> None:
    path, _, _ = sealed
    [seg] = segment_files(path)
    flip_byte(seg, 2)
    with engine.open_archive(path) as archive:
        report = archive.verify()
        assert any("magic" in p for p in report.problems), report.problems


def test_unreadable_header_of_an_unsealed_segment_does_not_keep_the_archive_shut(
    crashed_archive: tuple[Path, dict[int, str], int, int], tmp_path: Path
) -> None:
    src, acked, _, _ = crashed_archive
    path = tmp_path / "copy"
    shutil.copytree(src, path)
    [seg] = segment_files(path)
    flip_byte(seg, 0)  # the crashed writer's segment: never sealed, tail not yet replayed
    with engine.open_archive(path) as archive:
        assert any("magic" in c for c in archive.recovery.corruptions), archive.recovery
        for uid in acked.values():  # the index still knows where they are
            assert archive.get(uid)
        assert not archive.verify().ok
        archive.store(small_ct_bytes(9001, rows=1))  # and the archive takes new instances


# -- a full disk -------------------------------------------------------------------------


@pytest.fixture()
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (root only; skipped elsewhere, where the RLIMIT_FSIZE test covers the same)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path, leave: int) -> Path:
    filler = mount / "filler"
    st = os.statvfs(mount)
    filler.write_bytes(b"\x00" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def test_segment_writer_on_a_full_disk_leaves_no_partial_record(tiny_fs: Path) -> None:
    writer = SegmentWriter(tiny_fs, 1)
    filler = _fill(tiny_fs, 300_000)
    record = [b"x" * 100_000]
    appended = 0
    with pytest.raises(StorageFullError, match="free disk space"):
        for _ in range(10):
            writer.append(record)
            appended += 1
    assert 1 <= appended < 10
    assert os.path.getsize(writer.path) == writer.end == SEGMENT_HEADER.size + appended * 100_000
    filler.unlink()
    writer.append(record)  # space freed: the writer carries on where it stopped
    assert os.path.getsize(writer.path) == SEGMENT_HEADER.size + (appended + 1) * 100_000
    writer.close()


def test_store_on_a_full_disk_raises_and_the_next_store_works(
    tmp_path: Path, tiny_fs: Path
) -> None:
    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    os.symlink(
        tiny_fs, archive_dir / "segments"
    )  # segments on the tiny disk, the index beside them
    big = [small_ct_bytes(700 + i, 256, 256) for i in range(20)]  # 128 KiB of pixels each
    with engine.open_archive(archive_dir) as archive:
        archive.store(big[0])
        filler = _fill(tiny_fs, 400_000)
        stored = [big[0]]
        with pytest.raises(StorageFullError) as info:
            for data in big[1:]:
                before = (
                    {p.name: p.stat().st_size for p in segment_files(archive_dir)},
                    archive.stats(),
                )
                archive.store(data)
                stored.append(data)
        assert isinstance(info.value, OSError)
        assert (
            {p.name: p.stat().st_size for p in segment_files(archive_dir)},
            archive.stats(),
        ) == before
        filler.unlink()
        nxt = big[len(stored)]
        uid = archive.store(nxt).sop_instance_uid
        assert archive.get(uid) == nxt
        stored.append(nxt)
    with engine.open_archive(archive_dir) as archive:
        assert archive.verify().ok
        assert archive.stats()["instances"] == len(stored)


_RLIMIT_CHILD = r"""
import json, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of death
import engine
from engine.errors import StorageFullError
from tests._helpers import small_ct_bytes, segment_sizes
path = sys.argv[1]
soft, hard = 1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]
archive = engine.open_archive(path)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
acked, error = [], None
for seed in range(800, 840):
    data = small_ct_bytes(seed, 128, 128)
    before = segment_sizes(path), archive.stats()
    try:
        acked.append(archive.store(data).sop_instance_uid)
    except StorageFullError as exc:
        error = str(exc)
        unchanged = (segment_sizes(path), archive.stats()) == before
        break
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))   # "space freed"
acked.append(archive.store(small_ct_bytes(900, 128, 128)).sop_instance_uid)
archive.close()
print(json.dumps({"acked": acked, "error": error, "unchanged": unchanged}))
"""


def test_store_past_the_file_size_limit_raises_storage_full(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", _RLIMIT_CHILD, str(tmp_path)],
        capture_output=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    out = json.loads(done.stdout)
    assert out["error"] and "free disk space" in out["error"]
    assert out["unchanged"], "a failed store changed the segment or the stats"
    assert len(out["acked"]) >= 2
    with engine.open_archive(tmp_path) as archive:
        assert archive.verify().ok
        assert archive.stats()["instances"] == len(out["acked"])
        assert archive.get(out["acked"][-1]) == small_ct_bytes(900, 128, 128)


# -- rotation and compaction ----------------------------------------------------------------


def test_segments_rotate_at_their_size_limit(tmp_path: Path) -> None:
    datas = [small_ct_bytes(1000 + i, 64, 64) for i in range(40)]  # ~9 KiB each
    with engine.open_archive(tmp_path, segment_max_bytes=65536) as archive:
        uids = [archive.store(d).sop_instance_uid for d in datas]
        assert len(segment_files(tmp_path)) >= 5
    with engine.open_archive(tmp_path, segment_max_bytes=65536) as archive:
        assert [archive.get(u) for u in uids] == datas
        assert archive.verify().ok
        archive.reindex()
        assert [archive.get(u) for u in uids] == datas


def test_compact_drops_dead_records_and_keeps_live_ones(tmp_path: Path) -> None:
    datas = [small_ct_bytes(1100 + i, 64, 64) for i in range(30)]
    with engine.open_archive(tmp_path, segment_max_bytes=65536) as archive:
        uids = [archive.store(d).sop_instance_uid for d in datas]
        for uid in uids[::3]:
            archive.delete(sop_instance_uid=uid)
        archive.store(datas[1])  # a duplicate: its first record is dead too
        before = sum(p.stat().st_size for p in segment_files(tmp_path))
        report = archive.compact()
        assert report.segments >= 1 and report.bytes_after < report.bytes_before
        assert sum(p.stat().st_size for p in segment_files(tmp_path)) < before
        live = [(u, d) for i, (u, d) in enumerate(zip(uids, datas, strict=True)) if i % 3]
        for uid, data in live:
            assert archive.get(uid) == data
        assert archive.verify().ok
    with engine.open_archive(tmp_path) as archive:
        archive.reindex()
        assert archive.stats()["instances"] == len(live)
        for uid in uids[::3]:
            with pytest.raises(NotFoundError):
                archive.get(uid)  # the tombstones survived compaction
        for uid, data in live:
            assert archive.get(uid) == data
        assert archive.verify().ok
