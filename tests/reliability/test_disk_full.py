"""A full disk under a running server, and an fsync that fails: refused, never falsely acknowledged.

The server's whole archive (segments and index) lives on a small tmpfs that
the test fills. Stores must then be refused with 0xA700 (Out of Resources)
and an Error Comment, the server must stay up, and once space returns it
must store again. An fsync that fails (EIO, injected) is never retried as
if it had succeeded: its segment is sealed, the instance refused, and later
stores go to a new segment.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.storage import _io
from tests._helpers import small_ct_bytes
from tests.net._support import echo
from tests.reliability._fs import fill, tmpfs
from tests.reliability._server import KillableServer, Score, send_until_stopped
from tests.reliability.test_kill9 import dataset_part

OUT_OF_RESOURCES = 0xA700
PROCESSING_FAILURE = 0x0110


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_full_disk_refuses_with_a700_and_the_server_resumes_when_space_returns(
    tmp_path: Path, figure: Callable[[str, Any], None]
) -> None:
    with tmpfs(tmp_path / "disk", "8m") as disk:
        srv = KillableServer(tmp_path, workers=1, archive=disk / "archive").start()
        try:
            score = Score()
            never = threading.Event()
            send_until_stopped(srv.port, range(0, 20), score, never, rows=64)
            assert score.acked and not score.refused
            filler = fill(disk, 600_000)
            for start in range(1000, 2000, 200):  # a new association if pynetdicom's stalls
                send_until_stopped(srv.port, range(start, start + 200), score, never, rows=64)
                if len(score.refused) >= 5:
                    break
            refused = dict(score.refused)
            assert refused, "the disk never filled up"
            assert set(refused.values()) == {OUT_OF_RESOURCES}, refused
            assert all(score.comments), "a refusal came without an Error Comment"
            assert echo(srv.port) == 0, "the server did not stay up"
            acked_when_full = len(score.acked)
            filler.unlink()  # space returns
            for start in range(2000, 2100, 20):  # a new association if pynetdicom's stalls
                send_until_stopped(srv.port, range(start, start + 20), score, never, rows=64)
                if len(score.acked) >= acked_when_full + 20:
                    break
            assert len(score.acked) >= acked_when_full + 20, score.comments[-3:]
            assert len(score.refused) == len(refused), "refused after space returned"
            assert srv.stop() == 0
        finally:
            srv.kill()
        with engine.open_archive(disk / "archive") as archive:
            for uid in score.acked:  # no false success: every acknowledged one is whole
                assert dataset_part(archive.get(uid)) == score.sent[uid]
            assert archive.verify().ok
    figure("acked", len(score.acked))
    figure("refused with A700", len(refused))
    figure("comment", score.comments[0])


def test_a_failed_fsync_seals_the_segment_and_refuses_the_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, figure: Callable[[str, Any], None]
) -> None:
    synced: list[int] = []
    failing: set[int] = set()
    real = _io.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(fd)
        if fd in failing:
            raise OSError(errno.EIO, "Input/output error (injected)")
        real(fd)

    monkeypatch.setattr(_io, "fdatasync", fdatasync)
    with engine.open_archive(tmp_path) as archive:
        first = archive.store(small_ct_bytes(1)).sop_instance_uid
        bad_segment = archive.writes.active_segment_id
        assert bad_segment is not None
        writer = archive.writes._writer
        assert writer is not None
        failing.add(writer._fd)
        with pytest.raises(engine.StorageIOError, match="fsync"):
            archive.store(small_ct_bytes(2))
        failing.clear()  # the disk "recovers": a retry would now succeed, and prove nothing
        calls = len(synced)
        later = [archive.store(small_ct_bytes(3 + i)).sop_instance_uid for i in range(3)]
        assert archive.writes.active_segment_id != bad_segment
        assert writer._fd not in synced[calls:], "the failed segment was fsynced again"
        states = archive.catalog.segments()
        assert states[bad_segment].state == 2, "the failed segment is not sealed"  # SEG_SEALED
        for uid, seed in zip([first, *later], [1, 3, 4, 5], strict=True):
            assert archive.get(uid) == small_ct_bytes(seed)
    with engine.open_archive(tmp_path) as archive:
        assert archive.verify().ok
    figure("fsyncs after the failure on the failed segment", 0)


def test_a_full_disk_under_the_index_is_storage_full_not_an_index_failure(tmp_path: Path) -> None:
    """Regression: LMDB's ENOSPC reached the peer as 0x0110 (processing failure), not 0xA700."""
    with tmpfs(tmp_path / "disk", "2m") as disk:
        archive_dir = disk / "archive"
        (tmp_path / "segments").mkdir()
        archive_dir.mkdir()
        (archive_dir / "segments").symlink_to(tmp_path / "segments")  # only the index is full
        with engine.open_archive(archive_dir) as archive:
            archive.store(small_ct_bytes(0))
            filler = fill(disk, 0)
            with pytest.raises(engine.StorageFullError, match="free disk space"):
                for seed in range(1, 2000):
                    archive.store(small_ct_bytes(seed))
            filler.unlink()
            uid = archive.store(small_ct_bytes(5000)).sop_instance_uid
            assert archive.get(uid) == small_ct_bytes(5000)


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_failed_fsync_under_the_server_refuses_that_store_and_the_next_ones_succeed(
    tmp_path: Path, figure: Callable[[str, Any], None]
) -> None:
    srv = KillableServer(tmp_path, workers=1, env={"ENGINE_TEST_FSYNC_EIO_AT": "10"}).start()
    try:
        score = Score()
        send_until_stopped(srv.port, range(0, 30), score, threading.Event())
        if len(score.acked) + len(score.refused) < 30:  # pynetdicom's requestor stalled: go on
            send_until_stopped(srv.port, range(100, 100 + 30 - len(score.acked)), score,
                               threading.Event())  # fmt: skip
        assert echo(srv.port) == 0, "the server did not stay up"
        assert srv.stop() == 0
    finally:
        srv.kill()
    assert len(score.refused) == 1, score.refused  # the store whose fsync failed
    assert set(score.refused.values()) == {PROCESSING_FAILURE}
    assert "fsync" in score.comments[0], score.comments
    assert len(score.acked) >= 20, "stores did not go on after the failed fsync"
    with engine.open_archive(srv.archive) as archive:
        for uid in score.acked:
            assert dataset_part(archive.get(uid)) == score.sent[uid]
        segments = archive.catalog.segments()
        assert archive.verify().ok
    assert len(segments) >= 2, "later stores did not go to a new segment"
    figure("refused after EIO", len(score.refused))
    figure("acked", len(score.acked))


def test_an_lmdb_eio_on_a_full_disk_is_out_of_resources_not_a_processing_failure(
    tmp_path: Path,
) -> None:
    """LMDB turns a short page write into EIO; on a full tmpfs a store got 0x0110 from it."""
    import lmdb

    from engine.errors import IndexFailureError, StorageFullError
    from engine.index.env import index_error

    eio = lmdb.Error(f"mdb_txn_commit: {os.strerror(errno.EIO)}")
    with tmpfs(tmp_path / "disk", "2m") as disk:
        assert isinstance(index_error(eio, "index write failed", disk), IndexFailureError)
        fill(disk, 0)
        full = index_error(eio, "index write failed", disk)
        assert isinstance(full, StorageFullError) and "free disk space" in str(full)
    # an EIO with room to spare stays an I/O failure of the index
    assert type(index_error(eio, "index write failed", tmp_path)) is IndexFailureError
