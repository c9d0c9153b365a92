"""Frames of a stored instance's Pixel Data, for WADO-RS ``frames`` and rendering.

:func:`open_frames` reads the metadata part (checksum verified) and decides
how frames will be read:

- native (uncompressed) Pixel Data whose pixel part is stored raw: each
  frame is one positioned read of ``Rows * Columns * SamplesPerPixel *
  BitsAllocated / 8`` bytes at its place in the segment. That read cannot
  check the pixel part's CRC32C (it covers the whole part); ``pacs verify``
  does, and a single-frame instance is read whole, checksum included;
- everything else (encapsulated syntaxes, a zstd-compressed pixel part,
  single-frame instances, BitsAllocated 1): the record is read once, its
  checksums verified, and the scanner's :class:`~engine.scan.PixelSpan`
  gives the fragments of each frame (PS3.5 A.4: Extended Offset Table, Basic
  Offset Table, or one frame per fragment).

Frame numbers are 1-based, as in PS3.18 10.4.1.1.6.

Caveats
-------
A record moved by a compaction between :func:`open_frames` and a positioned
read is still read from the old segment while its descriptor is cached; a
segment removed and forgotten raises :class:`~engine.errors.StorageIOError`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.errors import CorruptRecordError, NotFoundError
from engine.part10 import PREAMBLE, assemble
from engine.query import parse_int
from engine.scan import scan
from engine.storage.format import CODEC_RAW, FLAG_DEFLATED, NO_PIXEL
from engine.storage.segment import decode_record

if TYPE_CHECKING:
    from engine.archive import Archive
    from engine.index.keys import Location

# Implicit VR: tag + 32-bit length; explicit VR OB/OW: tag, VR, 2 reserved, 32-bit length.
_IMPLICIT_HEADER = 8
_EXPLICIT_HEADER = 12
_LENGTH = struct.Struct("<I")
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"


@dataclass(slots=True)
class FrameSource:
    """The frames of one instance; :meth:`read` returns one frame's bytes as stored.

    Attributes
    ----------
    sop_instance_uid : str
        The instance.
    transfer_syntax : str
        The syntax the frames are encoded in (the stored one).
    count : int
        Number of frames.
    encapsulated : bool
        True when each frame is a compressed bitstream (PS3.5 A.4).
    attributes : dict
        The scanned image attributes (Rows, Columns, BitsAllocated, ...).
    """

    sop_instance_uid: str
    transfer_syntax: str
    count: int
    encapsulated: bool
    attributes: dict[str, object]
    _reader: Callable[[int], bytes]

    def read(self, number: int) -> bytes:
        """Frame `number` (1-based); NotFoundError when there is no such frame."""
        if not 1 <= number <= self.count:
            raise NotFoundError(
                f"instance {self.sop_instance_uid} has {self.count} frame(s), not frame {number}"
            )
        return self._reader(number)


def _int(attrs: dict[str, object], keyword: str, default: int) -> int:
    value = parse_int(attrs.get(keyword))  # the one reading of IS/US values
    return default if value is None else value


def native_frame_bits(attrs: dict[str, object]) -> int:
    """Bits of one native frame: Rows x Columns x SamplesPerPixel x BitsAllocated."""
    return (_int(attrs, "Rows", 0) * _int(attrs, "Columns", 0)
            * _int(attrs, "SamplesPerPixel", 1) * _int(attrs, "BitsAllocated", 16))  # fmt: skip


def open_frames(archive: Archive, sop_instance_uid: str, loc: Location) -> FrameSource:
    """Read the metadata part of `loc` and return a :class:`FrameSource` over its pixels."""
    has_pixel_part = loc.total > loc.meta_span
    extra = _EXPLICIT_HEADER if has_pixel_part else 0
    buf = archive.reader.read(loc.segment_id, loc.offset, loc.meta_span + extra)
    rec = decode_record(buf[: loc.meta_span], str(loc.segment_id), loc.offset, with_pixel=False)
    if rec.uid != sop_instance_uid:
        raise CorruptRecordError(str(loc.segment_id), loc.offset, "record holds another UID")
    h = rec.header
    if h.flags & FLAG_DEFLATED:
        return _deflated(sop_instance_uid, PREAMBLE + bytes(rec.meta))
    if h.pixel_at == NO_PIXEL:
        raise NotFoundError(f"instance {sop_instance_uid} has no Pixel Data")
    meta = scan(PREAMBLE + bytes(rec.meta))
    attrs: dict[str, object] = dict(meta.attributes)
    ts = meta.transfer_syntax
    count = max(1, _int(attrs, "NumberOfFrames", 1))
    head = bytes(buf[loc.meta_span : loc.meta_span + extra])
    bits = native_frame_bits(attrs)
    hdr = _IMPLICIT_HEADER if ts == IMPLICIT_VR_LITTLE_ENDIAN else _EXPLICIT_HEADER
    value_len = _LENGTH.unpack_from(head, hdr - 4)[0] if len(head) >= hdr else 0
    native = value_len != 0xFFFFFFFF  # PS3.5 A.4: encapsulated is undefined length
    if native and h.pixel_codec == CODEC_RAW and count > 1 and bits % 8 == 0 and bits:
        size = bits // 8
        if count * size > value_len:
            raise CorruptRecordError(
                str(loc.segment_id), loc.offset, f"{count} frames of {size} bytes exceed Pixel Data"
            )
        # a frame is read alone: its record's pixel checksum is checked first
        archive.reader.check_span(loc.segment_id, loc.offset + loc.meta_span, h.pixel_stored,
                                  h.pixel_crc)  # fmt: skip
        start = loc.offset + loc.meta_span + hdr

        def positioned(number: int) -> bytes:
            return archive.reader.read(loc.segment_id, start + (number - 1) * size, size)

        return FrameSource(sop_instance_uid, ts, count, False, attrs, positioned)
    return _whole_record(archive, sop_instance_uid, ts, count, attrs)


def _whole_record(archive: Archive, sop_instance_uid: str, ts: str, count: int,
                  attrs: dict[str, object]) -> FrameSource:  # fmt: skip
    rec = archive._read(sop_instance_uid, with_pixel=True)
    data = assemble(rec.meta, rec.pixel, rec.header.pixel_at)
    span = scan(data).pixel
    if span is None:
        raise NotFoundError(f"instance {sop_instance_uid} has no Pixel Data")
    view = memoryview(data)
    if span.encapsulated:
        # The scanner's frame table is all we know without parsing codestreams:
        # with no offset table and fewer fragments than frames, it is one frame.
        fragments, frames = span.fragments, span.frames

        def encapsulated(number: int) -> bytes:
            first, length = frames[number - 1]
            return b"".join(bytes(view[o : o + ln]) for o, ln in fragments[first : first + length])

        return FrameSource(sop_instance_uid, ts, len(frames), True, attrs, encapsulated)
    value = view[span.value_start : span.end]
    bits = native_frame_bits(attrs)
    if not bits:
        return FrameSource(sop_instance_uid, ts, 1, False, attrs, lambda _n: bytes(value))
    if count * bits > len(value) * 8:
        count = max(1, len(value) * 8 // bits)

    def native(number: int) -> bytes:
        lo = (number - 1) * bits
        if lo % 8 == 0 and bits % 8 == 0:
            return bytes(value[lo // 8 : (lo + bits) // 8])
        return _bit_slice(value, lo, bits)  # BitsAllocated 1: frames not byte-aligned

    return FrameSource(sop_instance_uid, ts, count, False, attrs, native)


def _deflated(sop_instance_uid: str, data: bytes) -> FrameSource:
    """Deflated syntax (PS3.5 A.5): the whole dataset is in the metadata part; pydicom inflates."""
    import io
    import warnings

    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
    if "PixelData" not in ds:
        raise NotFoundError(f"instance {sop_instance_uid} has no Pixel Data")
    keys = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "NumberOfFrames")
    attrs: dict[str, object] = {k: ds.get(k) for k in keys}
    attrs = {k: v for k, v in attrs.items() if v is not None}
    value = memoryview(bytes(ds.PixelData))
    bits = native_frame_bits(attrs)
    count = max(1, _int(attrs, "NumberOfFrames", 1))
    if not bits or count * bits > len(value) * 8:
        bits, count = len(value) * 8, 1

    def native(number: int) -> bytes:
        return _bit_slice(value, (number - 1) * bits, bits)

    ts = str(ds.file_meta.TransferSyntaxUID)
    return FrameSource(sop_instance_uid, ts, count, False, attrs, native)


def _bit_slice(value: memoryview, lo: int, bits: int) -> bytes:
    """Bits [lo, lo+bits) of little-endian bit-packed data, repacked from bit 0 (PS3.5 8.1.1)."""
    import numpy as np

    unpacked = np.unpackbits(np.frombuffer(value, dtype=np.uint8), bitorder="little")
    return np.packbits(unpacked[lo : lo + bits], bitorder="little").tobytes()
