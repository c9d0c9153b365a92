"""Orthanc's own DICOMweb client pushes a study to us with STOW-RS (issue 15).

Orthanc's DICOMweb plugin sends a multipart boundary longer than RFC 2046's
70 characters; we answered 400 and Orthanc could push nothing. Here the real
Orthanc (benchmarks/peers.py starts it) takes pydicom's test files and a
generated CT series, then sends them to our `pacs serve`, configured as one
of its DICOMweb servers; every instance must arrive byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import peers
import pytest
from pydicom.data import get_testdata_file

from tests._helpers import assert_same_instance, read, small_ct_bytes
from tests.net._support import Server
from tests.web._util import split_multipart

FILES = ("CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm", "US1_J2KR.dcm")
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture
def ours(tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "ours").mkdir()
    server = Server(tmp_path / "ours", workers=1, http=True).start()
    yield server
    assert server.stop() == 0, server.log()


def _corpus() -> list[bytes]:
    files = [Path(str(get_testdata_file(name))).read_bytes() for name in FILES]
    return files + [small_ct_bytes(9100 + i) for i in range(3)]


def test_orthanc_pushes_instances_to_us_over_stow_rs(tmp_path: Path, ours: Server) -> None:
    sent = _corpus()
    with peers.running("orthanc", tmp_path) as orthanc, httpx.Client(timeout=120) as http:
        rest = orthanc.rest_url
        ids = [http.post(f"{rest}/instances", content=b).raise_for_status().json()["ID"]
               for b in sent]  # fmt: skip
        http.put(f"{rest}/dicom-web/servers/pacs",
                 json={"Url": f"http://127.0.0.1:{ours.http_port}/dicom-web/"}
                 ).raise_for_status()  # fmt: skip
        push = http.post(f"{rest}/dicom-web/servers/pacs/stow",
                         json={"Resources": ids, "Synchronous": True})  # fmt: skip
        assert push.status_code == 200, (push.text, orthanc.log_tail(), ours.log())
    web = f"http://127.0.0.1:{ours.http_port}/dicom-web"
    for data in sent:
        ds = read(data)
        url = (f"{web}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
               f"/instances/{ds.SOPInstanceUID}")  # fmt: skip
        got = httpx.get(url, headers={"Accept": AS_STORED}, timeout=60)
        assert got.status_code == 200, (ds.SOPInstanceUID, got.text)
        [(_, body)] = split_multipart(got.content, got.headers["content-type"])
        assert_same_instance(data, body)
