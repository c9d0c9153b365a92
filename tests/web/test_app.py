"""The application as a whole: URLs handed out, CORS, gzip, the error table, unknown routes."""

from __future__ import annotations

import gzip
import logging
from typing import Any

import pytest

from engine import errors as E
from engine.archive import Archive
from engine.web.errors import STATUS_TABLE, translate
from engine.web.settings import WebSettings
from tests.web._util import read
from tests.web.conftest import BASE, ct_study, make_client


@pytest.fixture
def ds(archive: Archive) -> Any:
    data = ct_study(12, 1, 1)[0]
    archive.store(data)
    return read(data)


def retrieve_url(
    archive: Archive, base_url: str = "http://testserver", headers: Any = None, **settings: Any
) -> str:
    r = make_client(archive, base_url, **settings).get(f"{BASE}/studies", headers=headers or {})
    return str(r.json()[0]["00081190"]["Value"][0])


def test_urls_from_public_base_url_host_and_forwarded_headers(archive: Archive, ds: Any) -> None:
    study = ds.StudyInstanceUID
    assert retrieve_url(archive) == f"http://testserver{BASE}/studies/{study}"
    public = "https://pacs.example.org/dw"
    assert retrieve_url(archive, public_base_url=public) == f"{public}/studies/{study}"
    fwd = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "proxy.example",
        "X-Forwarded-Prefix": "/pacs",
    }
    assert retrieve_url(archive, headers=fwd) == f"http://testserver{BASE}/studies/{study}"
    assert (
        retrieve_url(archive, headers=fwd, trust_forwarded=True)
        == f"https://proxy.example/pacs{BASE}/studies/{study}"
    )


def test_a_host_without_port_gets_the_server_port(archive: Archive, ds: Any) -> None:
    from starlette.requests import Request

    from engine.web.app import create_app
    from engine.web.context import WebContext

    ctx = create_app(archive, WebSettings()).state.ctx
    assert isinstance(ctx, WebContext)
    scope = {
        "type": "http",
        "scheme": "http",
        "server": ("127.0.0.1", 8042),
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "path": "/",
        "query_string": b"",
    }
    assert ctx.base_url(Request(scope)) == f"http://127.0.0.1:8042{BASE}"
    scope["headers"] = [(b"host", b"127.0.0.1:9000")]
    assert ctx.base_url(Request(scope)) == f"http://127.0.0.1:9000{BASE}"


def test_cors_preflight_and_simple_request(archive: Archive, ds: Any) -> None:
    c = make_client(archive, cors_origins=("https://viewer.example",))
    r = c.options(
        f"{BASE}/studies",
        headers={
            "Origin": "https://viewer.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://viewer.example"
    r = c.get(f"{BASE}/studies", headers={"Origin": "https://viewer.example"})
    assert r.headers["access-control-allow-origin"] == "https://viewer.example"
    plain = make_client(archive)
    r = plain.get(f"{BASE}/studies", headers={"Origin": "https://viewer.example"})
    assert "access-control-allow-origin" not in r.headers


def test_json_is_gzipped_and_dicom_is_not(archive: Archive, ds: Any) -> None:
    c = make_client(archive, gzip_min_bytes=100)
    r = c.get(f"{BASE}/studies/{ds.StudyInstanceUID}/metadata", headers={"Accept-Encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip" and r.json()[0]["00080018"]
    r = c.get(f"{BASE}/studies/{ds.StudyInstanceUID}", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in r.headers
    assert gzip.compress(b"x")  # the module is what httpx used to decode above


def test_unknown_route_and_method_are_problems(archive: Archive) -> None:
    c = make_client(archive)
    r = c.get(f"{BASE}/nothing/here")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    r = c.request("DELETE", f"{BASE}/studies")
    assert r.status_code == 405 and r.json()["status"] == 405


@pytest.mark.parametrize(("exc", "status"), [
    (E.NotFoundError("x"), 404), (E.InvalidQueryError("x"), 400), (E.NotDicomError("x"), 415),
    (E.StorageFullError("disk full"), 507), (E.StorageIOError("x"), 503),
    (E.UnsupportedTransferSyntaxError("1.2"), 406), (E.MalformedDicomError(3, "x"), 400),
    (E.CorruptRecordError("1", 0, "x"), 500), (E.DuplicateInstanceError("x"), 409),
])  # fmt: skip
def test_status_table(exc: Exception, status: int) -> None:
    assert translate(exc).status == status
    assert type(exc) in STATUS_TABLE or any(c in STATUS_TABLE for c in type(exc).__mro__)


def test_full_disk_on_store_is_507_and_logged(
    archive: Archive, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.web._util import multipart

    def full(*a: Any, **k: Any) -> Any:
        raise E.StorageFullError("no space left on device: free space and retry")

    monkeypatch.setattr(archive, "get", full)
    data = ct_study(13, 1, 1)[0]
    archive.store(data)
    ds = read(data)
    c = make_client(archive)
    with caplog.at_level(logging.INFO, logger="engine.web"):
        r = c.get(
            f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}",
            headers={"Accept": "application/dicom"},
        )
    assert r.status_code == 507 and "free space" in r.json()["detail"]
    assert any("507" in rec.getMessage() for rec in caplog.records)
    monkeypatch.setattr(archive, "submit", full)
    body, ctype = multipart([("application/dicom", ct_study(14, 1, 1)[0])])
    r = c.post(f"{BASE}/studies", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 409
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]


def test_settings_from_the_web_table() -> None:
    s = WebSettings.from_mapping({"public_base_url": "https://x/dw/", "cors_origins": "*"})
    assert s.public_base_url == "https://x/dw" and s.cors_origins == ("*",)
    with pytest.raises(ValueError, match=r"web\.nope"):
        WebSettings.from_mapping({"nope": 1})


def test_an_unexpected_error_is_a_generic_500_with_the_traceback_logged(
    archive: Archive, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import anyio
    import httpx

    from engine.web.app import UNEXPECTED_DETAIL, create_app

    def broken(*a: Any, **k: Any) -> Any:
        raise RuntimeError("secret at /srv/pacs/internal.py")

    monkeypatch.setattr(archive, "find_attrs", broken)
    app = create_app(archive, WebSettings())

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await c.get(f"{BASE}/studies")

    with caplog.at_level(logging.ERROR, logger="engine.web"):
        r = anyio.run(go)
    assert r.status_code == 500 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == UNEXPECTED_DETAIL
    assert "secret" not in r.text and "RuntimeError" not in r.text
    assert any(rec.exc_info and isinstance(rec.exc_info[1], RuntimeError)
               for rec in caplog.records)  # fmt: skip
