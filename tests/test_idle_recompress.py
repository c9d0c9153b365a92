"""Sealed segments are recompressed in the background once the archive is idle."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import engine
from engine.synthetic import ct_series, encode


def test_idle_archive_recompresses_sealed_segments_and_keeps_every_instance(tmp_path: Path) -> None:
    slices = [encode(ds) for ds in ct_series(7, 24, rows=256, columns=256)]
    with engine.open_archive(tmp_path, idle_recompress_s=0.2, segment_max_bytes=1 << 20) as archive:
        uids = [archive.store(data).sop_instance_uid for data in slices]
        before = archive.stats()
        assert before["segments"] >= 3 and before["cold_segments"] == 0
        deadline = time.monotonic() + 60
        while archive.stats()["cold_segments"] < before["segments"] - 1:
            assert time.monotonic() < deadline, "no background recompression within 60 s"
            time.sleep(0.1)
        after = archive.stats()
        assert after["disk_bytes"] < before["disk_bytes"]
        for uid, data in zip(uids, slices, strict=True):
            assert archive.get(uid)[132:] == data[132:]  # bit-exact after the preamble
        assert archive.verify().ok


def test_recompression_is_off_by_default_for_embedders(tmp_path: Path) -> None:
    with engine.open_archive(tmp_path, segment_max_bytes=1 << 20) as archive:
        for data in (encode(ds) for ds in ct_series(8, 12, rows=256, columns=256)):
            archive.store(data)
        time.sleep(0.5)
        assert archive.stats()["cold_segments"] == 0
        assert archive._background is None


_WRITER = """
import sys, time
import engine
from engine.synthetic import ct_series, encode
with engine.open_archive(sys.argv[1], segment_max_bytes=1 << 20) as archive:
    for data in (encode(ds) for ds in ct_series(10, 40, rows=128, columns=128)):
        archive.store(data)
        time.sleep(0.1)
"""


def test_stores_by_another_process_keep_the_archive_from_being_idle(tmp_path: Path) -> None:
    """One worker gets no stores while another (or a replica's follower) is busy: it must
    not recompress under them."""
    with engine.open_archive(tmp_path, segment_max_bytes=1 << 20) as archive:
        for data in (encode(ds) for ds in ct_series(9, 12, rows=256, columns=256)):
            archive.store(data)  # sealed segments to recompress
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)])
    try:
        with engine.open_archive(tmp_path, idle_recompress_s=0.5,
                                 segment_max_bytes=1 << 20) as archive:  # fmt: skip
            while writer.poll() is None:  # ~4 s of a store every 0.1 s from the other process
                assert archive.stats()["cold_segments"] == 0, "recompressed while stores came"
                time.sleep(0.05)
            assert writer.returncode == 0
            deadline = time.monotonic() + 60
            while archive.stats()["cold_segments"] == 0:  # idle now: it recompresses
                assert time.monotonic() < deadline, "no background recompression within 60 s"
                time.sleep(0.1)
            assert archive.verify().ok
    finally:
        writer.kill()
        writer.wait()


def test_an_idle_archive_seals_its_active_segment_and_compresses_the_last_burst(
    tmp_path: Path,
) -> None:
    """A burst of stores smaller than a segment is compressed at rest too, bit-exact; a
    store afterwards goes to a new segment."""
    slices = [encode(ds) for ds in ct_series(11, 16, rows=256, columns=256)]
    with engine.open_archive(tmp_path, idle_recompress_s=0.2,
                             idle_seal_min_bytes=1 << 20) as archive:  # fmt: skip
        uids = [archive.store(data).sop_instance_uid for data in slices]
        before = archive.stats()
        assert before["segments"] == 1 and before["cold_segments"] == 0  # all in the active one
        deadline = time.monotonic() + 60
        while archive.stats()["cold_segments"] < 1:
            assert time.monotonic() < deadline, "the active segment was not sealed and recompressed"
            time.sleep(0.1)
        after = archive.stats()
        assert after["disk_bytes"] < before["disk_bytes"] / 1.5
        for uid, data in zip(uids, slices, strict=True):
            assert archive.get(uid)[132:] == data[132:]
        late = encode(next(iter(ct_series(12, 1, rows=64, columns=64))))
        assert archive.get(archive.store(late).sop_instance_uid)[132:] == late[132:]
        assert archive.verify().ok


def test_an_idle_archive_keeps_a_small_active_segment_open(tmp_path: Path) -> None:
    """Below idle_seal_min_bytes nothing is sealed: a trickle does not make a segment each."""
    with engine.open_archive(tmp_path, idle_recompress_s=0.1,
                             idle_seal_min_bytes=64 << 20) as archive:  # fmt: skip
        for data in (encode(ds) for ds in ct_series(13, 4, rows=64, columns=64)):
            archive.store(data)
        time.sleep(0.6)
        stats = archive.stats()
        assert stats["segments"] == 1 and stats["cold_segments"] == 0
