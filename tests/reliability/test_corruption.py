"""Bit flips anywhere in sealed segments, raw and recompressed: an error, never wrong bytes.

Each trial flips one bit of one segment file of a closed archive, opens it,
and reads everything back: ``verify`` must report the corruption, and
``get``, ``read_metadata`` and every frame of every instance must either
return the original bytes or raise :class:`CorruptRecordError`; the
instance whose record holds the flipped bit must fail. The flip is then
undone (the same XOR), so one archive serves every trial.

Truncation at every byte offset of the last record is
``tests/storage/test_segment.py::test_truncated_tail_is_dropped_on_recovery``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file

import engine
from engine.archive import Archive
from engine.errors import CorruptRecordError
from engine.storage.segment import list_segment_ids, recover_segment, segment_path
from tests._helpers import small_ct_bytes
from tests.reliability.conftest import scaled

FLIPS = scaled(300, 5000)
# multi-frame native (frames read by positioned reads), encapsulated JPEG, plain CT
REAL_FILES = ("emri_small.dcm", "SC_rgb_jpeg_dcmtk.dcm", "CT_small.dcm")


@dataclass
class Original:
    data: bytes  # what get() returned before any flip
    meta: bytes  # what read_metadata() returned
    frames: list[bytes]


def _snapshot(archive: Archive) -> dict[str, Original]:
    out = {}
    with archive.env.read() as txn:
        uids = [uid for uid, _, _ in archive.catalog.all_instances(txn)]
    for uid in uids:
        src = archive.frames(uid)
        frames = [src.read(n) for n in range(1, src.count + 1)]
        out[uid] = Original(archive.get(uid), archive.read_metadata(uid)[0], frames)
    return out


def _build(path: Path, *, compact: bool) -> dict[str, Original]:
    with engine.open_archive(path) as archive:
        for name in REAL_FILES:
            archive.store(Path(get_testdata_file(name)))
        for seed in range(4):
            archive.store(small_ct_bytes(900 + seed, 32, 32))
        if compact:
            archive.compact()  # zstd-recompressed ("cold") segments
        assert archive.verify().ok
        return _snapshot(archive)


def _owner(records: list[tuple[int, int, str]], seg: int, at: int) -> str | None:
    """The UID whose record (segment, offset, total) holds byte `at`; None in the segment header."""
    for s, off, uid in records:
        if s == seg and off <= at:
            owner = uid
    return owner if at >= min(o for s, o, _ in records if s == seg) else None


def _expect_same_or_corrupt(read: Callable[[], Any], original: Any) -> bool:
    """True when the read raised CorruptRecordError; fails the test on wrong bytes."""
    try:
        got = read()
    except CorruptRecordError:
        return True
    assert got == original, "a read returned wrong bytes instead of an error"
    return False


@pytest.mark.parametrize("cold", [False, True], ids=["sealed", "recompressed"])
def test_every_bit_flip_in_a_sealed_segment_is_an_error_never_wrong_bytes(
    tmp_path: Path, cold: bool, figure: Callable[[str, Any], None]
) -> None:
    originals = _build(tmp_path, compact=cold)
    root = tmp_path / "segments"
    records = [
        (seg, rec.offset, rec.uid)
        for seg in list_segment_ids(root)
        for rec in recover_segment(root, seg, 0, truncate=False).records
    ]
    if cold:
        with engine.open_archive(tmp_path) as archive:
            assert archive.stats()["cold_segments"] == len(list_segment_ids(root))
    sizes = {seg: os.path.getsize(segment_path(root, seg)) for seg in list_segment_ids(root)}
    rng = random.Random(4242)
    detected_by_verify = detected_by_reads = 0
    for _ in range(FLIPS):
        seg = rng.choice(sorted(sizes))
        at, bit = rng.randrange(sizes[seg]), 1 << rng.randrange(8)
        _flip(segment_path(root, seg), at, bit)
        try:
            with engine.open_archive(tmp_path) as archive:
                detected_by_verify += not archive.verify().ok
                owner = _owner(records, seg, at)
                for uid, orig in originals.items():
                    failed = _expect_same_or_corrupt(lambda u=uid: archive.get(u), orig.data)
                    _expect_same_or_corrupt(lambda u=uid: archive.read_metadata(u)[0], orig.meta)
                    failed |= _frames_same_or_corrupt(archive, uid, orig.frames)
                    if uid == owner:
                        assert failed, f"flip at {seg}:{at} in {uid}'s record went unnoticed"
                        detected_by_reads += 1
        finally:
            _flip(segment_path(root, seg), at, bit)
    figure("bit flips tried", FLIPS)
    figure("detected by verify", detected_by_verify)
    figure("detected by get/frames", detected_by_reads)
    assert detected_by_verify == FLIPS
    with engine.open_archive(tmp_path) as archive:  # every flip undone: the archive is whole
        assert archive.verify().ok and _snapshot(archive) == originals


def _frames_same_or_corrupt(archive: Archive, uid: str, frames: list[bytes]) -> bool:
    try:
        src = archive.frames(uid)
    except CorruptRecordError:
        return True
    failed = False
    for n, frame in enumerate(frames, 1):
        failed |= _expect_same_or_corrupt(lambda n=n: src.read(n), frame)
    return failed


def _flip(path: Path, at: int, bit: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)[0]
        f.seek(at)
        f.write(bytes([b ^ bit]))


def test_real_files_are_stored_for_the_flips() -> None:
    for name in REAL_FILES:  # a missing corpus file fails here, loudly
        assert pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True).SOPInstanceUID


def test_frame_read_of_a_flipped_raw_pixel_part_raises_not_wrong_bytes(tmp_path: Path) -> None:
    """Regression: frames of a raw multi-frame part came from reads no checksum covered."""
    with engine.open_archive(tmp_path) as archive:
        uid = archive.store(Path(get_testdata_file("emri_small.dcm"))).sop_instance_uid
        with archive.env.read() as txn:
            loc = archive.catalog.location(txn, uid)
        assert loc is not None and archive.frames(uid).count > 1
    _flip(segment_path(tmp_path / "segments", loc.segment_id), loc.offset + loc.total - 100, 1)
    with engine.open_archive(tmp_path) as archive, pytest.raises(CorruptRecordError):
        archive.frames(uid).read(1)
