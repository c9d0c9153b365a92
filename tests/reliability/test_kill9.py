"""SIGKILL of the whole server (supervisor and workers) during ingest loses nothing acknowledged.

Each round starts ``pacs serve`` on the same archive, has three pynetdicom
associations and a DCMTK storescu store generated CT instances, and SIGKILLs the whole process
group: at a random moment, or when a worker reaches a named point of the
write path and kills itself (the point is installed by the test hook on the
server's PYTHONPATH, see ``_crash.py``). Then the archive is opened as the
next server would open it, and: every instance whose C-STORE response said
success is there, bit-exact; every other instance sent is absent or whole;
``verify`` is clean.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.errors import NotFoundError
from tests._helpers import ROOT
from tests.reliability._crash import SERVER_CRASH_POINTS, crash_env
from tests.reliability._server import (
    KillableServer,
    Score,
    _is_zombie,
    send_until_stopped,
    storescu_until_killed,
)
from tests.reliability.conftest import scaled

SENDERS = 3  # pynetdicom associations, plus one DCMTK storescu
DCMTK_FILES = 30
LANES = 2  # archives killed side by side: a round is mostly server start-up
ROUNDS = int(os.environ.get("KILL9_ROUNDS", 0)) or scaled(100, 500)
WORKER_DEATH_TIMEOUT_S = 60.0


def dataset_part(part10: bytes) -> bytes:
    """The data set of a Part 10 file, after its File Meta Information."""
    # PS3.10 7.1: preamble, DICM, then (0002,0000) UL group length, explicit VR LE
    assert part10[128:136] == b"DICM\x02\x00\x00\x00", "no File Meta group length"
    group_len = int.from_bytes(part10[140:144], "little")
    return part10[144 + group_len :]


def check_after_crash(archive_path: Path, score: Score) -> tuple[int, float]:
    """Open (recovering) and check every instance sent; return (acked lost, recovery seconds)."""
    t0 = time.perf_counter()
    archive = engine.open_archive(archive_path)
    seconds = time.perf_counter() - t0
    lost = 0
    try:
        for uid, data in score.sent.items():
            try:
                got = dataset_part(archive.get(uid))
            except NotFoundError:
                lost += uid in score.acked
                continue
            what = "acknowledged" if uid in score.acked else "unacknowledged"
            assert got == data, f"{what} {uid} came back different"
        report = archive.verify()
        assert report.ok, report.problems
        assert archive.stats()["instances"] == report.instances
    finally:
        archive.close()
    return lost, seconds


def _wait_for_a_worker_death(srv: KillableServer, workers: list[int]) -> None:
    deadline = time.monotonic() + WORKER_DEATH_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(_is_zombie(pid) for pid in workers):
            return
        time.sleep(0.005)
    raise AssertionError(f"no worker reached its crash point:\n{srv.log()[-3000:]}")


def _ingest_then_kill(srv: KillableServer, r: int, score: Score, point: str | None,
                      rng: random.Random) -> None:  # fmt: skip
    workers = srv.worker_pids()
    stop = threading.Event()
    senders = [
        threading.Thread(target=send_until_stopped, args=(
            srv.port, range(r * 100_000 + i * 10_000, r * 100_000 + (i + 1) * 10_000),
            score, stop))
        for i in range(SENDERS)
    ]  # fmt: skip
    folder = srv.archive.parent / f"round-{r}"
    folder.mkdir()
    senders.append(
        threading.Thread(
            target=storescu_until_killed,
            args=(
                srv.port,
                folder,
                range(r * 100_000 + 90_000, r * 100_000 + 90_000 + DCMTK_FILES),
                score,
            ),
        )
    )
    for t in senders:
        t.start()
    try:
        if point:
            _wait_for_a_worker_death(srv, workers)
        else:
            time.sleep(rng.uniform(0.02, 0.5))
        srv.kill()
    finally:
        stop.set()
        score.wake_senders()
        for t in senders:
            t.join(60)
        score.associations.clear()
    assert not any(t.is_alive() for t in senders), "a sender hung on a dead server"


def _percentile(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


@dataclass
class Lane:
    """One archive killed round after round; lanes run side by side (start-up is the cost)."""

    archive: Path
    seed: int
    score: Score = field(default_factory=Score)
    recoveries: list[float] = field(default_factory=list)
    restarts: list[float] = field(default_factory=list)
    kills: int = 0
    named: int = 0
    lost: int = 0
    error: BaseException | None = None

    def run(self, rounds: range) -> None:
        try:
            self._run(rounds)
        except BaseException as exc:  # noqa: BLE001 -- re-raised by the test
            self.error = exc

    def _run(self, rounds: range) -> None:
        rng = random.Random(self.seed)
        for r in rounds:
            # every other round dies at a named point, the others at a random moment
            point = SERVER_CRASH_POINTS[(r // 2) % len(SERVER_CRASH_POINTS)] if r % 2 else None
            env = crash_env(point, rng.randint(1, 6)) if point else {}
            t0 = time.perf_counter()
            srv = KillableServer(self.archive.parent, workers=2 if r % 10 == 0 else 1,
                                 archive=self.archive, env=env)  # fmt: skip
            srv.start()
            self.restarts.append(time.perf_counter() - t0)
            try:
                _ingest_then_kill(srv, r, self.score, point, rng)
            finally:
                srv.kill()  # a no-op when the round killed it already
            self.kills += 1
            self.named += point is not None
            assert not self.score.errors, self.score.errors
            n, seconds = check_after_crash(self.archive, self.score)
            self.lost += n
            self.recoveries.append(seconds)


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_sigkill_of_the_whole_server_loses_no_acknowledged_instance(
    tmp_path: Path, figure: Callable[[str, Any], None]
) -> None:
    seed = int(os.environ.get("ENGINE_CRASH_SEED", "7001"))
    lanes = [Lane(tmp_path / f"lane{i}" / "archive", seed + i) for i in range(LANES)]
    threads = [
        threading.Thread(target=lane.run, args=(range(i * 100_000, i * 100_000 + ROUNDS // LANES),))
        for i, lane in enumerate(lanes)
    ]
    for lane in lanes:
        lane.archive.parent.mkdir()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for lane in lanes:
        if lane.error is not None:
            raise lane.error
        done = subprocess.run([sys.executable, "-m", "engine.cli", "-A", str(lane.archive),
                               "verify"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    recoveries = [x for lane in lanes for x in lane.recoveries]
    restarts = [x for lane in lanes for x in lane.restarts]
    acked = sum(len(lane.score.acked) for lane in lanes)
    lost = sum(lane.lost for lane in lanes)
    figure("kills", sum(lane.kills for lane in lanes))
    figure("kills at named points", sum(lane.named for lane in lanes))
    figure("acked", acked)
    figure("acked by DCMTK storescu", sum(lane.score.acked_by_dcmtk for lane in lanes))
    figure("unacked sent", sum(len(lane.score.sent) for lane in lanes) - acked)
    figure("acked lost", lost)
    figure("recovery p50 ms", round(1000 * statistics.median(recoveries), 1))
    figure("recovery p99 ms", round(1000 * _percentile(recoveries, 0.99), 1))
    figure("restart to listening p50 s", round(statistics.median(restarts), 2))
    figure("restart to listening p99 s", round(_percentile(restarts, 0.99), 2))
    assert sum(lane.kills for lane in lanes) >= ROUNDS - ROUNDS % LANES
    assert lost == 0
    assert acked > ROUNDS, "too few stores were acknowledged: the kills came too early"


_STUCK_WRITER = r"""
import os, sys, time
import engine
from engine import writer
from tests._helpers import read

def flush(self, batch):  # fsync the batch, then hang before its index commit
    for p in batch:
        p.writer.sync()
    os.write(1, b"synced\n")
    time.sleep(3600)

writer.WritePath._flush = flush
archive = engine.open_archive(sys.argv[1])
archive.store(bytes.fromhex(sys.stdin.readline()))
"""


def test_replaying_a_crashed_writers_tail_does_not_bring_back_a_uid_deleted_after_it(
    tmp_path: Path,
) -> None:
    """Regression: a tombstone of another writer was known only while its segment was replayed."""
    from tests._helpers import small_ct_bytes

    older = small_ct_bytes(77)
    with engine.open_archive(tmp_path) as archive:
        uid = archive.store(older).sop_instance_uid
    newer = bytearray(older)
    newer[-1] ^= 0xFF  # the same SOP Instance UID, stored again by writer A...
    with subprocess.Popen([sys.executable, "-c", _STUCK_WRITER, str(tmp_path)], cwd=ROOT,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          env=dict(os.environ, PYTHONPATH=str(ROOT))) as a:  # fmt: skip
        try:
            assert a.stdin is not None and a.stdout is not None
            a.stdin.write(bytes(newer).hex().encode() + b"\n")
            a.stdin.flush()
            assert a.stdout.readline() == b"synced\n"  # ...durable in A's segment, not indexed
            with engine.open_archive(tmp_path) as archive:  # writer B deletes it after that
                assert archive.delete(sop_instance_uid=uid) == 1
        finally:
            a.kill()  # A dies before its index commit
            a.wait(30)
    with engine.open_archive(tmp_path) as archive:  # A's tail is replayed now
        assert archive.recovery.records_replayed >= 1
        with pytest.raises(NotFoundError):
            archive.get(uid)
        assert archive.verify().ok
