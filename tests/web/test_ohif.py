"""What OHIF's DICOMweb data source asks of the server, asked of a live one.

The requests are the ones OHIF v3 sends with the configuration below (its
``extensions/default/src/DicomWebDataSource``: ``qido.js`` mapParams and
processResults, ``retrieveMetadataLoaderAsync.js`` for
``enableStudyLazyLoad``, ``fixBulkDataURI.ts``; and the cornerstone
dicom-image-loader's WADO-RS frame request): same paths, parameters and
Accept headers, from a browser origin other than the server's. The
answers are checked for what OHIF reads from them, against the originals.
README.md's DICOMweb section carries the same configuration.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from engine.archive import Archive, open_archive
from engine.web.server import HttpServer, run_http
from engine.web.settings import WebSettings
from tests.web._util import corpus_instance, read, split_multipart
from tests.web.conftest import ct_study

ORIGIN = "http://localhost:3000"  # OHIF's development server: another origin than ours
JSON = "application/dicom+json"
FRAME_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
STUDY_LIST_FIELDS = "00081030,00080060,00080090,00100030"  # qido.js mapParams
SERIES_FIELDS = "0008103E,00080021"  # qido.js seriesInStudy

# What OHIF's display sets and the cornerstone image loader read from series metadata.
IMAGE_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
    "Rows", "Columns", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient",
    "FrameOfReferenceUID", "InstanceNumber", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation", "RescaleSlope",
    "RescaleIntercept", "WindowCenter", "WindowWidth", "SliceThickness", "SeriesNumber",
)  # fmt: skip
COMPRESSED = ("SC_rgb_jpeg_dcmtk.dcm", "emri_small_jpeg_2k_lossless.dcm")


def ohif_config(root: str) -> dict[str, Any]:
    """The data source configuration these tests check (as in README.md)."""
    return {
        "qidoRoot": root, "wadoRoot": root, "wadoUriRoot": root,
        "qidoSupportsIncludeField": True, "imageRendering": "wadors",
        "thumbnailRendering": "wadors", "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": True, "supportsWildcard": True,
        "omitQuotationForMultipartRequest": True,
        "bulkDataURI": {"enabled": True, "relativeResolution": "series"},
    }  # fmt: skip


@dataclass
class Viewer:
    http: httpx.Client
    config: dict[str, Any]
    ct: list[Dataset]
    compressed: dict[str, Dataset]


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Viewer]:
    archive: Archive = open_archive(tmp_path_factory.mktemp("ohif") / "a", durability="none")
    stop = threading.Event()
    server: HttpServer = run_http(archive, "127.0.0.1", 0, stop,
                                  WebSettings(cors_origins=(ORIGIN,)))  # fmt: skip
    ct = []
    for data in ct_study(31, 2, 3):
        archive.store(data)
        ct.append(read(data))
    compressed = {}
    for i, name in enumerate(COMPRESSED):
        data = corpus_instance(name, 900 + i)
        archive.store(data)
        compressed[name] = read(data)
    root = f"http://127.0.0.1:{server.port}/dicom-web"
    with httpx.Client(headers={"Origin": ORIGIN}, timeout=60) as http:
        yield Viewer(http, ohif_config(root), ct, compressed)
    stop.set()
    server.join(10)
    archive.close()


def _get(v: Viewer, url: str, accept: str = JSON, **params: Any) -> httpx.Response:
    r = v.http.get(url, params=params, headers={"Accept": accept})
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    return r


def _value(doc: dict[str, Any], tag: str) -> Any:
    values = doc[tag].get("Value")
    return values[0] if values else None


def test_study_list_has_what_the_worklist_shows(viewer: Viewer) -> None:
    ds = viewer.ct[0]
    surname = str(ds.PatientName).split("^")[0]
    params = {  # qido.js mapParams with supportsWildcard and supportsFuzzyMatching
        "PatientName": f"*{surname[1:-1]}*", "00100020": f"*{ds.PatientID[2:]}*",
        "limit": 101, "offset": 0, "fuzzymatching": "true", "includefield": STUDY_LIST_FIELDS,
        "StudyDate": f"{ds.StudyDate}-{ds.StudyDate}", "ModalitiesInStudy": "CT",
    }  # fmt: skip
    studies = _get(viewer, f"{viewer.config['qidoRoot']}/studies", **params).json()
    assert len(studies) == 1
    study = studies[0]
    assert _value(study, "0020000D") == ds.StudyInstanceUID
    assert _value(study, "00080020") == ds.StudyDate
    assert _value(study, "00080050") == ds.AccessionNumber
    assert _value(study, "00100020") == ds.PatientID
    assert _value(study, "00100010") == {"Alphabetic": str(ds.PatientName)}
    assert _value(study, "00201208") == len(viewer.ct)  # a JSON number: Number() of it
    assert "00080030" in study and "00100030" in study and "00081030" in study
    assert "00080090" in study
    modalities = study.get("00080061", study.get("00080060", {})).get("Value")
    assert modalities == ["CT"]


def test_series_list_has_what_the_study_browser_shows(viewer: Viewer) -> None:
    ds = viewer.ct[0]
    url = f"{viewer.config['qidoRoot']}/studies/{ds.StudyInstanceUID}/series"
    series = _get(viewer, url, includefield=SERIES_FIELDS).json()
    assert len(series) == 2
    for s in series:
        for tag in ("0020000D", "0020000E", "00080060", "00200011", "00080021", "00201209"):
            assert tag in s, tag
        assert _value(s, "00201209") == 3
    # enableStudyLazyLoad: the preloader's search names the series it opens first
    one = _get(viewer, url, SeriesInstanceUID=ds.SeriesInstanceUID).json()
    assert [_value(s, "0020000E") for s in one] == [ds.SeriesInstanceUID]


def test_series_metadata_has_what_display_sets_and_the_loader_need(viewer: Viewer) -> None:
    ds = viewer.ct[0]
    root = viewer.config["wadoRoot"]
    url = f"{root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata"
    docs = _get(viewer, url).json()
    originals = {
        o.SOPInstanceUID: o for o in viewer.ct if o.SeriesInstanceUID == ds.SeriesInstanceUID
    }
    assert {_value(d, "00080018") for d in docs} == set(originals)
    for doc in docs:
        original = originals[_value(doc, "00080018")]
        for keyword in IMAGE_KEYWORDS:
            elem = original[keyword]
            tag = f"{int(elem.tag):08X}"
            assert doc[tag]["vr"] == elem.VR, keyword
            want = list(elem.value) if elem.VM > 1 else [elem.value]
            assert doc[tag]["Value"] == [_plain(v) for v in want], keyword
        pixel = doc["7FE00010"]
        assert pixel["vr"] == "OW" and "Value" not in pixel and "InlineBinary" not in pixel
        # fixBulkDataURI leaves an absolute http URI as it is: it must work as given
        assert pixel["BulkDataURI"].startswith(root)
        r = _get(viewer, pixel["BulkDataURI"], accept=FRAME_ACCEPT)
        parts = split_multipart(r.content, r.headers["content-type"])
        assert [body for _, body in parts] == [original.PixelData]


def _plain(v: Any) -> Any:
    """A pydicom value as DICOM JSON carries it: IS/DS as numbers, UIDs and text as str."""
    if type(v).__name__ in ("IS",):
        return int(v)
    if type(v).__name__ in ("DSfloat", "DSdecimal"):
        return float(v)
    return v if isinstance(v, int | float) else str(v)


@pytest.mark.parametrize("name", ["ct", *COMPRESSED])
def test_frames_with_the_image_loader_accept_header(viewer: Viewer, name: str) -> None:
    ds = viewer.ct[1] if name == "ct" else viewer.compressed[name]
    n = int(ds.get("NumberOfFrames", 1))
    url = (f"{viewer.config['wadoRoot']}/studies/{ds.StudyInstanceUID}/series/"
           f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/{n}")  # fmt: skip
    r = _get(viewer, url, accept=FRAME_ACCEPT)
    assert r.headers["content-type"].startswith("multipart/related")
    [(headers, body)] = split_multipart(r.content, r.headers["content-type"])
    syntax = str(ds.file_meta.TransferSyntaxUID)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={syntax}"
    if name == "ct":
        assert body == ds.PixelData
    else:  # as stored: the loader decodes the bitstream itself
        frames = list(generate_frames(ds.PixelData, number_of_frames=n))
        assert body.rstrip(b"\0") == frames[n - 1].rstrip(b"\0")


def test_cors_preflight_from_the_viewer_origin(viewer: Viewer) -> None:
    ds = viewer.ct[0]
    url = f"{viewer.config['wadoRoot']}/studies/{ds.StudyInstanceUID}/metadata"
    preflight = {"Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "accept,authorization"}  # fmt: skip
    r = viewer.http.options(url, headers=preflight)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "GET" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    other = viewer.http.options(url, headers={**preflight, "Origin": "http://elsewhere.test"})
    assert other.headers.get("access-control-allow-origin") != "http://elsewhere.test"


@pytest.mark.parametrize("rendering", ["thumbnail", "rendered"])
def test_thumbnail_renderings_other_than_wadors(viewer: Viewer, rendering: str) -> None:
    """thumbnailRendering 'thumbnail' or 'rendered' with thumbnailRequestStrategy 'fetch'."""
    ds = viewer.ct[0]
    url = f"{_series_url(viewer, ds)}/{rendering}" if rendering == "thumbnail" else (
        f"{_series_url(viewer, ds)}/instances/{ds.SOPInstanceUID}/rendered")  # fmt: skip
    r = _get(viewer, url, accept="image/jpeg", viewport="256,256")
    assert r.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(r.content))
    assert image.format == "JPEG" and max(image.size) <= 256


def _series_url(viewer: Viewer, ds: Dataset) -> str:
    return (
        f"{viewer.config['wadoRoot']}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    )
