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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.errors import NotFoundError
from tests._helpers import small_ct_bytes
from tests.reliability._powercut import Op, Recorder, crash_state, materialise
from tests.reliability.conftest import scaled

RANDOM_STATES_PER_CUT = scaled(1, 6)
SEGMENT_MAX_BYTES = 1 << 16  # the smallest allowed: a few dozen records, then a new file


def _record_workload(root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Op], dict[str, bytes]]:
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
            except Exception as exc:  # noqa: BLE001 -- say which crash state failed
                raise AssertionError(f"cut after op {cut - 1} ({ops[cut - 1].kind}), {mode}: "
                                     f"{exc}") from exc  # fmt: skip
            states += 1
    figure("operations recorded", len(ops))
    figure("crash states explored", states)
    figure("instances acknowledged", len(datas))
