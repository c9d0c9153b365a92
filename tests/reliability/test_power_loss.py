"""Power loss at every point of a recorded workload: nothing acknowledged is lost.

The workload (two threads storing, deletions, a compaction, more stores,
with segments small enough to rotate often) runs once against a real
archive while ``_powercut.Recorder`` logs every segment write, fsync, file
creation, removal and directory fsync, and snapshots the index at each
commit. Then, for every prefix of that log, crash states are built in
which unsynced writes are dropped, torn at 512 B / 4 KiB sectors or
reordered, and unsynced directory entries lost (``_powercut.crash_state``).
Each state is opened as an archive (recovery runs) and must hold every
acknowledged instance bit-exact, no acknowledged deletion, only whole
unacknowledged instances, and pass ``verify``.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.errors import NotFoundError
from engine.storage import _io
from tests._helpers import small_ct_bytes
from tests.reliability._powercut import Op, Recorder, crash_state, materialise
from tests.reliability.conftest import scaled

RANDOM_STATES_PER_CUT = scaled(1, 6)
SEGMENT_MAX_BYTES = 1 << 16  # the smallest allowed: a few dozen records, then a new file
SLOW_FSYNC_S = 1.0


def _record_workload(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[Op], dict[str, bytes]]:
    live = root / "live"
    datas: dict[str, bytes] = {}
    rec = Recorder(live / "index", root / "snapshots")
    with rec.installed(monkeypatch):
        archive = engine.open_archive(live, segment_max_bytes=SEGMENT_MAX_BYTES)

        def store(seeds: range) -> None:
            for seed in seeds:
                data = small_ct_bytes(seed, 48, 48)  # ~5.8 KiB a record: rotation every ~11
                uid = archive.store(data).sop_instance_uid
                datas[uid] = data
                rec.log(Op("ack", uid=uid))

        threads = [threading.Thread(target=store, args=(range(s, s + 14),)) for s in (0, 100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for uid in list(datas)[:4]:
            rec.log(Op("deleting", uid=uid))
            archive.delete(sop_instance_uid=uid)
            rec.log(Op("deleted", uid=uid))
        archive.compact()  # new files, index moves, old files removed
        store(range(200, 212))
        archive.close()
    return rec.ops, datas


def _check(path: Path, state: Any, datas: dict[str, bytes]) -> None:
    with engine.open_archive(path) as archive:
        for uid, data in datas.items():
            try:
                got = archive.get(uid)
            except NotFoundError:
                lost = uid in state.acked and uid not in state.deleted | state.deleting
                assert not lost, f"acknowledged {uid} lost"
                continue
            assert uid not in state.deleted, f"{uid} came back after its deletion was acknowledged"
            assert got == data, f"{uid} is present but not whole"
        report = archive.verify()
        assert report.ok, report.problems


def test_power_loss_at_every_point_of_ingest_delete_and_compact_loses_nothing_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, figure: Callable[[str, Any], None]
) -> None:
    ops, datas = _record_workload(tmp_path, monkeypatch)
    live, scratch = tmp_path / "live", tmp_path / "crash"
    rng = random.Random(99)
    states = 0
    for cut in range(1, len(ops) + 1):
        for mode in ("synced", "all", *["random"] * RANDOM_STATES_PER_CUT):
            state = crash_state(ops, cut, mode, rng)
            materialise(state, live, scratch)
            try:
                _check(scratch, state, datas)
            except Exception as exc:
                raise AssertionError(f"cut after op {cut - 1} ({ops[cut - 1].kind}), {mode}: "
                                     f"{exc}") from exc  # fmt: skip
            states += 1
    figure("operations recorded", len(ops))
    figure("crash states explored", states)
    figure("instances acknowledged", len(datas))


# -- regressions: each names what the suite above caught --------------------------------


def _record_a_two_record_batch(root: Path, monkeypatch: pytest.MonkeyPatch
                               ) -> tuple[list[Op], list[str], list[bytes]]:  # fmt: skip
    """One store, then two records in one group commit whose index commit ends before its fsync."""
    live = root / "live"
    rec = Recorder(live / "index", root / "snapshots")
    datas = [small_ct_bytes(300 + i, 48, 48) for i in range(3)]
    with rec.installed(monkeypatch):
        recorded_sync = _io.fdatasync

        def slow_fdatasync(fd: int) -> None:
            time.sleep(SLOW_FSYNC_S)  # the index commit, running alongside, returns first
            recorded_sync(fd)

        archive = engine.open_archive(live, segment_max_bytes=SEGMENT_MAX_BYTES)
        uids = [archive.store(datas[0]).sop_instance_uid]
        monkeypatch.setattr(_io, "fdatasync", slow_fdatasync)
        pending = [archive.submit(d) for d in datas[1:]]
        uids += [archive.wait(p).sop_instance_uid for p in pending]
        archive.close()
    return rec.ops, uids, datas


def _batch_writes(ops: list[Op]) -> tuple[int, int, int]:
    """Op indexes of the batch's two record writes and of its index commit."""
    writes = [i for i, op in enumerate(ops) if op.kind == "write" and len(op.data) > 1000]
    first, second = writes[-2], writes[-1]
    commit = next(i for i in range(second, len(ops)) if ops[i].kind == "index")
    assert all(op.kind != "sync" for op in ops[second:commit]), "the fsync ended first"
    return first, second, commit


def test_index_ahead_of_a_hole_is_found_from_the_synced_mark_not_the_file_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index names a record lost to the cut while a later write kept the file long."""
    ops, uids, datas = _record_a_two_record_batch(tmp_path, monkeypatch)
    first, _, commit = _batch_writes(ops)
    state = crash_state(ops, commit + 1, "drop", drop=frozenset({first}))
    materialise(state, tmp_path / "live", tmp_path / "crash")
    with engine.open_archive(tmp_path / "crash") as archive:
        assert archive.recovery.index_ahead and archive.recovery.rebuilt
        assert archive.get(uids[0]) == datas[0]
        with pytest.raises(NotFoundError):
            archive.get(uids[1])  # lost with the cut: it was never acknowledged
        assert archive.get(uids[2]) == datas[2]  # whole, after the hole: kept
        assert archive.verify().ok


def test_whole_records_after_a_hole_in_the_tail_are_kept_and_the_hole_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops, uids, datas = _record_a_two_record_batch(tmp_path, monkeypatch)
    first, second, _ = _batch_writes(ops)
    state = crash_state(ops, second + 1, "drop", drop=frozenset({first}))  # before any commit
    materialise(state, tmp_path / "live", tmp_path / "crash")
    with engine.open_archive(tmp_path / "crash") as archive:
        assert archive.recovery.truncated and not archive.recovery.index_ahead
        assert archive.get(uids[2]) == datas[2]
        assert archive.verify().ok, "the hole is still in the log"


def test_compaction_syncs_the_index_before_it_removes_the_old_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With metasync off the commit that moved the records could revert, into a removed file."""
    ops, _ = _record_workload(tmp_path, monkeypatch)
    unlinks = [i for i, op in enumerate(ops) if op.kind == "unlink"]
    assert unlinks, "the workload removed no segment"
    for i in unlinks:
        last_commit = max(j for j in range(i) if ops[j].kind == "index")
        assert any(op.kind == "indexsync" for op in ops[last_commit:i]), ops[last_commit:i]
