"""The DICOM JSON Model (PS3.18 F.2) from index records: QIDO-RS without pydicom Datasets.

:func:`attrs_to_json` turns a record of the index (keyword -> value, as
:meth:`engine.archive.Archive.find_attrs` yields it) into a DICOM JSON
object, with no pydicom Dataset built: QIDO-RS's hot path. WADO-RS metadata
is encoded from the stored bytes by :mod:`engine.web.metajson`.

Encoding rules (PS3.18 F.2.2-F.2.7): the key is the tag as 8 upper-case hex
digits; ``vr`` is always present; an empty value has no ``Value``; PN is an
object of ``Alphabetic``/``Ideographic``/``Phonetic`` groups; IS, DS and the
binary numeric VRs are JSON numbers; AT is the tag as hex text.
"""

from __future__ import annotations

import functools
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from engine.attributes import BY_KEYWORD, COMPUTED

_NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


@functools.cache
def tag_and_vr(keyword: str) -> tuple[str, str]:
    """``("0020000D", "UI")`` for a keyword: the index's VR first, then the dictionary's.

    Raises
    ------
    KeyError
        If `keyword` is not a DICOM keyword.
    """
    if keyword in BY_KEYWORD:
        a = BY_KEYWORD[keyword]
        return f"{a.tag:08X}", a.vr
    if keyword in COMPUTED:
        tag, vr, _ = COMPUTED[keyword]
        return f"{tag:08X}", vr
    found = tag_for_keyword(keyword)
    if found is None:
        raise KeyError(keyword)
    vr = dictionary_VR(found)
    return f"{found:08X}", vr.split(" or ")[0]  # "US or SS": the first is as good as any


def pn_value(text: str) -> dict[str, str]:
    """One PN value as its component groups (PS3.18 F.2.2), empty groups left out."""
    groups = text.split("=")
    return {name: g for name, g in zip(_PN_GROUPS, groups, strict=False) if g}


def _number(vr: str, text: str) -> int | float | str:
    text = text.strip()
    try:
        if vr == "IS":
            return int(text)
        value = float(text)
        return int(value) if value.is_integer() and "." not in text and "e" not in text else value
    except ValueError:
        return text  # a broken stored value goes out as text rather than not at all


def encode_value(vr: str, value: Any) -> dict[str, Any]:
    """``{"vr": vr, "Value": [...]}`` for one index value (str, number or tuple)."""
    if value is None or value == "" or value == ():
        return {"vr": vr}
    if isinstance(value, tuple | list):
        items: list[Any] = list(value)
    elif isinstance(value, str):
        items = value.split("\\")
    else:
        items = [value]
    if vr == "PN":
        out: list[Any] = [pn_value(str(v)) if v else None for v in items]
    elif vr in ("IS", "DS"):
        out = [_number(vr, v) if isinstance(v, str) else v for v in items]
    elif vr in _NUMBER_VRS:
        out = [int(v) if isinstance(v, str) and v.strip().lstrip("-").isdigit() else v
               for v in items]  # fmt: skip
    else:
        out = [None if v == "" else v for v in items]
    return {"vr": vr, "Value": out}


def attrs_to_json(attrs: dict[str, Any]) -> dict[str, Any]:
    """A DICOM JSON object for an index record, keys in tag order (PS3.18 F.2.1)."""
    out: dict[str, Any] = {}
    for keyword, value in attrs.items():
        tag, vr = tag_and_vr(keyword)
        out[tag] = encode_value(vr, value)
    return dict(sorted(out.items()))
