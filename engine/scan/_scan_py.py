"""The pure-Python scanner: the readable specification the native one must match.

``scan(buffer, transfer_syntax=None)`` walks the top-level elements of encoded
DICOM once, reads the values of :data:`engine.attributes.SCANNED`, and finds
the span of Pixel Data. Nothing is decoded into a pydicom Dataset, and
sequences are skipped by walking their Item and delimiter tags, not parsed.

Choices (the native backend in ``ext/scan.pyx`` makes exactly the same ones):

- Input: a Part 10 file (128-byte preamble and ``DICM``, or group 0002 at
  offset 0), or a bare dataset with `transfer_syntax` given. Group 0002 is
  Explicit VR Little Endian (PS3.10 7.1). When the File Meta Information is
  present its Transfer Syntax UID wins over the argument; when it lacks one,
  the argument is used, else the first dataset element decides between
  Explicit and Implicit VR Little Endian (pydicom does the same). Neither File
  Meta Information nor `transfer_syntax` raises :class:`NotDicomError`.
- In a little endian dataset the first element decides whether VR is
  explicit, as pydicom's ``_is_implicit_vr`` does: a dataset declared Implicit
  whose first element carries two upper-case letters at bytes 4-5 is read as
  Explicit. In explicit VR, an element whose VR bytes are not two upper-case
  letters is read as implicit VR (tag, 32-bit length), like pydicom (its issue
  1067: some writers switch inside sequences); an unknown VR of two letters has
  a 16-bit length, like pydicom. Item and delimiter tags (FFFE,xxxx) never
  carry a VR (PS3.5 7.5).
- Values: text VRs give the whole value as str, backslashes kept, trailing
  spaces and NULs removed, and leading spaces too except for LT, ST and UT.
  Plain 7-bit text without ESC is decoded as ASCII; anything else goes through
  :func:`engine.scan._common.decode_text` (pydicom's character sets) with the
  top-level Specific Character Set (0008,0005). Present but empty text gives
  ``""``. US/SS/UL/SL/FL/FD give int or float, a tuple when VM > 1; an empty
  binary value, or one whose length is not a multiple of the value size, is
  left out. The VR is the encoded one; under implicit VR, UN, or an unknown
  VR it is the one of :data:`engine.attributes.SCANNED`. Values encoded in any
  other VR (OB, SQ, ...) are left out. When a tag occurs twice the last wins.
- Lengths are honoured as encoded, odd ones included: they do not make the
  framing ambiguous, and real files have them. What is refused, with
  :class:`MalformedDicomError` (offset, reason): a truncated element or item
  header, a value running past the end of the buffer, an undefined-length
  sequence, item or encapsulated Pixel Data without its delimiter, a non-item
  tag inside a sequence, an item or delimiter tag at the top level, an item of
  undefined length inside encapsulated Pixel Data, and nesting deeper than
  :data:`engine.scan._common.MAX_DEPTH` sequences.
- An undefined-length UN holds Implicit VR Little Endian content (PS3.5
  6.2.2). Only the top-level Pixel Data (7FE0,0010) is Pixel Data; the Float
  and Double Float Pixel Data elements are ordinary ones.
- Deflated Explicit VR Little Endian (PS3.5 A.5) is inflated, with a cap of
  64 times the deflated size (plus 64 KiB, at most 2 GiB), and the inflated
  bytes are scanned; then ``deflated`` is True, ``pixel`` is None, and the
  offsets of any error refer to the inflated bytes. A stream cut before its
  final block is refused; bytes after it (padding) are ignored.
"""

from __future__ import annotations

from struct import unpack_from

from engine.attributes import BY_TAG
from engine.errors import MalformedDicomError, NotDicomError
from engine.scan._common import (
    FMI_KEYWORDS,
    LONG_VRS,
    MAX_DEPTH,
    NUMBER_VRS,
    TEXT_VRS,
    SyntaxInfo,
    decode_text,
    derive_frames,
    inflate,
    split_charsets,
    strip_text,
    transfer_syntax_info,
)
from engine.scan.result import PixelSpan, ScanResult, Value

__all__ = ["scan"]

ITEM = 0xFFFEE000  # PS3.5 7.5: Item
ITEM_DELIMITER = 0xFFFEE00D  # Item Delimitation Item
SEQUENCE_DELIMITER = 0xFFFEE0DD  # Sequence Delimitation Item
PIXEL_DATA = 0x7FE00010
EXTENDED_OFFSET_TABLE = 0x7FE00001
SPECIFIC_CHARACTER_SET = 0x00080005
NUMBER_OF_FRAMES = 0x00280008
UNDEFINED = 0xFFFFFFFF

EXPLICIT_VR_LITTLE_ENDIAN = SyntaxInfo(False, True, False, False)
_ALL_VRS = LONG_VRS | TEXT_VRS | NUMBER_VRS.keys() | {"AT"}


def _is_vr(b0: int, b1: int) -> bool:
    return 0x41 <= b0 <= 0x5A and 0x41 <= b1 <= 0x5A


def _tag_str(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _past_end(pos: int, length: int) -> MalformedDicomError:
    return MalformedDicomError(pos, f"value of length {length} runs past the end of the buffer")


def _header(
    mv: memoryview, pos: int, n: int, little: bool, implicit: bool
) -> tuple[int, str | None, int, int]:
    """(tag, VR or None, length, value start) of the element at `pos`; needs 8 bytes there."""
    e = "<" if little else ">"
    group, elem = unpack_from(e + "HH", mv, pos)
    tag = group << 16 | elem
    if implicit or group == 0xFFFE or not _is_vr(mv[pos + 4], mv[pos + 5]):
        return tag, None, unpack_from(e + "I", mv, pos + 4)[0], pos + 8
    vr = chr(mv[pos + 4]) + chr(mv[pos + 5])
    if vr in LONG_VRS:  # PS3.5 7.1.2: 2 reserved bytes, then a 32-bit length
        if n - pos < 12:
            raise MalformedDicomError(pos, "truncated element header")
        return tag, vr, unpack_from(e + "I", mv, pos + 8)[0], pos + 12
    return tag, vr, unpack_from(e + "H", mv, pos + 6)[0], pos + 8


def _skip_items(
    mv: memoryview, pos: int, n: int, little: bool, implicit: bool, depth: int, start: int
) -> int:
    """Skip the items of the undefined-length value beginning at `pos`; return where it ends."""
    if depth > MAX_DEPTH:
        raise MalformedDicomError(start, "nesting too deep")
    e = "<" if little else ">"
    while True:
        if pos >= n:
            raise MalformedDicomError(start, "no Sequence Delimitation Item before end of buffer")
        if n - pos < 8:
            raise MalformedDicomError(pos, "truncated item header")
        group, elem, length = unpack_from(e + "HHI", mv, pos)
        tag = group << 16 | elem
        if tag == SEQUENCE_DELIMITER:
            return pos + 8
        if tag != ITEM:
            raise MalformedDicomError(pos, f"expected an Item, found {_tag_str(tag)}")
        if length == UNDEFINED:
            pos = _skip_dataset(mv, pos + 8, n, little, implicit, depth, pos)
        elif length > n - pos - 8:
            raise _past_end(pos, length)
        else:
            pos += 8 + length


def _skip_dataset(
    mv: memoryview, pos: int, n: int, little: bool, implicit: bool, depth: int, start: int
) -> int:
    """Skip the elements of the undefined-length item beginning at `pos`; return where it ends."""
    while True:
        if pos >= n:
            raise MalformedDicomError(start, "no Item Delimitation Item before end of buffer")
        if n - pos < 8:
            raise MalformedDicomError(pos, "truncated element header")
        tag, vr, length, value = _header(mv, pos, n, little, implicit)
        if tag == ITEM_DELIMITER:
            return value
        if tag >> 16 == 0xFFFE:
            raise MalformedDicomError(pos, f"unexpected {_tag_str(tag)} inside an item")
        if length == UNDEFINED:
            # PS3.5 6.2.2: an undefined-length UN holds Implicit VR Little Endian items
            un = vr == "UN"
            pos = _skip_items(mv, value, n, little or un, implicit or un, depth + 1, pos)
        elif length > n - value:
            raise _past_end(pos, length)
        else:
            pos = value + length


def _encapsulated(
    mv: memoryview, pos: int, n: int, little: bool, start: int
) -> tuple[tuple[int, int], list[tuple[int, int]], int]:
    """(Basic Offset Table span, fragment spans, end) of encapsulated Pixel Data (PS3.5 A.4)."""
    e = "<" if little else ">"
    bot: tuple[int, int] | None = None
    fragments: list[tuple[int, int]] = []
    while True:
        if pos >= n:
            raise MalformedDicomError(start, "no Sequence Delimitation Item before end of buffer")
        if n - pos < 8:
            raise MalformedDicomError(pos, "truncated item header")
        group, elem, length = unpack_from(e + "HHI", mv, pos)
        tag = group << 16 | elem
        if tag == SEQUENCE_DELIMITER:
            if bot is None:
                bot = (pos, 0)  # no Basic Offset Table item at all: treat as empty
            return bot, fragments, pos + 8
        if tag != ITEM:
            raise MalformedDicomError(pos, f"expected an Item, found {_tag_str(tag)}")
        if length == UNDEFINED:
            raise MalformedDicomError(pos, "item of undefined length in encapsulated Pixel Data")
        if length > n - pos - 8:
            raise _past_end(pos, length)
        if bot is None:
            bot = (pos + 8, length)
        else:
            fragments.append((pos + 8, length))
        pos += 8 + length


def _decode(
    mv: memoryview,
    vr: str | None,
    tag: int,
    value: int,
    length: int,
    little: bool,
    charsets: tuple[str, ...],
) -> Value | None:
    """The value of SCANNED element `tag`, or None to leave it out."""
    if vr is None or vr == "UN" or vr not in _ALL_VRS:
        vr = BY_TAG[tag].vr
    if vr in TEXT_VRS:
        return decode_text(strip_text(bytes(mv[value : value + length]), vr), vr, charsets)
    code = NUMBER_VRS.get(vr)
    if code is None:
        return None
    size = 8 if code == "d" else 2 if code in "Hh" else 4
    if length == 0 or length % size:
        return None
    numbers = unpack_from(f"{'<' if little else '>'}{length // size}{code}", mv, value)
    result: Value = numbers[0] if len(numbers) == 1 else numbers
    return result


def _scan_dataset(
    mv: memoryview, start: int, syntax: SyntaxInfo, with_pixel: bool
) -> tuple[dict[str, Value], PixelSpan | None]:
    n = len(mv)
    little, implicit = syntax.little_endian, syntax.implicit_vr
    if little and implicit and n - start >= 8 and _is_vr(mv[start + 4], mv[start + 5]):
        implicit = False  # declared Implicit, but the first element carries a VR (pydicom too)
    found: dict[int, tuple[str | None, int, int]] = {}
    eot: tuple[int, int] | None = None
    pixel: PixelSpan | None = None
    bot = (0, 0)
    pos = start
    while pos < n:
        if n - pos < 8:
            raise MalformedDicomError(pos, "truncated element header")
        tag, vr, length, value = _header(mv, pos, n, little, implicit)
        if tag >> 16 == 0xFFFE:
            raise MalformedDicomError(pos, f"unexpected {_tag_str(tag)} at top level")
        if length == UNDEFINED:
            if tag == PIXEL_DATA:
                bot, fragments, end = _encapsulated(mv, value, n, little, pos)
                pixel = PixelSpan(pos, value, end, True, fragments)
                pos = end
            else:
                un = vr == "UN"  # PS3.5 6.2.2
                pos = _skip_items(mv, value, n, little or un, implicit or un, 1, pos)
            continue
        if length > n - value:
            raise _past_end(pos, length)
        if tag in BY_TAG:
            found[tag] = (vr, value, length)
        elif tag == PIXEL_DATA:
            pixel = PixelSpan(pos, value, value + length, False)
        elif tag == EXTENDED_OFFSET_TABLE:
            eot = (value, length)
        pos = value + length

    charsets: tuple[str, ...] = ()
    if SPECIFIC_CHARACTER_SET in found:
        vr, value, length = found[SPECIFIC_CHARACTER_SET]
        cs = _decode(mv, vr, SPECIFIC_CHARACTER_SET, value, length, little, ())
        if isinstance(cs, str):
            charsets = split_charsets(cs)
    attributes: dict[str, Value] = {}
    for tag, (vr, value, length) in sorted(found.items()):
        decoded = _decode(mv, vr, tag, value, length, little, charsets)
        if decoded is not None:
            attributes[BY_TAG[tag].keyword] = decoded
    if pixel is not None and pixel.encapsulated:
        pixel.frames = derive_frames(
            mv, pixel.fragments, bot, eot, attributes.get("NumberOfFrames"), syntax
        )
    return attributes, (pixel if with_pixel else None)


def _file_meta(mv: memoryview) -> tuple[int, int, dict[str, str]] | None:
    """(fmi_start, dataset_start, text values) of the File Meta Information, None if absent."""
    n = len(mv)
    if n >= 132 and mv[128:132].tobytes() == b"DICM":
        pos = 132  # PS3.10 7.1: 128-byte preamble, then the DICM prefix
    elif n >= 8 and mv[0] == 2 and mv[1] == 0 and _is_vr(mv[4], mv[5]):
        pos = 0  # group 0002 without the preamble
    else:
        return None
    start = pos
    fmi: dict[str, str] = {}
    # PS3.10 7.1: group 0002 is always Explicit VR Little Endian
    while n - pos >= 2 and mv[pos] == 2 and mv[pos + 1] == 0:
        if n - pos < 8:
            raise MalformedDicomError(pos, "truncated element header")
        tag, vr, length, value = _header(mv, pos, n, True, False)
        if length == UNDEFINED:
            raise MalformedDicomError(pos, "undefined length in File Meta Information")
        if length > n - value:
            raise _past_end(pos, length)
        keyword = FMI_KEYWORDS.get(tag)
        if keyword is not None and (vr is None or vr == "UN" or vr in TEXT_VRS):
            raw = strip_text(bytes(mv[value : value + length]), "UI")
            fmi[keyword] = decode_text(raw, "UI", ())
        pos = value + length
    return start, pos, fmi


def scan(buffer: bytes | bytearray | memoryview, transfer_syntax: str | None = None) -> ScanResult:
    """Read the File Meta Information, the SCANNED attributes and the Pixel Data span.

    Parameters
    ----------
    buffer : bytes, bytearray or memoryview
        A Part 10 file, or a bare dataset (as received over DIMSE).
    transfer_syntax : str, optional
        The transfer syntax UID of a bare dataset; ignored when the buffer has
        File Meta Information with a Transfer Syntax UID.

    Returns
    -------
    ScanResult
        Offsets are absolute positions in `buffer`.

    Raises
    ------
    NotDicomError
        If there is neither File Meta Information nor `transfer_syntax`.
    UnsupportedTransferSyntaxError
        If the transfer syntax UID is unknown.
    MalformedDicomError
        If the encoding breaks PS3.5 framing; ``offset`` says where.
    """
    mv = memoryview(buffer)
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    meta = _file_meta(mv)
    if meta is None:
        if transfer_syntax is None:
            raise NotDicomError("no File Meta Information and no transfer syntax given")
        fmi_start = dataset_start = 0
        fmi: dict[str, str] = {}
    else:
        fmi_start, dataset_start, fmi = meta
    uid = fmi.get("TransferSyntaxUID") or transfer_syntax
    if uid is None:
        n = len(mv)
        explicit = n - dataset_start >= 6 and _is_vr(mv[dataset_start + 4], mv[dataset_start + 5])
        uid = "1.2.840.10008.1.2.1" if explicit else "1.2.840.10008.1.2"
    syntax = transfer_syntax_info(uid)
    if syntax.deflated:
        inflated = memoryview(inflate(mv[dataset_start:], dataset_start))
        attributes, _ = _scan_dataset(inflated, 0, EXPLICIT_VR_LITTLE_ENDIAN, False)
        return ScanResult(uid, dataset_start, fmi_start, fmi, attributes, None, True)
    attributes, pixel = _scan_dataset(mv, dataset_start, syntax, True)
    return ScanResult(uid, dataset_start, fmi_start, fmi, attributes, pixel)
