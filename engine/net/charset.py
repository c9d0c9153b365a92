"""The Specific Character Set of a C-FIND answer (PS3.5 6.1, PS3.4 C.4.1.1.3.2).

The index keeps text as decoded Unicode, whatever the character set it was
stored in, and pydicom decodes a query identifier with its own (0008,0005):
matching compares Unicode with Unicode. An answer is encoded in the
character set of the query when every value of it fits there, otherwise
in UTF-8 (``ISO_IR 192``); (0008,0005) is returned when the answer is not
plain ASCII or when the query carried it, always naming the set used.

Encoding goes through pydicom's own functions (:func:`pydicom.charset.encode_string`,
:meth:`pydicom.valuerep.PersonName.encode`): the ISO 2022 escape sequences
are theirs. What is checked here is only that a value *fits*, so that pydicom
never falls back to replacement characters: each non-ASCII character must
be encodable by one of the query's character sets. pydicom reads the
default repertoire (``""``, ``ISO 2022 IR 6``) as Latin-1; under it no
non-ASCII character is taken to fit, and a character Latin-1 could encode
is refused beside it (pydicom would pick Latin-1 for it, which the default
repertoire is not); such answers go in UTF-8. So do answers that need
GB 2312 (``ISO 2022 IR 58``): pydicom writes it without its escape sequence.
pydicom also reads that escape sequence into the text; :func:`query_text`
drops it, as the scanner does for stored values.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from pydicom import config
from pydicom.charset import (
    STAND_ALONE_ENCODINGS,
    convert_encodings,
    custom_encoders,
    default_encoding,
    encode_string,
    python_encoding,
)
from pydicom.valuerep import PersonName

UTF8 = "ISO_IR 192"
UTF8_TERMS = (UTF8,)
DEFAULT_TERMS = ("",)  # the default repertoire, named by an empty (0008,0005)
_SINGLE_VALUED_VRS = frozenset({"LT", "ST", "UT", "UR"})  # PS3.5 6.2: no backslash
GB2312 = python_encoding["ISO 2022 IR 58"]
GB2312_DESIGNATION = "\x1b$)A"  # PS3.5 6.1.2.5.3: ESC $ ) A, GB 2312 to G1


def query_text(text: str) -> str:
    """A text value of a query as pydicom decoded it, without what pydicom left of ESC $ ) A."""
    return text.replace(GB2312_DESIGNATION, "") if "\x1b" in text else text


def query_charset(value: object) -> tuple[str, ...]:
    """The defined terms of a query's Specific Character Set value (PS3.3 C.12.1.1.2).

    Parameters
    ----------
    value
        The element's value as pydicom decoded it: None, a str, or a list of str.

    Returns
    -------
    tuple of str
        The terms, stripped; ``("",)`` for an empty value.
    """
    if value is None:
        return DEFAULT_TERMS
    items = [value] if isinstance(value, str | bytes) else list(value)  # type: ignore[call-overload]
    terms = tuple(
        (t.decode("ascii", "replace") if isinstance(t, bytes) else str(t)).strip() for t in items
    )
    return terms or DEFAULT_TERMS


@functools.lru_cache(maxsize=64)
def python_encodings(terms: tuple[str, ...]) -> tuple[str, ...] | None:
    """pydicom's Python encodings for `terms`, or None if pydicom would have to guess.

    None for a term pydicom does not know (it would warn and use the
    default), and for a stand-alone set (UTF-8, GB18030, GBK) beside others
    or a list of several terms not all ISO 2022 (PS3.3 C.12.1.1.2).
    """
    if any(t not in python_encoding for t in terms):
        return None
    if len(terms) > 1 and any(
        t in STAND_ALONE_ENCODINGS or (t and not t.startswith("ISO 2022")) for t in terms
    ):
        return None
    return tuple(convert_encodings(list(terms)))


def _encodable(ch: str, encoding: str) -> bool:
    encoder = custom_encoders.get(encoding)
    try:
        if encoder is not None:
            encoder(ch, errors="strict")
        else:
            ch.encode(encoding)
    except (UnicodeError, LookupError):
        return False
    return True


@functools.lru_cache(maxsize=8192)
def _fits(ch: str, encodings: tuple[str, ...]) -> bool:
    """Whether pydicom encodes the non-ASCII character `ch` correctly in `encodings`."""
    if default_encoding in encodings and _encodable(ch, default_encoding):
        return False  # pydicom's Latin-1 for the default repertoire would take it
    return any(_encodable(ch, e) for e in encodings if e not in (default_encoding, GB2312))


def answer_charset(
    query: tuple[str, ...] | None, non_ascii: Iterable[str]
) -> tuple[str, ...] | None:
    """The Specific Character Set terms of one answer; None: leave (0008,0005) out.

    Parameters
    ----------
    query
        The query's terms (:func:`query_charset`), None if it had no (0008,0005).
    non_ascii
        The answer's text values that are not plain ASCII.

    Returns
    -------
    tuple of str or None
        The query's terms when every value fits them (an ASCII answer fits
        every set); ``("ISO_IR 192",)`` otherwise; None for an ASCII answer
        to a query without (0008,0005). A query set pydicom cannot use is
        answered as the default repertoire ``("",)`` when the answer is ASCII.
    """
    values = list(non_ascii)
    if query is None:
        return UTF8_TERMS if values else None
    encodings = python_encodings(query)
    if encodings is None:
        return UTF8_TERMS if values else DEFAULT_TERMS
    if not values or query == UTF8_TERMS:
        return query
    for value in values:
        for ch in set(value):
            if not ch.isascii() and not _fits(ch, encodings):
                return UTF8_TERMS
    return query


def encode_text(value: str, vr: str, encodings: tuple[str, ...]) -> bytes:
    """A text value in `encodings`, unpadded, as pydicom's writer encodes it.

    Parameters
    ----------
    value
        The value; several values are joined by backslashes (but for LT, ST, UT, UR).
    vr
        Its VR: PN names are encoded group by group and component by component
        (:meth:`pydicom.valuerep.PersonName.encode`), so that ISO 2022 code
        extensions start afresh after each delimiter (PS3.5 6.1.2.5.3).
    encodings
        From :func:`python_encodings`; every character must fit (:func:`answer_charset`).
    """
    enc = list(encodings)
    if vr in _SINGLE_VALUED_VRS:
        return encode_string(value, enc)
    parts = value.split("\\")
    if vr == "PN":
        return b"\\".join(PersonName(p, validation_mode=config.IGNORE).encode(enc) for p in parts)
    return b"\\".join(encode_string(p, enc) for p in parts)
