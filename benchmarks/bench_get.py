"""Read latency of one 512x512 CT slice: ``get`` and ``get_metadata`` against the naive archive.

Both archives hold the same instances (the session's CT series twice, the
second copy under other SOP Instance UIDs: a few hundred slices) and both
are read hot, from the page cache. Each call reads the next instance in
turn. The naive archive looks up the file's path in SQLite, then:

- ``read``: reads the file's bytes (what it sends for a retrieve; the
  counterpart of ``Archive.get``, which returns the Part 10 bytes);
- ``dcmread``: parses the file with pydicom (Pixel Data kept as bytes);
- ``dcmread_meta``: parses it with ``stop_before_pixels=True`` (the
  counterpart of ``Archive.get_metadata``).
"""

from __future__ import annotations

import io
import itertools
import shutil
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from naive_archive import NaiveArchive

from engine import Archive, open_archive

COPIES = 2
GET = "get one 512x512 CT slice"
META = "get_metadata of one 512x512 CT slice"


def _renamed(data: bytes, uid: str, copy: int) -> tuple[bytes, str]:
    """The same instance under another SOP Instance UID of the same length (lengths stay valid)."""
    if copy == 0:
        return data, uid
    new = uid[:-3] + f"{(int(uid[-3:]) + copy) % 1000:03d}"
    assert len(new) == len(uid) and new != uid and not new.split(".")[-1].startswith("0")
    return data.replace(uid.encode(), new.encode()), new


@pytest.fixture(scope="module")
def corpus(ct_slices: list[bytes]) -> list[tuple[bytes, str]]:
    out = []
    for data in ct_slices:
        uid = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
        out.extend(_renamed(data, uid, copy) for copy in range(COPIES))
    assert len({uid for _, uid in out}) == len(out)
    return out


@pytest.fixture(scope="module")
def ours(
    tmp_path_factory: pytest.TempPathFactory, corpus: list[tuple[bytes, str]]
) -> Iterator[Archive]:
    folder = tmp_path_factory.mktemp("get-ours")
    archive = open_archive(folder, durability="none")
    for data, _ in corpus:
        archive.store(data)
    assert archive.stats()["instances"] == len(corpus)
    yield archive
    archive.close()
    shutil.rmtree(folder)  # a few hundred MB; pytest keeps its last three temp dirs


@pytest.fixture(scope="module")
def naive(
    tmp_path_factory: pytest.TempPathFactory, corpus: list[tuple[bytes, str]]
) -> Iterator[NaiveArchive]:
    folder = tmp_path_factory.mktemp("get-naive")
    archive = NaiveArchive(folder, fsync=False)
    for data, _ in corpus:
        archive.store(data)
    assert archive.count() == len(corpus)
    yield archive
    archive.close()
    shutil.rmtree(folder)  # a few hundred MB; pytest keeps its last three temp dirs


def _cycling(corpus: list[tuple[bytes, str]]) -> Iterator[tuple[bytes, str]]:
    return itertools.cycle(corpus)


def _record(
    benchmark: Any, corpus: list[tuple[bytes, str]], speedups: Any, comparison: str, role: str
) -> None:
    size = len(corpus[0][0])
    benchmark.extra_info.update(instances=len(corpus), instance_bytes=size)
    if not benchmark.disabled:
        benchmark.extra_info["MB_per_s"] = round(size / benchmark.stats.stats.median / 1e6, 1)
    speedups.record(comparison, role, benchmark)


@pytest.mark.benchmark(group="get: whole instance")
def test_get_ours(
    benchmark: Any, ours: Archive, corpus: list[tuple[bytes, str]], speedups: Any
) -> None:
    it = _cycling(corpus)

    def one() -> tuple[bytes, bytes]:
        data, uid = next(it)
        return ours.get(uid), data

    got, expected = benchmark(one)
    assert got == expected  # byte for byte what was stored
    _record(benchmark, corpus, speedups, GET, "ours")


@pytest.mark.benchmark(group="get: whole instance")
def test_get_naive_read(
    benchmark: Any, naive: NaiveArchive, corpus: list[tuple[bytes, str]], speedups: Any
) -> None:
    it = _cycling(corpus)

    def one() -> tuple[bytes, str]:
        _, uid = next(it)
        return naive.get(uid), uid

    got, uid = benchmark(one)
    assert pydicom.dcmread(io.BytesIO(got), stop_before_pixels=True).SOPInstanceUID == uid
    _record(benchmark, corpus, speedups, GET, "naive file read")


@pytest.mark.benchmark(group="get: whole instance")
def test_get_naive_dcmread(
    benchmark: Any, naive: NaiveArchive, corpus: list[tuple[bytes, str]], speedups: Any
) -> None:
    it = _cycling(corpus)

    def one() -> tuple[pydicom.Dataset, str]:
        _, uid = next(it)
        return naive.read_dataset(uid), uid

    ds, uid = benchmark(one)
    assert ds.SOPInstanceUID == uid and len(ds.PixelData) == 512 * 512 * 2
    _record(benchmark, corpus, speedups, GET, "naive dcmread")


@pytest.mark.benchmark(group="get: metadata")
def test_get_metadata_ours(
    benchmark: Any, ours: Archive, corpus: list[tuple[bytes, str]], speedups: Any
) -> None:
    it = _cycling(corpus)

    def one() -> tuple[pydicom.Dataset, str]:
        _, uid = next(it)
        return ours.get_metadata(uid), uid

    ds, uid = benchmark(one)
    assert ds.SOPInstanceUID == uid and ds.Rows == 512 and "PixelData" not in ds
    _record(benchmark, corpus, speedups, META, "ours")


@pytest.mark.benchmark(group="get: metadata")
def test_get_metadata_naive_dcmread(
    benchmark: Any, naive: NaiveArchive, corpus: list[tuple[bytes, str]], speedups: Any
) -> None:
    it = _cycling(corpus)

    def one() -> tuple[pydicom.Dataset, str]:
        _, uid = next(it)
        return naive.read_dataset(uid, stop_before_pixels=True), uid

    ds, uid = benchmark(one)
    assert ds.SOPInstanceUID == uid and ds.Rows == 512 and "PixelData" not in ds
    _record(benchmark, corpus, speedups, META, "naive dcmread(no pixels)")
