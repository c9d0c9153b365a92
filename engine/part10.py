"""PS3.10 framing: the File Meta Information we write, and a stored record made a file again."""

from __future__ import annotations

import struct

from engine import __version__
from engine.errors import MalformedDicomError

PREAMBLE = b"\x00" * 128 + b"DICM"
# A UUID-derived UID (PS3.5 B.2), fixed for this implementation.
IMPLEMENTATION_CLASS_UID = "2.25.339805335196476507498173981769946475180"
IMPLEMENTATION_VERSION_NAME = f"PACSENGINE_{__version__}"[:16]

_SHORT = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length (PS3.5 7.1.2)
_LONG = struct.Struct("<HH2s2xI")  # group, element, VR, reserved, 32-bit length
_LONG_LENGTH = struct.Struct("<I")
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC",
                       b"UN", b"UR", b"UT", b"UV"})  # fmt: skip


def _pad(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def _element(elem: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return _LONG.pack(0x0002, elem, vr, len(value)) + value
    return _SHORT.pack(0x0002, elem, vr, len(value)) + value


def encode_fmi(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str | None = None
) -> bytes:
    """Encode group 0002 (Explicit VR Little Endian, PS3.10 7.1), group length first."""
    body = b"".join(
        (
            _element(0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, b"UI", _pad(sop_class_uid.encode(), b"\x00")),
            _element(0x0003, b"UI", _pad(sop_instance_uid.encode(), b"\x00")),
            _element(0x0010, b"UI", _pad(transfer_syntax.encode(), b"\x00")),
            _element(0x0012, b"UI", _pad(IMPLEMENTATION_CLASS_UID.encode(), b"\x00")),
            _element(0x0013, b"SH", _pad(IMPLEMENTATION_VERSION_NAME.encode(), b" ")),
            _element(0x0016, b"AE", _pad(source_ae.strip().encode(), b" ")) if source_ae else b"",
        )
    )
    return _element(0x0000, b"UL", len(body).to_bytes(4, "little")) + body


def assemble(meta: bytes | memoryview, pixel: bytes | memoryview, pixel_at: int) -> bytes:
    """A stored record as a Part 10 file: preamble, then meta with Pixel Data back at `pixel_at`."""
    if not pixel:
        return b"".join((PREAMBLE, meta))
    return b"".join((PREAMBLE, meta[:pixel_at], pixel, meta[pixel_at:]))


def dataset_offset(part10: bytes | memoryview, *, preamble: bool | None = None) -> int:
    """Where the data set starts in Part 10 bytes: after the preamble and group 0002.

    `preamble`: whether the bytes start with one (None: look for "DICM" at 128).

    Raises
    ------
    engine.errors.MalformedDicomError
        The File Meta Information runs past the end of the bytes.
    """
    n = len(part10)
    if preamble is None:
        preamble = part10[128:132] == PREAMBLE[128:]
    pos = len(PREAMBLE) if preamble else 0
    # PS3.10 7.1: group 0002 is Explicit VR Little Endian whatever the data set's syntax
    while n - pos >= 8 and part10[pos] == 2 and part10[pos + 1] == 0:
        _, _, vr, length = _SHORT.unpack_from(part10, pos)
        if vr in _LONG_VRS:
            if n - pos < 12:
                raise MalformedDicomError(pos, "truncated File Meta Information element")
            (length,) = _LONG_LENGTH.unpack_from(part10, pos + 8)
            pos += 12 + length
        else:
            pos += 8 + length
        if pos > n:
            raise MalformedDicomError(pos, "File Meta Information runs past the end")
    return pos
