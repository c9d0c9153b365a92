"""WADO-URI (PS3.18 9) through the ASGI app."""

from __future__ import annotations

import io
from typing import Any

import pytest

from engine.archive import Archive
from tests.web._util import corpus_instance, read
from tests.web.conftest import BASE, Client, ct_study


@pytest.fixture
def inst(archive: Archive) -> Any:
    data = ct_study(11, 1, 1)[0]
    archive.store(data)
    return read(data)


def params(ds: Any, **extra: str) -> dict[str, str]:
    return {
        "requestType": "WADO",
        "studyUID": ds.StudyInstanceUID,
        "seriesUID": ds.SeriesInstanceUID,
        "objectUID": ds.SOPInstanceUID,
        **extra,
    }


@pytest.mark.parametrize("prefix", ["", BASE])
def test_application_dicom(client: Client, inst: Any, prefix: str) -> None:
    r = client.get(f"{prefix}/wado", params=params(inst, contentType="application/dicom"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    assert read(r.content).PixelData == inst.PixelData


def test_jpeg_is_the_default(client: Client, inst: Any) -> None:
    from PIL import Image

    r = client.get("/wado", params=params(inst, windowCenter="40", windowWidth="400"))
    assert r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (16, 16)


def test_transfer_syntax_conversion(client: Client, archive: Archive) -> None:
    data = corpus_instance("JPEG-LL.dcm", 3)
    archive.store(data)
    ds = read(data)
    r = client.get(
        "/wado",
        params=params(ds, contentType="application/dicom", transferSyntax="1.2.840.10008.1.2.1"),
    )
    assert read(r.content).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    r = client.get(
        "/wado",
        params=params(ds, contentType="application/dicom", transferSyntax="1.2.840.10008.1.2.4.90"),
    )
    assert r.status_code == 406


@pytest.mark.parametrize(("change", "status"), [
    ({"requestType": "XYZ"}, 400), ({"objectUID": ""}, 400), ({"objectUID": "1.2.3"}, 404),
    ({"studyUID": "1.2.3"}, 404), ({"contentType": "text/html"}, 406), ({"frameNumber": "0"}, 400),
])  # fmt: skip
def test_errors(client: Client, inst: Any, change: dict, status: int) -> None:
    r = client.get("/wado", params={**params(inst), **change})
    assert r.status_code == status and r.json()["status"] == status
