"""DICOMweb latency through the ASGI app (httpx.ASGITransport: no sockets, one event loop).

- QIDO-RS study search by PatientID over an archive of STUDIES studies;
- WADO-RS series metadata of a SLICES-slice CT series (DICOM JSON from the
  metadata parts, never the pixels);
- WADO-RS frame fetch: one 512x512 16-bit frame of a native instance.

Each call's answer is checked. Run with ``pytest benchmarks/bench_web.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from engine import Archive, open_archive
from engine.synthetic import ct_series, encode, plan_study
from engine.web.app import create_app
from engine.web.settings import WebSettings

STUDIES = 200
SLICES = 200
BASE = "/dicom-web"


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    archive: Archive = open_archive(tmp_path_factory.mktemp("web") / "a", durability="none")
    patients = []
    for seed in range(STUDIES):
        ds = next(ct_series(seed, 1, rows=4, columns=4))
        archive.store(encode(ds))
        patients.append(ds.PatientID)
    big = list(ct_series(10_000, SLICES, rows=512, columns=512,
                         study=plan_study(np.random.default_rng(10_000))))  # fmt: skip
    for ds in big:
        archive.store(encode(ds))
    loop = asyncio.new_event_loop()
    transport = httpx.ASGITransport(app=create_app(archive, WebSettings()))
    client = httpx.AsyncClient(transport=transport,
                               base_url="http://bench")  # fmt: skip

    def get(url: str, **kw: Any) -> httpx.Response:
        return loop.run_until_complete(client.get(url, **kw))

    yield {"get": get, "patients": patients, "big": big}
    loop.run_until_complete(client.aclose())
    loop.close()
    archive.close()


def test_qido_study_search(benchmark: Any, web: dict[str, Any]) -> None:
    pid = web["patients"][STUDIES // 2]
    r = benchmark(web["get"], f"{BASE}/studies", params={"PatientID": pid})
    assert r.status_code == 200 and r.json()[0]["00100020"]["Value"] == [pid]


def test_wado_series_metadata(benchmark: Any, web: dict[str, Any]) -> None:
    ds = web["big"][0]
    url = f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata"
    r = benchmark(web["get"], url)
    assert len(r.json()) == SLICES
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["instances/s"] = SLICES / benchmark.stats.stats.mean


def test_wado_frame_fetch(benchmark: Any, web: dict[str, Any]) -> None:
    ds = web["big"][SLICES // 2]
    url = (f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}/frames/1")  # fmt: skip
    r = benchmark(web["get"], url)
    assert r.status_code == 200 and ds.PixelData in r.content
    if benchmark.stats:
        benchmark.extra_info["MB/s"] = len(ds.PixelData) / benchmark.stats.stats.mean / 1e6
