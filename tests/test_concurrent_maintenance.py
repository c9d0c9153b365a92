"""Maintenance that runs while the archive is in use loses nothing (review findings)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.index.catalog import Catalog
from engine.index.env import IndexEnv
from engine.storage.segment import SegmentReader, list_segment_ids
from tests._helpers import ROOT, small_ct_bytes


def test_recovery_in_another_process_during_compaction_deletes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datas = [small_ct_bytes(300 + i) for i in range(8)]
    with engine.open_archive(tmp_path) as archive:
        uids = [archive.store(d).sop_instance_uid for d in datas]
        archive.delete(sop_instance_uid=uids[0])  # something dead, so compaction runs
    opened: list[int] = []
    write = IndexEnv.write

    def open_elsewhere_before_the_commit(self: IndexEnv, fn: Any) -> Any:
        if getattr(fn, "__name__", "") == "commit" and not opened:
            # the compacted segment is written and synced but still "compacting":
            # a recovery that could take its lock now would delete it
            code = f"import engine; engine.open_archive({str(tmp_path)!r}).close()"
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            opened.append(subprocess.run([sys.executable, "-c", code], env=env).returncode)
        return write(self, fn)

    monkeypatch.setattr(IndexEnv, "write", open_elsewhere_before_the_commit)
    with engine.open_archive(tmp_path) as archive:
        assert archive.compact().segments >= 1
    assert opened == [0]
    with engine.open_archive(tmp_path) as archive:
        for uid, data in zip(uids[1:], datas[1:], strict=True):
            assert archive.get(uid)[132:] == data[132:]
        assert archive.verify().ok


def test_reindex_while_another_thread_stores_loses_no_acknowledged_instance(
    tmp_path: Path,
) -> None:
    datas = [small_ct_bytes(500 + i, rows=4, columns=4) for i in range(150)]
    acked: dict[str, bytes] = {}
    errors: list[BaseException] = []
    with engine.open_archive(tmp_path, durability="none") as archive:

        def store_all() -> None:
            try:
                for d in datas:
                    acked[archive.store(d).sop_instance_uid] = d
            except BaseException as exc:  # noqa: BLE001 -- re-raised in the test thread
                errors.append(exc)

        t = threading.Thread(target=store_all)
        t.start()
        for _ in range(3):
            archive.reindex()
        t.join()
        assert not errors, errors
        assert len(acked) == len(datas)
        for uid, d in acked.items():
            assert archive.get(uid)[132:] == d[132:]
    with engine.open_archive(tmp_path) as archive:
        assert archive.stats()["instances"] == len(datas)
        assert archive.verify().ok
        assert len(set(list_segment_ids(tmp_path / "segments"))) >= 1


def test_a_failing_index_commit_fails_every_store_of_its_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Catalog, txn: Any, seg_id: int, upto: int, synced: int) -> None:
        raise RuntimeError("index exploded")

    monkeypatch.setattr(Catalog, "mark_indexed", broken)
    outcomes: list[str] = []
    with engine.open_archive(tmp_path) as archive:

        def one(i: int) -> None:
            try:
                archive.store(small_ct_bytes(700 + i))
                outcomes.append("stored")
            except RuntimeError:
                outcomes.append("refused")

        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        monkeypatch.undo()
    assert outcomes == ["refused"] * 6


def test_a_forgotten_descriptor_stays_open_until_its_read_ends(tmp_path: Path) -> None:
    with engine.open_archive(tmp_path) as archive:
        archive.store(small_ct_bytes(900))
        [seg] = list_segment_ids(tmp_path / "segments")
    reader = SegmentReader(tmp_path / "segments")
    handle = reader._acquire(seg)
    reader.forget(seg)  # as compaction does while a WADO read is in flight
    assert os.pread(handle.fd, 8, 0) == b"PXSEGv1\n"  # still this file's descriptor
    reader._release(handle)
    with pytest.raises(OSError):
        os.fstat(handle.fd)  # closed by the last reader
    reader.close()
