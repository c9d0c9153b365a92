"""dicomweb-client, a client we did not write, against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import io
import warnings
from typing import Any

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.encaps import generate_frames

from engine.archive import Archive
from engine.web.server import HttpServer
from tests.web._util import FRAME_FILES, corpus_instance, read
from tests.web.conftest import ct_study


@pytest.fixture(scope="module")
def dw(live: tuple[Archive, HttpServer]) -> DICOMwebClient:
    _, server = live
    return DICOMwebClient(f"http://127.0.0.1:{server.port}/dicom-web")


@pytest.fixture(scope="module")
def stored(live: tuple[Archive, HttpServer], dw: DICOMwebClient) -> dict[str, Any]:
    """A generated CT study through STOW-RS, and the corpus files through Archive.store."""
    archive, _ = live
    ct = [read(b) for b in ct_study(7, 2, 4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dw.store_instances(ct)
    files = {}
    for i, name in enumerate(FRAME_FILES):
        data = corpus_instance(name, i)
        archive.store(data)
        files[name] = read(data)
    return {"ct": ct, "files": files}


def test_store_instances_then_retrieve_study_is_bit_exact(dw: DICOMwebClient, stored: dict) -> None:
    ct = stored["ct"]
    got = {ds.SOPInstanceUID: ds for ds in dw.retrieve_study(ct[0].StudyInstanceUID)}
    assert set(got) == {ds.SOPInstanceUID for ds in ct}
    for ds in ct:
        assert got[ds.SOPInstanceUID].PixelData == ds.PixelData
        assert got[ds.SOPInstanceUID].PatientName == ds.PatientName


def test_search_for_studies_series_instances_equal_the_files(
    dw: DICOMwebClient, stored: dict
) -> None:
    ct = stored["ct"]
    study = ct[0].StudyInstanceUID
    studies = dw.search_for_studies(search_filters={"PatientID": ct[0].PatientID})
    assert len(studies) == 1
    s = pydicom.Dataset.from_json(studies[0])
    assert s.StudyInstanceUID == study and s.PatientName == ct[0].PatientName
    assert s.NumberOfStudyRelatedSeries == 2 and s.NumberOfStudyRelatedInstances == 8
    series = dw.search_for_series(study)
    assert {x["0020000E"]["Value"][0] for x in series} == {ds.SeriesInstanceUID for ds in ct}
    instances = dw.search_for_instances(study, ct[0].SeriesInstanceUID)
    assert {x["00080018"]["Value"][0] for x in instances} == {
        ds.SOPInstanceUID for ds in ct if ds.SeriesInstanceUID == ct[0].SeriesInstanceUID
    }
    wildcard = dw.search_for_studies(
        search_filters={"PatientName": str(ct[0].PatientName)[:3] + "*"}
    )
    assert study in {x["0020000D"]["Value"][0] for x in wildcard}


def test_search_paging_with_offset_and_limit(dw: DICOMwebClient, stored: dict) -> None:
    everything = dw.search_for_instances()
    page1 = dw.search_for_instances(limit=3, offset=0)
    page2 = dw.search_for_instances(limit=3, offset=3)
    uids = [x["00080018"]["Value"][0] for x in everything]
    assert [x["00080018"]["Value"][0] for x in page1 + page2] == uids[:6]


def test_retrieve_series_and_instance_metadata(dw: DICOMwebClient, stored: dict) -> None:
    ds = stored["ct"][0]
    metas = dw.retrieve_series_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert len(metas) == 4
    meta = dw.retrieve_instance_metadata(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    assert meta["7FE00010"]["BulkDataURI"].endswith("/bulkdata/7FE00010")
    back = pydicom.Dataset.from_json({k: v for k, v in meta.items() if k != "7FE00010"})
    assert back.ImagePositionPatient == ds.ImagePositionPatient
    assert (
        back.ReferencedImageSequence[0].ReferencedSOPInstanceUID
        == ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID
    )
    pixels = dw.retrieve_bulkdata(meta["7FE00010"]["BulkDataURI"])
    assert pixels[0] == ds.PixelData


@pytest.mark.parametrize("name", FRAME_FILES)
def test_retrieve_instance_frames_bit_exact_against_pydicom(
    dw: DICOMwebClient, stored: dict, name: str
) -> None:
    ds = stored["files"][name]
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        expected = [bytes(f) for f in generate_frames(ds.PixelData, number_of_frames=n)]
    else:
        if ds.BitsAllocated == 1:  # bit-packed: a frame is rows x columns bits, rounded up
            assert n == 1, "the corpus has single-frame bit-packed files only"
            bits = ds.Rows * ds.Columns * ds.SamplesPerPixel
            expected = [ds.PixelData[: (bits + 7) // 8]]
        else:
            size = len(ds.PixelData) // n
            expected = [ds.PixelData[i * size : (i + 1) * size] for i in range(n)]
    numbers = list(range(1, n + 1))
    got = dw.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, numbers
    )
    assert got == expected
    one = dw.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, [n]
    )
    assert one == [expected[-1]]


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "emri_small_RLE.dcm", "MR_small.dcm"])
def test_retrieve_instance_as_stored_and_rendered(
    dw: DICOMwebClient, stored: dict, name: str
) -> None:
    ds = stored["files"][name]
    got = dw.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert got.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert got.PixelData == ds.PixelData
    jpeg = dw.retrieve_instance_rendered(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, media_types=("image/jpeg",)
    )
    from PIL import Image

    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and image.size == (ds.Columns, ds.Rows)


def test_retrieve_compressed_instance_decompressed_on_request(
    dw: DICOMwebClient, stored: dict
) -> None:
    ds = stored["files"]["emri_small_jpeg_2k_lossless.dcm"]
    got = dw.retrieve_instance(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        media_types=(("application/dicom", "1.2.840.10008.1.2.1"),),
    )
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert (got.pixel_array == ds.pixel_array).all()  # lossless: same pixels


def test_an_instance_stored_through_the_library_is_found_through_qido(
    live: tuple[Archive, HttpServer], dw: DICOMwebClient, stored: dict
) -> None:
    ds = stored["files"]["MR_small.dcm"]
    found = dw.search_for_instances(search_filters={"SOPInstanceUID": ds.SOPInstanceUID})
    assert [x["00080018"]["Value"][0] for x in found] == [ds.SOPInstanceUID]
    archive, _ = live
    ct = stored["ct"][0]
    assert archive.get(ct.SOPInstanceUID)  # and STOW-RS instances through the library
