"""Helpers of the DICOMweb tests: multipart bodies both ways, corpus files by name."""

from __future__ import annotations

import io
import warnings
import zlib
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

# Real files of pydicom's test set: native and encapsulated, single and multi-frame.
FRAME_FILES = (
    "emri_small.dcm",  # native, 10 frames, 16-bit
    "emri_small_RLE.dcm",  # RLE, 10 frames
    "emri_small_jpeg_2k_lossless.dcm",  # JPEG 2000, 10 frames
    "SC_rgb_rle_2frame.dcm",  # RLE, RGB, 2 frames
    "JPEG2000.dcm",  # JPEG 2000, single frame
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, RGB
    "JPEG-LL.dcm",  # JPEG lossless
    "MR_small.dcm",  # native, single frame
    "liver_1frame.dcm",  # BitsAllocated 1, native
)


def corpus_path(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(str(path))


def corpus_instance(name: str, index: int) -> bytes:
    """A corpus file with its own SOP Instance UID (several files share one), pixels untouched."""
    ds = read(corpus_path(name).read_bytes())
    uid = f"2.25.{7000 + index}{zlib.crc32(name.encode())}"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def read(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))


def multipart(parts: list[tuple[str, bytes]], boundary: str = "XbX") -> tuple[bytes, str]:
    """A multipart/related body of (content type, bytes) parts, and its Content-Type."""
    out = io.BytesIO()
    for ctype, body in parts:
        out.write(f"--{boundary}\r\nContent-Type: {ctype}\r\n\r\n".encode())
        out.write(body)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f'multipart/related; type="application/dicom"; boundary={boundary}'


def split_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart response (headers lower-cased, body bytes)."""
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"')
    delim = b"--" + boundary.encode()
    pieces = body.split(b"\r\n" + delim)
    first = pieces[0]
    assert first.startswith(delim), first[:40]
    pieces[0] = first[len(delim) :]
    out = []
    for piece in pieces:
        if piece.startswith(b"--"):
            break
        head, _, data = piece[2:].partition(b"\r\n\r\n")
        headers = {}
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            headers[name.decode().strip().lower()] = value.decode().strip()
        out.append((headers, data))
    return out
