"""Store throughput: a CT series of 512x512 16-bit slices into a fresh archive per round.

Ours (``Archive.store``) against the naive archive (pydicom parse + dcmwrite
+ one SQLite row per instance, see naive_archive.py), at the same durability:
``fsync`` against fsync + ``synchronous=FULL``, ``none`` against neither.
Both also run with 4 threads storing at once (what group commit is for; the
naive archive gets a SQLite connection per thread).

Each round stores the session's CT_SLICES encoded slices into a fresh
archive, made in the round's setup, checked and removed in its teardown.
The two are interleaved: the naive archive's round runs (timed by hand) in
the setup, just before each of ours (timed by pytest-benchmark), because on
a shared machine the cost of an fsync drifts several-fold within a minute,
and two benchmarks run a minute apart would compare the disk, not the code.
The naive figures are in ``extra_info`` and in the end-of-run speed-ups.
"""

from __future__ import annotations

import io
import itertools
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from naive_archive import NaiveArchive

from engine import Archive, open_archive

ROUNDS = 5
WARMUP_ROUNDS = 1
THREAD_COUNTS = (1, 4)


def _store_all(store: Callable[[bytes], Any], slices: list[bytes], threads: int) -> None:
    if threads == 1:
        for data in slices:
            store(data)
        return
    errors: list[BaseException] = []

    def work(part: list[bytes]) -> None:
        try:
            for data in part:
                store(data)
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the calling thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(slices[i::threads],)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if errors:
        raise errors[0]


@pytest.fixture(scope="module")
def slice_uids(ct_slices: list[bytes]) -> list[str]:
    return [
        str(pydicom.dcmread(io.BytesIO(b), stop_before_pixels=True).SOPInstanceUID)
        for b in ct_slices
    ]


def _rate(benchmark: Any, prefix: str, slices: list[bytes], seconds: float) -> None:
    benchmark.extra_info[f"{prefix}instances_per_s"] = round(len(slices) / seconds, 1)
    benchmark.extra_info[f"{prefix}MB_per_s"] = round(sum(map(len, slices)) / seconds / 1e6, 1)


@pytest.mark.parametrize("threads", THREAD_COUNTS)
@pytest.mark.parametrize("durability", ["fsync", "none"])
def test_store(
    benchmark: Any,
    tmp_path: Path,
    ct_slices: list[bytes],
    slice_uids: list[str],
    speedups: Any,
    durability: str,
    threads: int,
) -> None:
    benchmark.group = f"store durability={durability}"
    k = len(ct_slices) // 2
    pixels = pydicom.dcmread(io.BytesIO(ct_slices[k])).PixelData
    folders = (tmp_path / f"round{n}" for n in itertools.count())
    naive_seconds: list[float] = []
    checked = []

    def naive_round(folder: Path) -> None:
        naive = NaiveArchive(folder, fsync=durability == "fsync")
        start = time.perf_counter()
        _store_all(naive.store, ct_slices, threads)
        naive_seconds.append(time.perf_counter() - start)
        assert naive.count() == len(ct_slices)
        ds = naive.read_dataset(slice_uids[k])
        assert ds.SOPInstanceUID == slice_uids[k] and ds.PixelData == pixels
        naive.close()
        shutil.rmtree(folder)

    def setup() -> tuple[tuple[Archive, Path], dict[str, Any]]:
        folder = next(folders)
        naive_round(folder / "naive")
        return (open_archive(folder / "ours", durability=durability), folder), {}

    def run(archive: Archive, folder: Path) -> tuple[Archive, Path]:
        _store_all(archive.store, ct_slices, threads)
        return archive, folder

    def teardown(archive: Archive, folder: Path) -> None:
        stats = archive.stats()
        assert stats["instances"] == len(ct_slices), stats
        assert archive.get(slice_uids[k]) == ct_slices[k]  # stored byte for byte
        checked.append(folder)
        archive.close()
        shutil.rmtree(folder)

    result = benchmark.pedantic(
        run, setup=setup, teardown=teardown, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS
    )
    if benchmark.disabled:  # --benchmark-disable: one untimed call, no teardown
        teardown(*result)
    assert checked  # every round, the warm-up included, is checked in its teardown
    benchmark.extra_info["batch"] = len(ct_slices)
    if benchmark.disabled:
        return
    ours = benchmark.stats.stats.median
    naive = statistics.median(naive_seconds[WARMUP_ROUNDS:])
    _rate(benchmark, "", ct_slices, ours)
    _rate(benchmark, "naive_", ct_slices, naive)
    benchmark.extra_info["speedup_vs_naive"] = round(naive / ours, 2)
    comparison = f"store {len(ct_slices)} CT slices, {durability}, {threads} thread(s)"
    speedups.record(comparison, "ours", benchmark)
    speedups.record(comparison, "naive (interleaved)", naive_seconds[WARMUP_ROUNDS:])
