"""What both scan backends share, written once in Python.

The native walker (``ext/scan.pyx``) and the pure-Python reference
(``_scan_py.py``) call into this module for the parts that are not on the
per-element hot path, so that they cannot drift apart there:

- :func:`transfer_syntax_info`: which UIDs are accepted and how each encodes
  its dataset (PS3.5 10 and Annex A);
- :func:`decode_text`: text values that are not plain ASCII, decoded with
  pydicom's character set machinery (PS3.5 6.1);
- :func:`inflate`: Deflated Explicit VR Little Endian (PS3.5 A.5), with a cap
  on the inflated size;
- :func:`derive_frames`: which fragments of encapsulated Pixel Data make up
  each frame (PS3.5 A.4).
"""

from __future__ import annotations

import functools
import struct
import warnings
import zlib
from typing import NamedTuple

import pydicom.uid
from pydicom._uid_dict import UID_dictionary
from pydicom.charset import convert_encodings, decode_bytes, default_encoding

from engine.errors import MalformedDicomError, UnsupportedTransferSyntaxError

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
JPIP_REFERENCED_DEFLATE = "1.2.840.10008.1.2.4.95"
PAPYRUS_3_IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.20"

# Deepest nesting of sequences the scanner follows before calling the input broken.
MAX_DEPTH = 64
# Inflated datasets may grow this much over their compressed size (plus a floor), never past 2 GiB.
INFLATE_RATIO_MAX = 64
INFLATE_FLOOR_BYTES = 1 << 16
INFLATE_MAX_BYTES = 2 << 30

# PS3.5 7.1.2: these VRs have a 2-byte reserved field and a 32-bit length.
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
# PS3.5 6.2: VRs whose value is character text.
TEXT_VRS = frozenset(
    [
        "AE",
        "AS",
        "CS",
        "DA",
        "DS",
        "DT",
        "IS",
        "LO",
        "LT",
        "PN",
        "SH",
        "ST",
        "TM",
        "UC",
        "UI",
        "UR",
        "UT",
    ]
)
# PS3.5 6.2: leading spaces are significant in these, so only trailing padding is removed.
KEEP_LEADING_VRS = frozenset({"LT", "ST", "UT"})
# Binary numbers the scanner decodes: VR -> struct format character.
NUMBER_VRS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}

# PS3.10 7.1: group 0002 text elements reported in ScanResult.fmi.
FMI_KEYWORDS = {
    0x00020002: "MediaStorageSOPClassUID",
    0x00020003: "MediaStorageSOPInstanceUID",
    0x00020010: "TransferSyntaxUID",
    0x00020012: "ImplementationClassUID",
    0x00020013: "ImplementationVersionName",
    0x00020016: "SourceApplicationEntityTitle",
    0x00020017: "SendingApplicationEntityTitle",
    0x00020018: "ReceivingApplicationEntityTitle",
    0x00020026: "SourcePresentationAddress",
    0x00020027: "SendingPresentationAddress",
    0x00020028: "ReceivingPresentationAddress",
    0x00020031: "RTVSourceIdentifier",
    0x00020033: "RTVFlag",
    0x00020100: "PrivateInformationCreatorUID",
}

# Encapsulated syntaxes whose frames end with an FFD9 marker (JPEG EOI, JPEG 2000 EOC).
_EOI_PREFIXES = tuple(
    "1.2.840.10008.1.2.4." + suffix for suffix in ("5", "6", "70", "8", "9", "20")
)


class SyntaxInfo(NamedTuple):
    """How a transfer syntax encodes the dataset."""

    implicit_vr: bool
    little_endian: bool
    deflated: bool
    eoi_frames: bool  # frames of encapsulated data can be found by their FFD9 marker


@functools.cache
def _known_uids() -> frozenset[str]:
    known = {str(uid) for uid in pydicom.uid.AllTransferSyntaxes}
    known.update(k for k, v in UID_dictionary.items() if v[1] == "Transfer Syntax")
    return frozenset(known)


def transfer_syntax_info(uid: str) -> SyntaxInfo:
    """How the dataset of transfer syntax `uid` is encoded.

    Parameters
    ----------
    uid : str
        A transfer syntax UID, without padding.

    Returns
    -------
    SyntaxInfo
        VR encoding, byte order, deflation, and whether frames end in FFD9.

    Raises
    ------
    UnsupportedTransferSyntaxError
        If neither the standard nor pydicom's registered private syntaxes know `uid`.
    """
    info = _SYNTAXES.get(uid)
    if info is None:
        if uid not in _known_uids() and uid not in pydicom.uid.PrivateTransferSyntaxes:
            raise UnsupportedTransferSyntaxError(uid, "unknown transfer syntax UID")
        info = _syntax_info(uid)
        _SYNTAXES[uid] = info
    return info


def _syntax_info(uid: str) -> SyntaxInfo:
    private = {str(u): u for u in pydicom.uid.PrivateTransferSyntaxes}
    if uid in private:
        u = private[uid]
        return SyntaxInfo(u.is_implicit_VR, u.is_little_endian, u.is_deflated, False)
    implicit = uid in (IMPLICIT_VR_LITTLE_ENDIAN, PAPYRUS_3_IMPLICIT_VR_LITTLE_ENDIAN)
    # PS3.5 A.5 and A.7: JPIP Referenced Deflate deflates its dataset like 1.2.1.99.
    deflated = uid in (DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, JPIP_REFERENCED_DEFLATE)
    eoi = uid.startswith(_EOI_PREFIXES)
    return SyntaxInfo(implicit, uid != EXPLICIT_VR_BIG_ENDIAN, deflated, eoi)


_SYNTAXES: dict[str, SyntaxInfo] = {}


def strip_text(raw: bytes, vr: str) -> bytes:
    """`raw` without trailing spaces and NULs, nor leading spaces unless `vr` is LT, ST or UT."""
    raw = raw.rstrip(b" \x00")
    return raw if vr in KEEP_LEADING_VRS else raw.lstrip(b" ")


def is_plain_ascii(raw: bytes) -> bool:
    """True when `raw` decodes the same in every DICOM character set: 7-bit, no ISO 2022 ESC."""
    return raw.isascii() and b"\x1b" not in raw


@functools.cache
def _python_encodings(charsets: tuple[str, ...]) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown terms fall back to the default, as in pydicom
        try:
            return list(convert_encodings(list(charsets) or None))
        except (LookupError, ValueError):  # terms pydicom cannot even look up: NULs, junk
            return [default_encoding]


# PS3.5 6.1.2.5.3, ISO 2022 IR 58: the escape sequence that designates GB 2312 to G1
GB2312_DESIGNATION = "\x1b$)A"
# PS3.5 6.1.2.5.3: ISO 2022 code extensions return to the initial state at these delimiters.
# PS3.5 6.1.3: TAB, LF, FF and CR (pydicom's TEXT_VR_DELIMS), and the backslash between values.
_TEXT_DELIMS = {0x09, 0x0A, 0x0C, 0x0D, 0x5C}
_PN_DELIMS = _TEXT_DELIMS | {0x5E, 0x3D}


def decode_text(raw: bytes, vr: str, charsets: tuple[str, ...]) -> str:
    """Decode one stripped text value in the Specific Character Set `charsets`.

    Parameters
    ----------
    raw : bytes
        The value, already stripped with :func:`strip_text`.
    vr : str
        Its VR; PN component delimiters reset ISO 2022 code extensions.
    charsets : tuple of str
        The defined terms of Specific Character Set (0008,0005), empty for the default.

    Returns
    -------
    str
        The whole value, backslashes kept. Bytes invalid in the character set are
        replaced rather than refused, as pydicom does.
    """
    if is_plain_ascii(raw):
        return raw.decode("ascii")
    delims = _PN_DELIMS if vr == "PN" else _TEXT_DELIMS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = decode_bytes(raw, _python_encodings(charsets), delims)
    if GB2312_DESIGNATION in text:
        # pydicom hands the fragment after ESC $ ) A to Python's gb2312 codec,
        # which keeps the escape sequence as text ("Wang^\x1b$)A王"): drop it.
        text = text.replace(GB2312_DESIGNATION, "")
    return text


def split_charsets(value: str) -> tuple[str, ...]:
    """The defined terms of a Specific Character Set value (PS3.3 C.12.1.1.2)."""
    return tuple(term.strip() for term in value.split("\\"))


def inflate(data: memoryview, offset: int) -> bytes:
    """Inflate a raw deflate stream (PS3.5 A.5), refusing decompression bombs.

    Parameters
    ----------
    data : memoryview
        The deflated dataset, from the first byte after the File Meta Information.
    offset : int
        Where `data` starts in the scanned buffer, for error messages.

    Returns
    -------
    bytes
        The Explicit VR Little Endian dataset.

    Raises
    ------
    MalformedDicomError
        If the stream is invalid or inflates past ``INFLATE_RATIO_MAX`` times its size.
    """
    cap = min(INFLATE_RATIO_MAX * len(data) + INFLATE_FLOOR_BYTES, INFLATE_MAX_BYTES)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, cap + 1)
    except zlib.error as exc:
        raise MalformedDicomError(offset, f"invalid deflate stream ({exc})") from exc
    if len(out) > cap:
        del out  # the traceback keeps this frame: don't let it keep the inflated bytes too
        raise MalformedDicomError(offset, f"deflated dataset inflates past {cap} bytes")
    if not inflater.eof:  # bytes after the final block (padding) are ignored, a cut one is not
        raise MalformedDicomError(offset, "deflate stream ends before its final block")
    return out


def _table_frames(
    table: bytes, item_size: int, fmt: str, starts: dict[int, int]
) -> list[tuple[int, int]] | None:
    # PS3.5 A.4: each offset is that of the first fragment's Item tag of a frame, counted
    # from the first fragment after the Basic Offset Table.
    if not table or len(table) % item_size:
        return None
    code = "Q" if item_size == 8 else "I"
    offsets = struct.unpack(f"{fmt}{len(table) // item_size}{code}", table)
    firsts: list[int] = []
    for off in offsets:
        index = starts.get(off)
        if index is None or (firsts and index <= firsts[-1]):
            return None  # not on a fragment boundary, or not increasing: ignore the table
        firsts.append(index)
    if firsts[0] != 0:
        return None
    bounds = [*firsts, len(starts)]
    return [(bounds[i], bounds[i + 1] - bounds[i]) for i in range(len(firsts))]


def _number_of_frames(value: object) -> int:
    try:
        frames = int(str(value).strip())
    except ValueError:
        return 1
    return frames if frames > 0 else 1


def derive_frames(
    buffer: memoryview,
    fragments: list[tuple[int, int]],
    bot: tuple[int, int],
    eot: tuple[int, int] | None,
    number_of_frames: object,
    syntax: SyntaxInfo,
) -> list[tuple[int, int]]:
    """The (first fragment, fragment count) of each frame of encapsulated Pixel Data.

    Parameters
    ----------
    buffer : memoryview
        The scanned buffer.
    fragments : list of (int, int)
        (offset, length) of each fragment value, Basic Offset Table excluded.
    bot : (int, int)
        (offset, length) of the Basic Offset Table value.
    eot : (int, int) or None
        (offset, length) of the Extended Offset Table (7FE0,0001) value, if present.
    number_of_frames : object
        The scanned Number of Frames (0028,0008), or None; unparsable means 1.
    syntax : SyntaxInfo
        The transfer syntax, for byte order and FFD9 frame ends.

    Returns
    -------
    list of (int, int)
        From the Extended Offset Table, else the Basic Offset Table (either is
        ignored when its offsets do not fall on fragment boundaries), else one
        frame per fragment when Number of Frames equals the fragment count, else
        frames ending at fragments with an FFD9 marker in their last 10 bytes when
        that yields exactly Number of Frames (JPEG family only), else one frame.
    """
    count = len(fragments)
    if not count:
        return []
    fmt = "<" if syntax.little_endian else ">"
    first = fragments[0][0]
    starts = {off - first: i for i, (off, _) in enumerate(fragments)}
    for span, size in ((eot, 8), (bot, 4)):
        if span is not None:
            table = bytes(buffer[span[0] : span[0] + span[1]])
            frames = _table_frames(table, size, fmt, starts)
            if frames is not None:
                return frames
    wanted = _number_of_frames(number_of_frames) if number_of_frames is not None else 1
    if wanted == count:
        return [(i, 1) for i in range(count)]
    if wanted > 1 and syntax.eoi_frames and count > wanted:
        frames, begin = [], 0
        for i, (off, length) in enumerate(fragments):
            if b"\xff\xd9" in bytes(buffer[off + max(length - 10, 0) : off + length]):
                frames.append((begin, i + 1 - begin))
                begin = i + 1
        if begin < count:
            frames.append((begin, count - begin))
        if len(frames) == wanted:
            return frames
    return [(0, count)]
