"""What the audit trail costs a store: one record per C-STORE, STOW-RS instance or query.

``test_store_audited`` stores the session's CT series (durability ``none``, so
the disk's fsync does not drown the difference) with the audit trail on; each
round's setup first stores the same series with it off, timed by hand, as the
baseline of the same moment (the machine is shared: see bench_store.py), after
an untimed warm-up store of the series, as ours comes after the baseline. The
ratio prints at the end of the run ("baseline / ours": 0.98x means audit costs
2%). ``test_emit`` times one record alone.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from engine import audit, open_archive

ROUNDS = 10


def _store_series(root: Path, slices: list[bytes], audited: bool) -> float:
    archive = open_archive(root, durability="none")
    start = time.perf_counter()
    try:
        for data in slices:
            result = archive.store(data)
            if audited:
                audit.emit(audit.Event.INSTANCES_TRANSFERRED, user="MODALITY1",
                           address="10.0.0.12", study=result.study_instance_uid,
                           sop_instance_uid=result.sop_instance_uid)  # fmt: skip
        return time.perf_counter() - start
    finally:
        archive.close()


def test_store_audited(benchmark: Any, ct_slices: list[bytes], tmp_path: Path,
                       speedups: Any) -> None:  # fmt: skip
    trail = tmp_path / "audit.jsonl"
    audit.configure(audit.AuditSettings(str(trail)))
    baseline: list[float] = []
    rounds = iter(range(10**6))

    def setup() -> tuple[tuple[Path, list[bytes], bool], dict[str, Any]]:
        n = next(rounds)
        warm, plain, audited = (tmp_path / f"{k}{n}" for k in ("warm", "plain", "audited"))
        # an untimed run first: then the baseline, like ours, follows a store of the series
        _store_series(warm, ct_slices, audited=False)
        baseline.append(_store_series(plain, ct_slices, audited=False))
        shutil.rmtree(warm)
        shutil.rmtree(plain)
        return (audited, ct_slices, True), {}

    try:
        benchmark.pedantic(_store_series, setup=setup, rounds=ROUNDS, warmup_rounds=1)
    finally:
        audit.configure(None)
    lines = trail.read_text().splitlines()
    assert len(lines) == len(ct_slices) * len(baseline)  # one record per store, none lost
    if not benchmark.disabled:  # the first round is the warm-up's
        speedups.record("store CT series, audit trail on (none durability)", "ours", benchmark)
        speedups.record("store CT series, audit trail on (none durability)", "audit off",
                        baseline[1:])  # fmt: skip
    benchmark.extra_info["records"] = len(lines)


def test_emit(benchmark: Any, tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    audit.configure(audit.AuditSettings(str(trail)))
    try:
        benchmark(audit.emit, audit.Event.INSTANCES_TRANSFERRED, user="MODALITY1",
                  address="10.0.0.12", study="1.2.826.0.1.3680043.8.498.1",
                  sop_instance_uid="1.2.826.0.1.3680043.8.498.1.1.42")  # fmt: skip
    finally:
        audit.configure(None)
    assert trail.stat().st_size > 0
    benchmark.extra_info["record_bytes"] = len(trail.read_text().splitlines()[0]) + 1
