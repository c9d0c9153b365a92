"""Nothing a peer sends becomes a path: a traversal corpus (``../``, absolute paths, NUL bytes,
``%2e%2e``, backslashes, overlong UIDs) through DICOMweb URLs, WADO-URI parameters, UIDs in
stored data (STOW-RS, C-STORE) and `pacs export`. Every request gets 400 or 404 as
problem+json, no instance with such a UID is stored, and no file appears outside the archive.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from engine.archive import Archive
from engine.web.server import HttpServer, run_http
from tests._helpers import ROOT, small_ct
from tests.security._pki import Pki
from tests.security.conftest import TlsServer, client_context

MARK = "pwned-by-traversal"
OVERLONG = "1." * 40 + "1"  # 81 characters: PS3.5 9.1 allows 64
EVIL_UIDS = [f"../../../../../tmp/{MARK}", f"/tmp/{MARK}", f"1.2.3\x00/{MARK}",
             f"..\\..\\{MARK}", OVERLONG, "1.2.%2e%2e.3"]  # fmt: skip
URLS = [
    "/dicom-web/studies/../../../../etc/passwd",
    "/dicom-web/studies/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/dicom-web/studies/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/dicom-web/studies/%2e%2e%2f%2e%2e%2fetc%2fpasswd/metadata",
    "/dicom-web/studies/1.2.3%00.dcm",
    "/dicom-web/studies/%2Fetc%2Fpasswd",
    f"/dicom-web/studies/{OVERLONG}",
    "/dicom-web/studies/1.2.3\\..\\..\\windows",
    "/dicom-web/studies/1.2/series/..%5C..%5Cx/instances/1.4/frames/1",
    "/dicom-web/studies/1.2/series/1.3/instances/1.4/bulkdata/../../../../etc/passwd",
    "/dicom-web/studies/1.2/series/1.3/instances/1.4/bulkdata/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/dicom-web/studies/1.2/series/1.3/instances/%2Fetc%2Fpasswd/rendered",
    "/wado?requestType=WADO&studyUID=../../etc&seriesUID=1.2&objectUID=1.3"
    "&contentType=application/dicom",
    "/wado?requestType=WADO&studyUID=1.2&seriesUID=1.2&objectUID=%2Fetc%2Fpasswd",
    "/wado?requestType=WADO&studyUID=1.2%00&seriesUID=1.2&objectUID=1.3",
    f"/wado?requestType=WADO&studyUID=1.2&seriesUID=1.2&objectUID={OVERLONG}",
    "/dicom-web/wado?requestType=WADO&studyUID=..%5C..&seriesUID=1.2&objectUID=1.3",
]


def _tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HttpServer, Path]]:
    root = tmp_path_factory.mktemp("traversal")
    archive = Archive(root / "archive")
    stop = threading.Event()
    server = run_http(archive, "127.0.0.1", 0, stop)
    yield server, root
    stop.set()
    server.join(60)
    archive.close()


def _raw_get(port: int, url: str) -> tuple[int, str, bytes]:
    """http.client sends the path as written: no client-side dot-segment removal (httpx does)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest("GET", url, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.getheader("content-type", ""), r.read()
    finally:
        conn.close()


@pytest.mark.parametrize("url", URLS)
def test_traversal_urls_get_400_or_404(web: tuple[HttpServer, Path], url: str) -> None:
    server, root = web
    before = _tree(root)
    status, content_type, body = _raw_get(server.port, url)
    assert status in (400, 404), (url, status, body[:200])
    assert content_type == "application/problem+json"
    assert b"root:" not in body
    assert _tree(root) == before


def _multipart(data: bytes, boundary: str = "trav") -> tuple[bytes, dict[str, str]]:
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{boundary}--\r\n".encode())  # fmt: skip
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return body, {"Content-Type": ctype}


def _evil_instance(uid: str, keyword: str) -> bytes:
    ds = small_ct(abs(hash((uid, keyword))) % 10_000)
    with warnings.catch_warnings():  # pydicom warns about the invalid UI value: we mean it
        warnings.simplefilter("ignore", UserWarning)
        setattr(ds, keyword, uid)
        if keyword == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = uid
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
@pytest.mark.parametrize("uid", EVIL_UIDS, ids=range(len(EVIL_UIDS)))
def test_stow_of_traversal_uids_stores_nothing(web: tuple[HttpServer, Path], uid: str,
                                              keyword: str) -> None:  # fmt: skip
    server, root = web
    before = _tree(root)
    body, headers = _multipart(_evil_instance(uid, keyword))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("POST", "/dicom-web/studies", body=body, headers=headers)
        r = conn.getresponse()
        status, payload = r.status, r.read()
    finally:
        conn.close()
    assert status in (400, 409), (status, payload[:300])
    created = _tree(root) - before
    assert all(p.is_relative_to(root / "archive") for p in created), created
    assert not any(MARK in str(p) for p in created)
    assert not Path(f"/tmp/{MARK}").exists()


def test_c_store_of_traversal_study_uids_is_refused(secure_server: TlsServer, pki: Pki) -> None:
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", secure_server.port, ae_title="PACS",
                         tls_args=(client_context(pki), None))  # fmt: skip
    assert assoc.is_established
    statuses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom: the invalid UI values, on purpose
        # in the data set, not the command: pynetdicom checks the Affected SOP Instance UID
        for i, uid in enumerate(EVIL_UIDS):
            ds = small_ct(9000 + i)
            ds.StudyInstanceUID = uid
            statuses.append(int(assoc.send_c_store(ds).Status))
    assoc.release()
    assert all(s >= 0xA000 for s in statuses), [hex(s) for s in statuses]
    assert not any(MARK in str(p) for p in secure_server.archive.rglob("*"))
    assert not Path(f"/tmp/{MARK}").exists()


def test_pacs_export_names_files_by_uid_inside_dest(tmp_path: Path) -> None:
    archive_dir = tmp_path / "archive"
    with Archive(archive_dir) as archive:
        ds = small_ct(77)
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        archive.store(buf.getvalue())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    dest = tmp_path / "export"
    for selector in (f"../../{MARK}", f"/tmp/{MARK}", OVERLONG, ds.StudyInstanceUID):
        r = subprocess.run([sys.executable, "-m", "engine.cli", "-A", str(archive_dir), "export",
                            selector, str(dest)], capture_output=True, text=True, env=env,
                           timeout=120)  # fmt: skip
        expected = 0 if selector == ds.StudyInstanceUID else 2
        assert r.returncode == expected, r.stderr
    assert [p.name for p in dest.iterdir()] == [f"{ds.SOPInstanceUID}.dcm"]
    assert not any(MARK in str(p) for p in tmp_path.rglob("*"))
