"""C-FIND response identifiers built from index attributes, values encoded once.

A match used to become a pydicom Dataset of DataElements (each value
validated and converted), then pynetdicom's ``encode`` converted every
value again to bytes. Here the text values the index holds (PS3.5 6.2: all
the VRs of the usual keys are character strings) are encoded to bytes once,
padded to even length, and kept as RawDataElements in the encoding of the
presentation context; pydicom's writer copies raw elements as they are.
Values of other VRs (binary US, DS floats) and the keys we do not know go
through ordinary DataElements, exactly as before.

The character set is chosen by :func:`engine.net.charset.answer_charset`:
the query's when every value fits it, else UTF-8 (``ISO_IR 192``). An
ASCII answer (the common case) is encoded as before, byte for byte, with
(0008,0005) only when the query carried it; the values of an answer that
is not ASCII are encoded by pydicom's own functions
(:func:`engine.net.charset.encode_text`).

Where the presentation context allows (not deflated: the fast path),
:class:`AnswerEncoder` writes an ASCII answer's elements straight to bytes,
the same bytes pydicom's writer makes of :func:`answer_dataset`'s Dataset
(the tests compare them), in a tenth of the time; an answer it cannot write
(a value that is not ASCII, a binary VR it does not know) goes the Dataset
way.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from engine.net.charset import answer_charset, encode_text, python_encodings

SPECIFIC_CHARACTER_SET = 0x00080005
QUERY_RETRIEVE_LEVEL = 0x00080052
RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056
# PS3.5 6.2: character string VRs, encoded as the value's text; UI pads with NUL, others space
TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "IS", "LO", "LT", "PN", "SH", "ST",
                      "TM", "UC", "UI", "UR", "UT"})  # fmt: skip
TEXT_VALUES = (str, int)  # int only for IS (counts), written as its decimal digits


# PS3.5 7.1.2: explicit VRs with a 2-byte reserved field and a 4-byte length
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT",
                      "UV"})  # fmt: skip
BINARY_INTS = {"US": "H", "UL": "I", "SS": "h", "SL": "i"}  # one value, as the index holds it


class Encoding:
    """How the answers of one C-FIND are encoded: the presentation context's transfer syntax,
    and whether they may be handed on as bytes (:class:`AnswerEncoder`) instead of Datasets."""

    __slots__ = ("as_bytes", "implicit_vr", "little_endian")

    def __init__(self, implicit_vr: bool, little_endian: bool, as_bytes: bool = False) -> None:
        self.implicit_vr, self.little_endian = implicit_vr, little_endian
        self.as_bytes = as_bytes


def text_value(value: str | int | None, vr: str, charset: str) -> bytes:
    """A text value as its element's bytes: encoded in `charset`, padded to even length."""
    if value is None:
        return b""
    raw = str(value).encode(charset)
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return raw


def is_text(value: Any, vr: str) -> bool:
    """Whether :func:`text_value` encodes `value` as pydicom's writer would (or it is empty)."""
    if value is None:  # empty: no bytes to encode whatever the VR (but a sequence)
        return len(vr) == 2 and vr != "SQ"
    if isinstance(value, bool) or not isinstance(value, TEXT_VALUES):
        return False
    return vr in TEXT_VRS and (isinstance(value, str) or vr == "IS")


def answer_dataset(
    columns: list[tuple[str, int, str]],
    attrs: dict[str, Any],
    level: str,
    local: dict[int, tuple[str, str]],
    unknown: list[tuple[int, str]],
    encoding: Encoding,
    charset: tuple[str, ...] | None = None,
) -> Dataset:
    """One pending C-FIND response identifier.

    Parameters
    ----------
    columns
        (keyword, tag, VR) of the keys to return (:func:`engine.search.answer_columns`).
    attrs
        The match's attributes; a missing one is returned empty.
    level
        The Query/Retrieve Level, returned as QueryRetrieveLevel.
    local
        Keys we answer ourselves: tag -> (VR, value) (RetrieveAETitle...).
    unknown
        (tag, VR) of keys we do not support, returned empty (PS3.4 C.2.2.1.2).
    encoding
        The transfer syntax of the C-FIND's presentation context.
    charset
        The terms of the query's Specific Character Set
        (:func:`engine.net.charset.query_charset`); None if it had none.
    """
    values: list[tuple[int, str, Any]] = [
        (tag, vr, level if keyword == "QueryRetrieveLevel" else attrs.get(keyword))
        for keyword, tag, vr in columns
    ]
    values.extend((tag, vr, value) for tag, (vr, value) in local.items())
    non_ascii = any(isinstance(v, str) and not v.isascii() for _, _, v in values)
    implicit, little = encoding.implicit_vr, encoding.little_endian
    elements: dict[Any, Any] = {}
    slow: list[tuple[int, str, Any]] = []
    terms = encodings = None
    if non_ascii:
        texts = [v for _, _, v in values if isinstance(v, str) and not v.isascii()]
        terms = answer_charset(charset, texts)
        assert terms is not None  # a value that is not ASCII always names its set
        encodings = python_encodings(terms)
    elif charset is not None:
        terms = answer_charset(charset, ())
    if terms is not None:
        values.append((SPECIFIC_CHARACTER_SET, "CS", "\\".join(terms)))
    for tag, vr, value in values:
        if is_text(value, vr):
            if encodings is not None and isinstance(value, str) and not value.isascii():
                raw = encode_text(value, vr, encodings)
                raw += b" " if len(raw) % 2 else b""
            else:
                raw = text_value(value, vr, "ascii")
            t = Tag(tag)
            elements[t] = RawDataElement(t, vr, len(raw), raw, 0, implicit, little)
        else:
            slow.append((tag, vr, value))
    ds = Dataset(elements)
    for tag, vr, value in slow:
        ds.add_new(tag, vr, "" if value is None else value)
    for tag, vr in unknown:
        if Tag(tag) not in ds:
            ds.add_new(tag, vr, None)
    # the raw values are in the context's encoding and character set: written as they are
    ds.set_original_encoding(implicit, little, _read_charset(terms))
    return ds


class AnswerEncoder:
    """The answers of one C-FIND, written straight to bytes when they are plain ASCII.

    Built once per query from :func:`answer_dataset`'s arguments (but the
    match): the elements it returns, in tag order, with their headers
    encoded once; the constant ones (the level, our local keys, the
    character set, unknown keys returned empty) whole. :meth:`encode` is
    None for an answer that must go :func:`answer_dataset`'s way.
    """

    __slots__ = ("_slots", "writable")

    def __init__(
        self,
        columns: list[tuple[str, int, str]],
        level: str,
        local: dict[int, tuple[str, str]],
        unknown: list[tuple[int, str]],
        encoding: Encoding,
        charset: tuple[str, ...] | None = None,
    ) -> None:
        # tag -> (VR, keyword of an index value or None, constant value): answer_dataset's order
        entries: dict[int, tuple[str, str | None, Any]] = {
            tag: (vr, None, level) if keyword == "QueryRetrieveLevel" else (vr, keyword, None)
            for keyword, tag, vr in columns
        }
        entries.update((tag, (vr, None, value)) for tag, (vr, value) in local.items())
        if charset is not None:  # an ASCII answer names the set the query named
            terms = answer_charset(charset, ())
            assert terms is not None  # a query with a set always has an answer's set
            entries[SPECIFIC_CHARACTER_SET] = ("CS", None, "\\".join(terms))
        for tag, vr in unknown:
            entries.setdefault(tag, (vr, None, None))
        self._slots: list[tuple[str | None, bytes, str, str]] = []
        self.writable = True  # False: a constant that only the Dataset way encodes
        order = "<" if encoding.little_endian else ">"
        for tag, (vr, keyword, value) in sorted(entries.items()):
            head, fmt = _header(tag, vr, encoding.implicit_vr, order)
            if keyword is not None:
                self._slots.append((keyword, head, fmt, vr))
                continue
            raw = _value_bytes(value, vr, order)
            if raw is None:
                self.writable = False
                return
            self._slots.append((None, head + struct.pack(fmt, len(raw)) + raw, fmt, vr))

    def encode(self, attrs: Mapping[str, Any]) -> bytes | None:
        """The answer for one match's attributes, or None if it holds what we do not write."""
        if not self.writable:
            return None
        parts = []
        for keyword, head, fmt, vr in self._slots:
            if keyword is None:
                parts.append(head)  # the whole constant element
                continue
            value = attrs.get(keyword)
            raw: bytes | None
            if value is None:
                raw = b""
            elif type(value) is str and value.isascii() and vr in TEXT_VRS:
                raw = value.encode("ascii")
                if len(raw) % 2:
                    raw += b"\0" if vr == "UI" else b" "
            else:
                raw = _value_bytes(value, vr, fmt[0])
                if raw is None:
                    return None
            parts.append(head)
            parts.append(struct.pack(fmt, len(raw)))
            parts.append(raw)
        return b"".join(parts)


def _header(tag: int, vr: str, implicit: bool, order: str) -> tuple[bytes, str]:
    """An element's tag (and VR) bytes, and the struct format of its length (PS3.5 7.1)."""
    head = struct.pack(order + "HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head, order + "I"
    if vr in LONG_VRS:
        return head + vr.encode("ascii") + b"\0\0", order + "I"
    return head + vr.encode("ascii"), order + "H"


def _value_bytes(value: Any, vr: str, order: str) -> bytes | None:
    """A value's bytes as :func:`answer_dataset` and pydicom's writer make them, or None
    where they do not know them to be the same (not ASCII, a float, several values...)."""
    if value is None:
        return b"" if len(vr) == 2 and vr != "SQ" else None
    if is_text(value, vr):
        text = str(value)
        return text_value(text, vr, "ascii") if text.isascii() else None
    fmt = BINARY_INTS.get(vr)
    if fmt is None or type(value) is not int:
        return None
    try:
        return struct.pack(order + fmt, value)
    except struct.error:  # out of the VR's range: pydicom's writer says why
        return None


def _read_charset(terms: tuple[str, ...] | None) -> str | list[str]:
    """What pydicom's writer takes the raw values' character set to be (no re-encoding)."""
    if terms is None or not any(terms):
        return default_encoding
    encodings = python_encodings(terms)
    return list(encodings) if encodings is not None else default_encoding
