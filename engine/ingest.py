"""Turn encoded bytes into a record ready to append: scan, validate, split, encode.

This is the hot path of every store (C-STORE, STOW-RS, ``pacs ingest``,
``Archive.store``): one scan of the encoded bytes, no pydicom Dataset, and
no copy of the pixel bytes (they go to ``pwritev`` as a memoryview).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from pydicom.uid import RE_VALID_UID

from engine import codec
from engine.config import Config
from engine.errors import InvalidUIDError, MalformedDicomError, MissingAttributeError
from engine.index.catalog import IndexEntry
from engine.index.keys import Location
from engine.part10 import encode_fmi
from engine.scan import ScanResult, Value, scan
from engine.storage.format import (
    CODEC_RAW,
    CODEC_ZSTD,
    FLAG_DEFLATED,
    KIND_INSTANCE,
    KIND_TOMBSTONE,
    NO_PIXEL,
    UID_MAX_LEN,
    RecordHeader,
    crc32c,
    pack_record_header,
)

REQUIRED_UIDS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID")

_stamp_lock = threading.Lock()
_last_stamp = 0


def next_stamp() -> int:
    """Wall-clock nanoseconds, strictly increasing within this process."""
    global _last_stamp
    with _stamp_lock:
        _last_stamp = max(time.time_ns(), _last_stamp + 1)
        return _last_stamp


def validate_uid(keyword: str, value: str) -> str:
    """Check a UID against PS3.5 9.1; return it or raise InvalidUIDError."""
    if len(value) > UID_MAX_LEN:
        raise InvalidUIDError(keyword, value, f"{len(value)} characters, at most {UID_MAX_LEN}")
    if not RE_VALID_UID.match(value):
        raise InvalidUIDError(
            keyword, value, "only digits and dots, no empty or zero-led components"
        )
    return value


@dataclass(slots=True)
class Prepared:
    """A record ready to append, and what the index will say of it."""

    entry: IndexEntry  # loc is filled in once the record is appended
    parts: list[bytes | memoryview]
    total: int


def _uids(attrs: dict[str, Value]) -> dict[str, str]:
    out = {}
    for keyword in REQUIRED_UIDS:
        value = attrs.get(keyword)
        if not isinstance(value, str) or not value:
            raise MissingAttributeError(keyword)
        out[keyword] = validate_uid(keyword, value)
    return out


def _split(buf: memoryview, r: ScanResult, fmi: bytes) -> tuple[bytes, memoryview, int]:
    """(raw metadata part, raw pixel part, pixel_at) of a scanned instance."""
    ds = r.dataset_start
    if r.deflated or r.pixel is None:
        return fmi + bytes(buf[ds:]), memoryview(b""), NO_PIXEL
    p = r.pixel
    meta = b"".join((fmi, buf[ds : p.element_start], buf[p.end :]))
    return meta, buf[p.element_start : p.end], len(fmi) + p.element_start - ds


def _check_pixel_encoding(r: ScanResult) -> None:
    """Refuse encapsulated Pixel Data under a native transfer syntax (PS3.5 A.4: only the
    compressed syntaxes encapsulate): it would be served under the wrong syntax. A File
    Meta without a Transfer Syntax UID (the scanner then guesses a native one) or a
    C-STORE of compressed pixels on an uncompressed context both end here."""
    pixel = r.pixel
    if pixel is not None and pixel.encapsulated and codec.pixels_compressible(r.transfer_syntax):
        raise MalformedDicomError(
            pixel.element_start,
            f"encapsulated Pixel Data in {r.transfer_syntax}, an uncompressed transfer syntax; "
            "send it with the transfer syntax of its compression",
        )


def prepare(
    data: bytes | bytearray | memoryview,
    config: Config,
    transfer_syntax: str | None = None,
    source_ae: str | None = None,
) -> Prepared:
    """Scan and validate one instance and encode its record; write nothing.

    Raises an ``engine.errors.InvalidInstanceError`` subclass naming the
    problem when the bytes cannot be stored.
    """
    buf = memoryview(data)
    r = scan(buf, transfer_syntax)
    _check_pixel_encoding(r)
    attrs = dict(r.attributes)
    uids = _uids(attrs)
    sop_uid = uids["SOPInstanceUID"]
    if r.fmi_start != r.dataset_start:
        fmi = bytes(buf[r.fmi_start : r.dataset_start])
    else:
        fmi = encode_fmi(uids["SOPClassUID"], sop_uid, r.transfer_syntax, source_ae)
    meta_raw, pixel_raw, pixel_at = _split(buf, r, fmi)
    attrs["TransferSyntaxUID"] = r.transfer_syntax

    zstd = config.ingest_codec == "zstd"
    meta_codec = CODEC_ZSTD if zstd else CODEC_RAW
    pixel_codec = CODEC_ZSTD if zstd and codec.pixels_compressible(r.transfer_syntax) else CODEC_RAW
    meta = codec.encode(meta_raw, meta_codec, codec.INGEST_ZSTD_LEVEL)
    pixel = codec.encode(pixel_raw, pixel_codec, codec.INGEST_ZSTD_LEVEL) if pixel_raw else b""
    header = RecordHeader(
        kind=KIND_INSTANCE, meta_codec=meta_codec, pixel_codec=pixel_codec,
        uid_len=len(sop_uid), flags=FLAG_DEFLATED if r.deflated else 0,
        meta_stored=len(meta), meta_raw=len(meta_raw),
        pixel_stored=len(pixel), pixel_raw=len(pixel_raw),
        fmi_len=len(fmi), pixel_at=pixel_at, stored_at_ns=next_stamp(),
        meta_crc=crc32c(meta), pixel_crc=crc32c(pixel),
    )  # fmt: skip
    entry = _entry(attrs, Location(0, 0, header.total, header.meta_span, header.stored_at_ns))
    parts: list[bytes | memoryview] = [pack_record_header(header, sop_uid.encode()), meta]
    if pixel:
        parts.append(pixel)
    return Prepared(entry, parts, header.total)


def tombstone(sop_uid: str) -> tuple[list[bytes | memoryview], int, int]:
    """The parts of a tombstone record for `sop_uid`: (parts, total, stamp)."""
    stamp = next_stamp()
    h = RecordHeader(
        KIND_TOMBSTONE, CODEC_RAW, CODEC_RAW, len(sop_uid), 0, 0, 0, 0, 0, 0, NO_PIXEL, stamp,
        crc32c(b""), crc32c(b""),
    )  # fmt: skip
    return [pack_record_header(h, sop_uid.encode())], h.total, stamp


def _entry(attrs: dict[str, Any], loc: Location) -> IndexEntry:
    """The index entry of scanned attributes (TransferSyntaxUID included) at `loc`."""
    return IndexEntry(
        str(attrs["SOPInstanceUID"]), str(attrs["SeriesInstanceUID"]),
        str(attrs["StudyInstanceUID"]), str(attrs.get("PatientID", "")), attrs, loc,
    )  # fmt: skip


def entry_from_meta(meta: bytes, loc: Location) -> IndexEntry:
    """Rebuild the index entry of a stored record from its metadata part (replay, reindex)."""
    r = scan(meta)
    attrs: dict[str, Any] = dict(r.attributes)
    attrs["TransferSyntaxUID"] = r.transfer_syntax
    return _entry(attrs, loc)
