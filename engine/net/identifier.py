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
"""

from __future__ import annotations

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


class Encoding:
    """How the answers of one C-FIND are encoded: the presentation context's transfer syntax."""

    __slots__ = ("implicit_vr", "little_endian")

    def __init__(self, implicit_vr: bool, little_endian: bool) -> None:
        self.implicit_vr, self.little_endian = implicit_vr, little_endian


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


def _read_charset(terms: tuple[str, ...] | None) -> str | list[str]:
    """What pydicom's writer takes the raw values' character set to be (no re-encoding)."""
    if terms is None or not any(terms):
        return default_encoding
    encodings = python_encodings(terms)
    return list(encodings) if encodings is not None else default_encoding
