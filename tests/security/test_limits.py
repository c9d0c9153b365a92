"""Decompressed size is bounded: a header that claims more pixels than any decode may allocate
(MAX_DECODED_BYTES) gets 406 before pylibjpeg runs, for transcoding and for rendering."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator

import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

from engine.archive import Archive
from engine.codec import MAX_DECODED_BYTES, check_decoded_size
from engine.errors import UnsupportedTransferSyntaxError
from engine.web.server import HttpServer, run_http
from tests._helpers import small_ct

# a real 8x8 baseline JPEG would decode to 64 bytes; the header claims 65535 x 65535 x 300
BOMB_ROWS = BOMB_COLUMNS = 65535
BOMB_FRAMES = 300


def _bomb() -> tuple[bytes, str, str, str]:
    ds = small_ct(3131)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.Rows, ds.Columns, ds.NumberOfFrames = BOMB_ROWS, BOMB_COLUMNS, BOMB_FRAMES
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"] * BOMB_FRAMES)
    ds["PixelData"].VR = "OB"
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[HttpServer, tuple[str, ...]]]:
    archive = Archive(tmp_path_factory.mktemp("limits") / "archive")
    data, *uids = _bomb()
    archive.store(data)
    stop = threading.Event()
    server = run_http(archive, "127.0.0.1", 0, stop)
    yield server, tuple(uids)
    stop.set()
    server.join(60)
    archive.close()


def _get(port: int, url: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", url)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_check_decoded_size_counts_and_refuses() -> None:
    ds = small_ct(1)  # 16 x 16, 16 bits
    assert check_decoded_size(ds) == 16 * 16 * 2
    ds.Rows = ds.Columns = 16384
    assert check_decoded_size(ds, frames=1) == 16384 * 16384 * 2 <= MAX_DECODED_BYTES
    ds.NumberOfFrames = BOMB_FRAMES
    with pytest.raises(UnsupportedTransferSyntaxError, match="more than the limit"):
        check_decoded_size(ds)


@pytest.mark.parametrize("kind", ["wado_uri_transcode", "rendered"])
def test_a_decompression_bomb_is_refused_before_decoding(
    served: tuple[HttpServer, tuple[str, ...]], kind: str
) -> None:
    server, (study, series, sop) = served
    inst = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    url = {
        "wado_uri_transcode": f"/wado?requestType=WADO&studyUID={study}&seriesUID={series}"
                              f"&objectUID={sop}&contentType=application/dicom"
                              "&transferSyntax=1.2.840.10008.1.2.1",
        "rendered": f"{inst}/frames/1/rendered",
    }[kind]  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("GET", url)
        r = conn.getresponse()
        status, body = r.status, r.read()
    finally:
        conn.close()
    assert status == 406, (kind, status, body[:300])
    assert b"more than the limit" in body
    # the stored bytes are still there, as stored
    ok, _ = _get(server.port, url.replace("&transferSyntax=1.2.840.10008.1.2.1", "")
                 if kind == "wado_uri_transcode" else inst + "/metadata")  # fmt: skip
    assert ok == 200


def test_wado_rs_transcode_of_a_bomb_is_refused_before_the_stream(
    served: tuple[HttpServer, tuple[str, ...]]
) -> None:
    """WADO-RS streams its multipart body: the check runs on the indexed Rows, Columns and
    Number of Frames before the 200 goes out."""
    server, (study, _, _) = served
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
    try:
        conn.request("GET", f"/dicom-web/studies/{study}", headers={"Accept": accept})
        r = conn.getresponse()
        status, body = r.status, r.read()
    finally:
        conn.close()
    assert status == 406 and b"more than the limit" in body
    assert _get(server.port, f"/dicom-web/studies/{study}/metadata")[0] == 200
