"""Fixtures of the DICOMweb tests: an archive with a small CT study, the app, a live server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from engine.archive import Archive, open_archive
from engine.synthetic import ct_series, encode
from engine.web.app import create_app
from engine.web.server import HttpServer, run_http
from engine.web.settings import WebSettings

BASE = "/dicom-web"


def ct_study(seed: int, series: int, slices: int, size: int = 16) -> list[bytes]:
    """Encoded instances of one generated study with `series` series of `slices` slices."""
    import numpy as np

    from engine.synthetic import plan_study

    plan = plan_study(np.random.default_rng(seed))
    out = []
    for s in range(series):
        for ds in ct_series(seed * 100 + s, slices, rows=size, columns=size, study=plan):
            ds.SeriesNumber = s + 1
            out.append(encode(ds))
    return out


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    a = open_archive(tmp_path / "archive", durability="none")
    yield a
    a.close()


class Client:
    """A synchronous face on httpx.AsyncClient over httpx.ASGITransport (no sockets)."""

    def __init__(self, app: Any, base_url: str = "http://testserver") -> None:
        self.app, self.base_url = app, base_url

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url=self.base_url) as c:
                return await c.request(method, url, **kw)

        return anyio.run(go)

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)

    def options(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("OPTIONS", url, **kw)


@pytest.fixture
def client(archive: Archive) -> Client:
    return Client(create_app(archive, WebSettings()))


def make_client(archive: Archive, base_url: str = "http://testserver", **settings: Any) -> Client:
    return Client(create_app(archive, WebSettings(**settings)), base_url)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Archive, HttpServer]]:
    """A real uvicorn server on 127.0.0.1 over a module-wide archive."""
    a = open_archive(tmp_path_factory.mktemp("live") / "archive", durability="none")
    stop = threading.Event()
    server = run_http(a, "127.0.0.1", 0, stop, WebSettings())
    yield a, server
    stop.set()
    server.join(10)
    a.close()
