"""WADO-RS through the ASGI app: retrieve, syntaxes, metadata, frames, bulk data, rendered."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array

from engine.archive import Archive
from tests.web._util import corpus_instance, read, split_multipart
from tests.web.conftest import BASE, Client, ct_study

EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.fixture
def ct(archive: Archive) -> list[Any]:
    data = ct_study(5, 2, 3)
    for d in data:
        archive.store(d)
    return [read(d) for d in data]


def url(ds: Any, tail: str = "") -> str:
    return (
        f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}{tail}"
    )


def stored(archive: Archive, name: str, index: int = 0) -> Any:
    data = corpus_instance(name, index)
    archive.store(data)
    return read(data)


def test_retrieve_study_is_multipart_with_content_location(client: Client, ct: list) -> None:
    r = client.get(f"{BASE}/studies/{ct[0].StudyInstanceUID}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    parts = split_multipart(r.content, r.headers["content-type"])
    assert len(parts) == 6
    by_uid = {read(body).SOPInstanceUID: (h, body) for h, body in parts}
    for ds in ct:
        headers, body = by_uid[ds.SOPInstanceUID]
        assert headers["content-location"].endswith(ds.SOPInstanceUID)
        assert read(body).PixelData == ds.PixelData


def test_retrieve_series_and_instance(client: Client, ct: list) -> None:
    ds = ct[0]
    r = client.get(f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}")
    assert len(split_multipart(r.content, r.headers["content-type"])) == 3
    r = client.get(url(ds), headers={"Accept": "application/dicom"})
    assert (
        r.headers["content-type"] == "application/dicom"
        and read(r.content).PixelData == ds.PixelData
    )


def test_unknown_uids_are_404(client: Client, ct: list) -> None:
    ds = ct[0]
    for path in (
        f"{BASE}/studies/1.2.3",
        f"{BASE}/studies/{ds.StudyInstanceUID}/series/1.2.3",
        f"{BASE}/studies/1.2.3/series/{ds.SeriesInstanceUID}",
        f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        "/instances/1.2.3/metadata",
    ):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["status"] == 404, path


def test_transfer_syntax_parameter(client: Client, archive: Archive) -> None:
    ds = stored(archive, "JPEG2000.dcm")
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=' + EXPLICIT
    r = client.get(url(ds), headers={"Accept": accept})
    ((headers, body),) = split_multipart(r.content, r.headers["content-type"])
    out = read(body)
    assert (
        out.file_meta.TransferSyntaxUID == EXPLICIT
        and f"transfer-syntax={EXPLICIT}" in headers["content-type"]
    )
    assert np.array_equal(out.pixel_array, ds.pixel_array)
    r = client.get(
        url(ds),
        headers={
            "Accept": 'multipart/related; type="application/dicom"; '
            "transfer-syntax=1.2.840.10008.1.2.4.50"
        },
    )
    assert r.status_code == 406 and r.json()["status"] == 406
    r = client.get(url(ds), headers={"Accept": "text/html"})
    assert r.status_code == 406


def test_metadata_never_reads_pixels(
    client: Client, archive: Archive, ct: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = archive._read

    def no_pixels(uid: str, *, with_pixel: bool) -> Any:
        assert not with_pixel, "metadata read pixel bytes"
        return real(uid, with_pixel=with_pixel)

    monkeypatch.setattr(archive, "_read", no_pixels)
    monkeypatch.setattr(archive, "get", lambda uid: pytest.fail("metadata called get"))
    r = client.get(f"{BASE}/studies/{ct[0].StudyInstanceUID}/metadata")
    docs = r.json()
    assert r.headers["content-type"] == "application/dicom+json" and len(docs) == 6
    assert all(d["7FE00010"]["vr"] == "OW" and "BulkDataURI" in d["7FE00010"] for d in docs)
    assert {d["00080018"]["Value"][0] for d in docs} == {ds.SOPInstanceUID for ds in ct}


def test_large_binary_values_become_bulkdata(client: Client, archive: Archive, ct: list) -> None:
    ds = ct[0].copy()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.99.1"
    ds.add_new(0x00091010, "OB", bytes(range(256)) * 8)  # private, 2 KiB
    archive.store(ds)
    meta = client.get(url(ds, "/metadata")).json()[0]
    uri = meta["00091010"]["BulkDataURI"]
    r = client.get(uri.replace("http://testserver", ""))
    ((headers, body),) = split_multipart(r.content, r.headers["content-type"])
    assert body == bytes(range(256)) * 8 and headers["content-type"] == "application/octet-stream"
    assert client.get(url(ds, "/bulkdata/00091011")).status_code == 404


@pytest.mark.parametrize(
    "name",
    [
        "emri_small.dcm",
        "emri_small_RLE.dcm",
        "SC_rgb_rle_2frame.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
    ],
)
def test_frames_as_stored_are_bit_exact(client: Client, archive: Archive, name: str) -> None:
    ds = stored(archive, name)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        expected = [bytes(f) for f in generate_frames(ds.PixelData, number_of_frames=n)]
        media = {
            "1.2.840.10008.1.2.5": "image/dicom-rle",
            "1.2.840.10008.1.2.4.50": "image/jpeg",
        }.get(ds.file_meta.TransferSyntaxUID, "image/jp2")
    else:
        size = len(ds.PixelData) // n
        expected = [ds.PixelData[i * size : (i + 1) * size] for i in range(n)]
        media = "application/octet-stream"
    numbers = [n, 1] if n > 1 else [1]
    r = client.get(url(ds, "/frames/" + ",".join(map(str, numbers))))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(f'multipart/related; type="{media}"')
    parts = split_multipart(r.content, r.headers["content-type"])
    assert [body for _, body in parts] == [expected[i - 1] for i in numbers]
    assert (
        parts[0][0]["content-type"] == f"{media}; transfer-syntax={ds.file_meta.TransferSyntaxUID}"
    )


def test_native_multiframe_frames_are_one_positioned_read_each(
    client: Client, archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = stored(archive, "emri_small.dcm")
    reads: list[int] = []
    real = archive.reader.read

    def counting(seg: int, offset: int, length: int) -> bytes:
        reads.append(length)
        return real(seg, offset, length)

    monkeypatch.setattr(archive.reader, "read", counting)
    frame = ds.Rows * ds.Columns * 2
    # the first request checks the pixel part's checksum once (a frame read alone has none)
    client.get(url(ds, "/frames/1"))
    reads.clear()
    r = client.get(url(ds, "/frames/3,7"))
    assert [p for _, p in split_multipart(r.content, r.headers["content-type"])] == [
        ds.PixelData[2 * frame : 3 * frame],
        ds.PixelData[6 * frame : 7 * frame],
    ]
    assert reads[-2:] == [frame, frame]  # one read per frame, after the index and meta reads
    assert max(reads) < len(ds.PixelData)  # the whole pixel part was not read again


def test_bit_packed_frame(client: Client, archive: Archive) -> None:
    ds = stored(archive, "liver_1frame.dcm")
    r = client.get(url(ds, "/frames/1"))
    ((_, body),) = split_multipart(r.content, r.headers["content-type"])
    bits = ds.Rows * ds.Columns
    assert body == bytes(ds.PixelData)[: (bits + 7) // 8]


def test_compressed_frame_decoded_when_only_octet_stream_is_accepted(
    client: Client, archive: Archive
) -> None:
    ds = stored(archive, "emri_small_RLE.dcm")
    accept = 'multipart/related; type="application/octet-stream"'
    r = client.get(url(ds, "/frames/2"), headers={"Accept": accept})
    ((_, body),) = split_multipart(r.content, r.headers["content-type"])
    expected = pixel_array(io.BytesIO(corpus_instance("emri_small_RLE.dcm", 0)), index=1)
    assert body == expected.tobytes()


@pytest.mark.parametrize(("frames", "status"), [("0", 400), ("1,x", 400), ("11", 404), ("", 404)])
def test_bad_frame_lists(client: Client, archive: Archive, frames: str, status: int) -> None:
    ds = stored(archive, "emri_small.dcm")
    assert client.get(url(ds, f"/frames/{frames}")).status_code == status


def test_rendered_with_window_and_thumbnail(client: Client, ct: list) -> None:
    from PIL import Image

    ds = ct[0]
    r = client.get(
        url(ds, "/rendered"), params={"window": "40,400"}, headers={"Accept": "image/png"}
    )
    assert r.headers["content-type"] == "image/png"
    img = np.asarray(Image.open(io.BytesIO(r.content)))
    hu = ds.pixel_array * 1.0 - 1024
    expected = np.clip(((hu - 39.5) / 399 + 0.5) * 255, 0, 255).astype(np.uint8)
    assert np.abs(img.astype(int) - expected).max() <= 1
    r = client.get(
        f"{BASE}/studies/{ds.StudyInstanceUID}/thumbnail",
        params={"viewport": "8,8"},
        headers={"Accept": "image/jpeg"},
    )
    assert Image.open(io.BytesIO(r.content)).size == (8, 8)
    assert client.get(url(ds, "/rendered"), headers={"Accept": "image/tiff"}).status_code == 406
    assert client.get(url(ds, "/rendered"), params={"window": "1"}).status_code == 400


def test_frames_rendered_of_a_compressed_multiframe(client: Client, archive: Archive) -> None:
    from PIL import Image

    ds = stored(archive, "emri_small_jpeg_2k_lossless.dcm")
    r = client.get(url(ds, "/frames/4/rendered"), headers={"Accept": "image/jpeg"})
    assert Image.open(io.BytesIO(r.content)).size == (ds.Columns, ds.Rows)
