"""The on-disk layout of segment files: the only place record structs live.

docs/format.md describes the same layout in prose. Every number is little
endian. A change to any layout bumps ``FORMAT_VERSION``; readers branch on it.

Segment file::

    segment header (16 bytes)
      magic          8  b"PXSEGv1\\n"
      version        4  u32 FORMAT_VERSION
      segment_id     4  u32, also the file name
    record*

Record::

    record header (64 bytes)
      magic          4  b"PXR\\x01"
      version        1  u8
      kind           1  u8  KIND_INSTANCE | KIND_TOMBSTONE
      meta_codec     1  u8  CODEC_RAW | CODEC_ZSTD
      pixel_codec    1  u8  CODEC_RAW | CODEC_ZSTD | CODEC_ZSTD_PLANES16
      uid_len        1  u8  1..64 (PS3.5 9.1)
      flags          1  u8  FLAG_DEFLATED: the dataset is deflated, kept whole in meta
      reserved       2  zero
      meta_stored    4  u32 bytes of the metadata part as written
      meta_raw       4  u32 bytes after decompression
      pixel_stored   8  u64
      pixel_raw      8  u64
      fmi_len        4  u32 bytes of File Meta Information at the start of raw meta
      pixel_at       4  u32 where the Pixel Data element goes back into raw meta; NO_PIXEL if none
      stored_at_ns   8  u64 wall clock of the first store; the newest wins on reindex
      meta_crc       4  u32 CRC32C of the metadata part as written
      pixel_crc      4  u32 CRC32C of the pixel part as written
      header_crc     4  u32 CRC32C of the 60 bytes before it and the UID
    uid             uid_len bytes, ASCII SOP Instance UID
    metadata part   meta_stored bytes: FMI + the dataset without Pixel Data
    pixel part      pixel_stored bytes: the whole Pixel Data element, header included

Three checksums, not one, so that a metadata-only read verifies what it
reads without touching pixel bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import crc32c as _crc32c

FORMAT_VERSION = 1

SEGMENT_MAGIC = b"PXSEGv1\n"
SEGMENT_HEADER = struct.Struct("<8sII")
assert SEGMENT_HEADER.size == 16  # records start at a fixed offset

RECORD_MAGIC = b"PXR\x01"
RECORD_HEADER = struct.Struct("<4sBBBBBBHIIQQIIQIII")
assert RECORD_HEADER.size == 64  # header_crc is the last 4 bytes
HEADER_CRC_SPAN = RECORD_HEADER.size - 4

KIND_INSTANCE = 1
KIND_TOMBSTONE = 2

CODEC_RAW = 0
CODEC_ZSTD = 1
# zstd of 16-bit samples as two byte planes (every even byte, then every odd one): the
# high bytes of CT and MR vary little, and zstd finds that once they are side by side
CODEC_ZSTD_PLANES16 = 2
CODECS = (CODEC_RAW, CODEC_ZSTD, CODEC_ZSTD_PLANES16)

FLAG_DEFLATED = 0x01

NO_PIXEL = 0xFFFFFFFF
UID_MAX_LEN = 64


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC32C (Castagnoli), hardware-accelerated where the CPU has it."""
    return int(_crc32c.crc32c(data, value))


@dataclass(frozen=True, slots=True)
class RecordHeader:
    """A decoded record header; lengths say where the parts lie."""

    kind: int
    meta_codec: int
    pixel_codec: int
    uid_len: int
    flags: int
    meta_stored: int
    meta_raw: int
    pixel_stored: int
    pixel_raw: int
    fmi_len: int
    pixel_at: int
    stored_at_ns: int
    meta_crc: int
    pixel_crc: int

    @property
    def meta_span(self) -> int:
        """Bytes from the record start to the end of the metadata part."""
        return RECORD_HEADER.size + self.uid_len + self.meta_stored

    @property
    def total(self) -> int:
        """Bytes of the whole record."""
        return self.meta_span + self.pixel_stored


def pack_segment_header(segment_id: int) -> bytes:
    return SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, segment_id)


def unpack_segment_header(data: bytes) -> tuple[int, int]:
    """Return (version, segment_id); ValueError if the magic or the version is wrong."""
    if len(data) < SEGMENT_HEADER.size:
        raise ValueError("segment header truncated")
    magic, version, segment_id = SEGMENT_HEADER.unpack_from(data)
    if magic != SEGMENT_MAGIC:
        raise ValueError(f"bad segment magic {magic!r}")
    if version != FORMAT_VERSION:
        raise ValueError(f"segment format version {version}, this build reads {FORMAT_VERSION}")
    return version, segment_id


def pack_record_header(h: RecordHeader, uid: bytes) -> bytes:
    """Encode `h` followed by `uid`, with the header checksum filled in."""
    assert 0 < len(uid) == h.uid_len <= UID_MAX_LEN  # PS3.5 9.1
    head = RECORD_HEADER.pack(
        RECORD_MAGIC, FORMAT_VERSION, h.kind, h.meta_codec, h.pixel_codec, h.uid_len, h.flags, 0,
        h.meta_stored, h.meta_raw, h.pixel_stored, h.pixel_raw, h.fmi_len, h.pixel_at,
        h.stored_at_ns, h.meta_crc, h.pixel_crc, 0,
    )  # fmt: skip
    crc = crc32c(uid, crc32c(memoryview(head)[:HEADER_CRC_SPAN]))
    return head[:HEADER_CRC_SPAN] + crc.to_bytes(4, "little") + uid


def unpack_record_header(data: bytes | memoryview) -> tuple[RecordHeader, bytes]:
    """Decode a header and its UID from `data` (at least 64 + 64 bytes, or to the end).

    Raises ValueError with the reason when the magic, version, checksum or a
    field is wrong; the caller adds the segment and offset.
    """
    if len(data) < RECORD_HEADER.size:
        raise ValueError("record header truncated")
    f = RECORD_HEADER.unpack_from(data)
    if f[0] != RECORD_MAGIC:
        raise ValueError(f"bad record magic {bytes(f[0])!r}")
    if f[1] != FORMAT_VERSION:
        raise ValueError(f"record format version {f[1]}, this build reads {FORMAT_VERSION}")
    uid_len = f[5]
    if not 0 < uid_len <= UID_MAX_LEN:
        raise ValueError(f"UID length {uid_len} out of range")
    if len(data) < RECORD_HEADER.size + uid_len:
        raise ValueError("record UID truncated")
    uid = bytes(data[RECORD_HEADER.size : RECORD_HEADER.size + uid_len])
    crc = crc32c(uid, crc32c(memoryview(data)[:HEADER_CRC_SPAN]))
    if crc != f[17]:
        raise ValueError(f"header checksum mismatch (stored {f[17]:08x}, computed {crc:08x})")
    h = RecordHeader(f[2], f[3], f[4], uid_len, f[6], *f[8:17])
    if h.kind not in (KIND_INSTANCE, KIND_TOMBSTONE):
        raise ValueError(f"unknown record kind {h.kind}")
    if h.meta_codec not in CODECS or h.pixel_codec not in CODECS:
        raise ValueError(f"unknown codec {h.meta_codec}/{h.pixel_codec}")
    return h, uid
