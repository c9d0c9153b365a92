"""C-FIND response identifiers built from index attributes, values encoded once.

A match used to become a pydicom Dataset of DataElements (each value
validated and converted), then pynetdicom's ``encode`` converted every
value again to bytes. Here the text values the index holds (PS3.5 6.2: all
the VRs of the usual keys are character strings) are encoded to bytes once,
padded to even length, and kept as RawDataElements in the encoding of the
presentation context; pydicom's writer copies raw elements as they are.
Values of other VRs (binary US, DS floats) and the keys we do not know go
through ordinary DataElements, exactly as before.

The character set rule is the one of :func:`engine.search.find`: values
that are not ASCII make the answer UTF-8 (Specific Character Set
``ISO_IR 192``, PS3.5 6.1.2.5.3), otherwise the default repertoire.
"""

from __future__ import annotations

from typing import Any

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

SPECIFIC_CHARACTER_SET = 0x00080005
QUERY_RETRIEVE_LEVEL = 0x00080052
RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056
UTF8 = "ISO_IR 192"
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
    """
    values: list[tuple[int, str, Any]] = [
        (tag, vr, level if keyword == "QueryRetrieveLevel" else attrs.get(keyword))
        for keyword, tag, vr in columns
    ]
    values.extend((tag, vr, value) for tag, (vr, value) in local.items())
    utf8 = any(isinstance(v, str) and not v.isascii() for _, _, v in values)
    charset = "utf-8" if utf8 else "ascii"
    implicit, little = encoding.implicit_vr, encoding.little_endian
    elements: dict[Any, Any] = {}
    slow: list[tuple[int, str, Any]] = []
    if utf8:
        values.append((SPECIFIC_CHARACTER_SET, "CS", UTF8))
    for tag, vr, value in values:
        if is_text(value, vr):
            raw = text_value(value, vr, charset)
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
    ds.set_original_encoding(
        implicit, little, convert_encodings(UTF8) if utf8 else default_encoding
    )
    return ds
