"""DICOM JSON (PS3.18 F.2) straight from an instance's stored metadata part.

The metadata part is Part 10 bytes without Pixel Data
(:meth:`engine.archive.Archive.read_metadata`). This module walks its
encoded elements once and builds the orjson-ready DICOM JSON object with no
pydicom Dataset: a series' metadata is a loop over byte strings, not over
thousands of DataElement objects.

What it does, element by element (PS3.18 F.2.2-F.2.7):

- the transfer syntax of the File Meta Information decides the encoding:
  Implicit VR Little Endian, Explicit VR Big Endian, Deflated Explicit VR
  Little Endian (inflated first) or Explicit VR Little Endian for the rest;
- implicit VRs come from the data dictionary (private creators ``LO``, other
  private elements ``UN``); ``UN`` of a tag the dictionary knows is read as
  the dictionary's VR, in Implicit VR Little Endian, as pydicom does;
- text is decoded with the Specific Character Set in scope (an item may
  change it), through :func:`pydicom.charset.decode_bytes`;
- IS and DS become JSON numbers (a broken one stays text), the binary
  numeric VRs numbers, AT hex text, PN an object of component groups;
- binary values longer than :data:`BULK_INLINE_MAX` bytes become a
  ``BulkDataURI`` (the path of tags and item indices after ``bulkdata/``),
  shorter ones ``InlineBinary``; Pixel Data is never read, only announced
  (encapsulated Pixel Data, which only a deflated instance keeps in its
  metadata part, is always a ``BulkDataURI``).

Standard-allowed differences from pydicom's ``Dataset.to_json_dict`` (the
reference of the differential test): group lengths are left out (F.2.1
does not carry them); an empty sequence has no ``Value`` and an empty
string within a multi-valued element is ``null`` (F.2.5); empty PN
component groups are left out (F.2.2); leading and trailing padding of
AE, CS, DA, DT, TM, IS and DS values is removed (PS3.5 6.2 calls it not
significant).
"""

from __future__ import annotations

import base64
import functools
import math
import struct
import warnings
import zlib
from collections.abc import Callable
from typing import Any

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, private_dictionary_VR

from engine.errors import MalformedDicomError
from engine.web.dicomjson import pn_value

PIXEL_DATA = "7FE00010"
BULK_INLINE_MAX = 768  # bytes: pydicom's rule for a 1024-character base64 threshold (3/4 of it)

_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"})
_COMPRESSED_PREFIXES = ("1.2.840.10008.1.2.4.", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.8")

_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UR", b"UT", b"UN"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_NUMERIC = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
_NUMERIC_SIZE = {vr: struct.calcsize("<" + code) for vr, code in _NUMERIC.items()}
_CHARSET_MULTI = frozenset({"SH", "LO", "UC"})
_CHARSET_SINGLE = frozenset({"ST", "LT", "UT"})
_DELIMS = {"PN": {0x5E, 0x3D, 0x5C}, "multi": {0x5C}, "single": {0x0D, 0x0A, 0x09, 0x0C}}

ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF

UriFor = Callable[[list[str]], str]


def metadata_to_json(data: bytes, has_pixel: bool, uri_for: UriFor | None) -> dict[str, Any]:
    """The DICOM JSON object of one stored instance.

    Parameters
    ----------
    data
        The metadata part, as :meth:`engine.archive.Archive.read_metadata` returns it.
    has_pixel
        Whether the instance has Pixel Data (kept in the pixel part, not in `data`).
    uri_for
        Makes a BulkDataURI from a tag path (``["00540016", "0", "00181072"]``);
        None puts every binary value inline.

    Raises
    ------
    engine.errors.MalformedDicomError
        If the bytes are not a complete encoded dataset.
    """
    ts, out = _walk(data, uri_for, None)
    if has_pixel and uri_for is not None and PIXEL_DATA not in out:
        bits = out.get("00280100", {}).get("Value", [16])[0]
        compressed = ts.startswith(_COMPRESSED_PREFIXES) or ts in _DEFLATED
        vr = "OB" if compressed or (isinstance(bits, int) and bits <= 8) else "OW"
        out[PIXEL_DATA] = {"vr": vr, "BulkDataURI": uri_for([PIXEL_DATA])}
    return out


def bulk_value(data: bytes, path: list[str]) -> bytes | None:
    """The bytes of the binary value at `path` (a BulkDataURI's tag path), or None.

    The same walk as :func:`metadata_to_json`, so a path it handed out is
    found again, UN elements read as their known VR included.
    """
    found: dict[str, bytes] = {}
    _walk(data, None, found)
    return found.get("/".join(p.upper() for p in path))


def _walk(data: bytes, uri_for: UriFor | None,
          binary: dict[str, bytes] | None) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """(transfer syntax, DICOM JSON object) of a metadata part."""
    ts, start = _file_meta(data)
    body = data
    if ts in _DEFLATED:
        try:
            body, start = zlib.decompress(data[start:], -zlib.MAX_WBITS), 0
        except zlib.error as exc:
            raise MalformedDicomError(start, f"deflated dataset: {exc}") from exc
    walk = _Walk(body, ts != _IMPLICIT_LE, ts != _EXPLICIT_BE, uri_for)
    walk.binary = binary
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns of odd charsets; it falls back itself
            out, _ = walk.dataset(start, len(body), [], ["ISO_IR 6"], {})
    except struct.error as exc:  # an element header cut short: ingest should have refused it
        raise MalformedDicomError(len(body), f"metadata part ends in an element: {exc}") from exc
    return ts, out


def _file_meta(data: bytes) -> tuple[str, int]:
    """(transfer syntax, offset of the dataset) from a Part 10 header."""
    if len(data) < 132 or data[128:132] != b"DICM":
        raise MalformedDicomError(128, "metadata part without the DICM prefix")
    pos, ts = 132, ""
    while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
        element = int.from_bytes(data[pos + 2 : pos + 4], "little")
        if data[pos + 4 : pos + 6] in _LONG_VRS:
            length, value_at = int.from_bytes(data[pos + 8 : pos + 12], "little"), pos + 12
        else:
            length, value_at = int.from_bytes(data[pos + 6 : pos + 8], "little"), pos + 8
        if element == 0x0010:
            ts = data[value_at : value_at + length].decode("ascii", "replace").rstrip("\0 ")
        pos = value_at + length
    return ts, pos


@functools.lru_cache(maxsize=64)
def _python_encodings(charset: tuple[str, ...]) -> list[str]:
    try:
        return list(convert_encodings(list(charset)))
    except (ValueError, LookupError):  # a term codecs cannot even look up: the default repertoire
        return list(convert_encodings(["ISO_IR 6"]))


@functools.lru_cache(maxsize=4096)
def _private_vr(tag: int, creator: str) -> str:
    """A private element's VR from pydicom's private dictionary; UN when it is not known."""
    try:
        vr = str(private_dictionary_VR(tag, creator))
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]


def _creator(tag: int, out: dict[str, Any]) -> str | None:
    """The private creator of `tag`'s block, from the elements already read."""
    block = (tag >> 8) & 0xFF
    if block < 0x10:
        return None
    value = out.get(f"{tag >> 16:04X}00{block:02X}", {}).get("Value")
    return str(value[0]) if value else None


@functools.lru_cache(maxsize=4096)
def _implicit_vr(tag: int) -> str:
    """The VR of an element without one on the wire (Implicit VR, or a known tag sent as UN)."""
    if (tag >> 16) & 1:  # private group
        return "LO" if 0x10 <= tag & 0xFFFF <= 0xFF else "UN"
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return "UN"
    if vr == "OB or OW":
        return "OW"
    if vr.startswith("US or SS"):
        return "US or SS"  # resolved against Pixel Representation where it is read
    return vr.split(" or ")[0]


_KEYS: dict[int, str] = {}  # tag -> "0020000D": a few hundred tags recur in every instance


def _key(tag: int) -> str:
    key = f"{tag:08X}"
    if len(_KEYS) < 65536:  # private tags are endless in principle; keep the cache bounded
        _KEYS[tag] = key
    return key


class _Walk:
    """One pass over an encoded dataset; `little` and `explicit` fix its byte layout."""

    def __init__(self, buf: bytes, explicit: bool, little: bool,
                 uri_for: UriFor | None) -> None:  # fmt: skip
        self.buf = buf
        self.explicit, self.little = explicit, little
        self.prefix = "<" if little else ">"
        self.short_header = struct.Struct(self.prefix + "HH2sH")
        self.length = struct.Struct(self.prefix + "L")
        self.uri_for = uri_for
        self.binary: dict[str, bytes] | None = None  # set by bulk_value: every binary value

    def header(self, pos: int) -> tuple[int, bytes | None, int, int]:
        """(tag, VR as written or None, value length, value offset) of the element at `pos`."""
        group, element, vr, short = self.short_header.unpack_from(self.buf, pos)
        tag = group << 16 | element
        if group == 0xFFFE or not self.explicit or not vr.isalpha():
            # items have no VR; a broken writer may go implicit inside explicit (pydicom copes)
            return tag, None, self.length.unpack_from(self.buf, pos + 4)[0], pos + 8
        if vr in _LONG_VRS:
            return tag, vr, self.length.unpack_from(self.buf, pos + 8)[0], pos + 12
        return tag, vr, short, pos + 8

    def dataset(self, pos: int, end: int, path: list[str], charset: list[str],
                parent: dict[str, Any]) -> tuple[dict[str, Any], int]:  # fmt: skip
        """Elements from `pos` to `end` or to an item delimiter; (JSON object, next offset)."""
        out: dict[str, Any] = {}
        end = min(end, len(self.buf))
        while pos + 8 <= end:
            tag, raw_vr, length, at = self.header(pos)
            if tag == ITEM_END:
                return out, at
            if tag == SEQ_END:  # a stray delimiter ends the dataset like pydicom's reader
                return out, at
            vr = raw_vr.decode("ascii") if raw_vr is not None else _implicit_vr(tag)
            key = _KEYS.get(tag) or _key(tag)
            if vr == "UN":
                known = _implicit_vr(tag)
                if known == "UN" and tag >> 16 & 1:
                    creator = _creator(tag, out)
                    known = _private_vr(tag, creator) if creator else "UN"
                if known != "UN":
                    vr = known
                    if vr == "SQ" or length == UNDEFINED:  # a sequence sent as UN is implicit LE
                        implicit = _Walk(self.buf, False, True, self.uri_for)
                        implicit.binary = self.binary
                        doc, pos = implicit.sequence(at, length, [*path, key], charset, out)
                        out[key] = doc
                        continue
            if vr == "US or SS":
                vr = "SS" if _pixel_representation(out, parent) == 1 else "US"
            if vr == "SQ" or (length == UNDEFINED and vr == "UN"):
                doc, pos = self.sequence(at, length, [*path, key], charset, out)
                if tag & 0xFFFF:
                    out[key] = doc
                continue
            if length == UNDEFINED:  # encapsulated Pixel Data: announce it, skip its items
                pos = self._skip_fragments(at)
                if self.uri_for is not None:
                    out[key] = {"vr": vr, "BulkDataURI": self.uri_for([*path, key])}
                continue
            pos = at + length
            if tag & 0xFFFF == 0:  # group lengths carry nothing in JSON
                continue
            value = self.buf[at:pos]  # a slice past the end stops at it
            if tag == 0x00080005:
                charset = _charset_terms(value)
            out[key] = self.element(vr, value, [*path, key], charset)
        return out, pos

    def sequence(self, pos: int, length: int, path: list[str], charset: list[str],
                 parent: dict[str, Any]) -> tuple[dict[str, Any], int]:  # fmt: skip
        end = len(self.buf) if length == UNDEFINED else min(pos + length, len(self.buf))
        items: list[dict[str, Any]] = []
        while pos + 8 <= end:
            tag, _, item_length, at = self.header(pos)
            if tag == SEQ_END:
                pos = at
                break
            if tag != ITEM:
                raise MalformedDicomError(pos, f"{'/'.join(path)}: {tag:08X} where an item belongs")
            item_end = len(self.buf) if item_length == UNDEFINED else at + item_length
            item, pos = self.dataset(at, item_end, [*path, str(len(items))], charset, parent)
            if item_length != UNDEFINED:
                pos = item_end
            items.append(item)
        if length != UNDEFINED:
            pos = max(pos, end)
        return ({"vr": "SQ", "Value": items} if items else {"vr": "SQ"}), pos

    def _skip_fragments(self, pos: int) -> int:
        while pos + 8 <= len(self.buf):
            tag, _, length, at = self.header(pos)
            if tag == SEQ_END:
                return at
            pos = at + length
        return len(self.buf)

    def element(self, vr: str, value: bytes, path: list[str],
                charset: list[str]) -> dict[str, Any]:  # fmt: skip
        if not value:
            return {"vr": vr}
        if vr in _BINARY_VRS:
            if self.binary is not None:
                self.binary["/".join(path)] = value
            if self.uri_for is not None and len(value) > BULK_INLINE_MAX:
                return {"vr": vr, "BulkDataURI": self.uri_for(path)}
            return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
        if vr in _NUMERIC:
            size = _NUMERIC_SIZE[vr]
            count = len(value) // size
            nums = struct.unpack(f"{self.prefix}{count}{_NUMERIC[vr]}", value[: count * size])
            return {"vr": vr, "Value": list(nums)} if nums else {"vr": vr}
        if vr == "AT":
            n = len(value) // 2
            half = struct.unpack(f"{self.prefix}{n}H", value[: n * 2])
            tags = [f"{half[i]:04X}{half[i + 1]:04X}" for i in range(0, n - 1, 2)]
            return {"vr": vr, "Value": tags} if tags else {"vr": vr}
        raw = value
        if vr in _CHARSET_SINGLE:
            text = decode_bytes(raw, _python_encodings(tuple(charset)), _DELIMS["single"])
            text = text.rstrip("\0 ")
            return {"vr": vr, "Value": [text]} if text else {"vr": vr}
        if vr == "PN":
            text = decode_bytes(raw.rstrip(b"\0 "), _python_encodings(tuple(charset)),
                                _DELIMS["PN"])  # fmt: skip
            names = [pn_value(v.rstrip(" ")) if v.strip() else None for v in text.split("\\")]
            return _values(vr, names)
        if vr in _CHARSET_MULTI:
            text = decode_bytes(raw, _python_encodings(tuple(charset)), _DELIMS["multi"])
            return _values(vr, [v.rstrip("\0 ") for v in text.split("\\")])
        text = raw.decode("latin-1")
        if vr == "UR":
            text = text.rstrip(" ")
            return {"vr": vr, "Value": [text]} if text else {"vr": vr}
        if vr == "UI":
            return _values(vr, [v.strip("\0 ") for v in text.split("\\")])
        if vr == "IS" or vr == "DS":
            return _values(vr, [_number(vr, v) for v in text.split("\\")])
        return _values(vr, [v.strip("\0 ") for v in text.split("\\")])  # AE CS DA DT TM AS


def _values(vr: str, items: list[Any]) -> dict[str, Any]:
    out = [None if v == "" else v for v in items]
    if out.count(None) == len(out):
        return {"vr": vr}
    return {"vr": vr, "Value": out}


def _number(vr: str, text: str) -> int | float | str | None:
    text = text.strip("\0 ")
    if not text:
        return None
    try:
        if vr == "IS":
            return int(text)
        value = float(text)
    except ValueError:
        try:  # IS written as "12.0": pydicom accepts an integral float
            as_float = float(text)
        except ValueError:
            return text  # a broken stored value goes out as text rather than not at all
        return int(as_float) if as_float.is_integer() else text
    return value if math.isfinite(value) else text


def _charset_terms(value: bytes) -> list[str]:
    terms = [t.strip() for t in value.decode("ascii", "replace").rstrip("\0 ").split("\\")]
    if terms and not terms[0]:
        terms[0] = "ISO_IR 6"  # an empty first value: the default repertoire (PS3.3 C.12.1.1.2)
    return [t for t in terms if t] or ["ISO_IR 6"]


def _pixel_representation(current: dict[str, Any], parent: dict[str, Any]) -> int:
    for scope in (current, parent):
        value = scope.get("00280103", {}).get("Value")
        if value:
            return int(value[0])
    return 0
