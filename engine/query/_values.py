"""Value normalisation shared by the matchers and the index keys.

One place decides what "the same value" means for each VR, so that the
matcher (`engine.query.matching`) and the index writer and planner
(`engine.query.plan`) cannot disagree:

- padding (PS3.5 6.2): trailing spaces and NULs are never significant;
  leading spaces are not significant for AE, CS, SH, LO, IS, DS and the
  date/time VRs, and are kept for PN, ST, LT, UT, UC and UR;
- PN: trailing empty components and groups ("Doe^John^^", "Doe^John=") are
  the same name as "Doe^John" (PS3.5 6.2.1); :func:`pn_groups` splits a
  name into its alphabetic, ideographic and phonetic groups (PS3.5 6.2.1.1);
- DA, TM, DT normalise to fixed-width strings so that string order is time
  order: DA "YYYYMMDD", TM "HHMMSS.ffffff", DT "YYYYMMDDHHMMSS.ffffff".
  A partial value stands for an interval: its *floor* fills the missing
  components with their least value, its *ceiling* with their greatest
  (a query time "10" is 100000.000000 to 105959.999999). A stored value is
  the point at its floor.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# VRs whose values never contain a backslash (PS3.5 6.2): VM is always 1.
SINGLE_VALUED_VRS = frozenset({"LT", "ST", "UT", "UR"})

# PS3.5 6.2: leading spaces are not significant for these.
_LEADING_INSIGNIFICANT = frozenset({"AE", "AS", "CS", "SH", "LO", "IS", "DS", "DA", "TM", "DT"})

# PS3.4 C.2.2.2.4: wildcards are defined for these VRs only.
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})

# PS3.4 C.2.2.2.5: range matching is defined for these VRs only.
DATE_TIME_VRS = frozenset({"DA", "TM", "DT"})

# Compared as integers: "5", "05", "+5" and 5 are one value.
NUMERIC_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "SV", "UV"})

_PN_DELIMITERS = "^= "

_DA = re.compile(r"(\d{4})(\d{2})(\d{2})")
_TM = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?")
_DT_TEXT = r"\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?(?:[+-]\d{4})?"
_DT = re.compile(
    r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?)?)?)?"
    r"([+-]\d{4})?"
)
# A DT range: the regex finds the "-" that separates two valid values, so a
# UTC offset ("-0500") is not taken for the separator where that would leave
# an invalid side.
DT_RANGE = re.compile(f"({_DT_TEXT})?-({_DT_TEXT})?")


def strip_padding(vr: str, text: str) -> str:
    """Remove the padding PS3.5 6.2 calls insignificant for `vr`."""
    text = text.rstrip(" \x00")
    if vr in _LEADING_INSIGNIFICANT:
        text = text.lstrip(" ")
    return text


def normalise_pn(text: str, fold_case: bool) -> str:
    """A person name without padding or trailing empty components, upper-cased if `fold_case`."""
    text = text.rstrip(_PN_DELIMITERS + "\x00")
    return text.upper() if fold_case else text


def pn_groups(text: str, fold_case: bool) -> list[str]:
    """The component groups of one person name, each normalised as :func:`normalise_pn` does.

    PS3.5 6.2.1.1: up to three groups, alphabetic, ideographic and phonetic,
    separated by ``=``; a value without ``=`` is one (alphabetic) group.
    """
    return [normalise_pn(group, fold_case) for group in text.split("=")]


def split_values(vr: str, stored: object) -> Iterator[object]:
    """Yield each non-empty value of a stored attribute (backslash-split text, ints as is)."""
    if stored is None:
        return
    if isinstance(stored, str):
        if not stored:
            return
        if vr in SINGLE_VALUED_VRS or "\\" not in stored:
            yield stored
            return
        for part in stored.split("\\"):
            if part:
                yield part
    elif isinstance(stored, list | tuple):
        for item in stored:
            yield from split_values(vr, item)
    else:
        yield stored


def parse_int(value: object) -> int | None:
    """The integer a stored IS/US value stands for, or None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip(" \x00"))
        except ValueError:
            return None
    return None


def da_bounds(text: str) -> tuple[str, str] | None:
    """Floor and ceiling of a DA value ("YYYYMMDD", or ACR-NEMA "YYYY.MM.DD")."""
    text = text.strip(" \x00").replace(".", "")
    if _DA.fullmatch(text) is None:
        return None
    return text, text


def tm_bounds(text: str) -> tuple[str, str] | None:
    """Floor and ceiling of a TM value, partial or with fractional seconds."""
    text = text.strip(" \x00").replace(":", "")  # ACR-NEMA "HH:MM:SS"
    m = _TM.fullmatch(text)
    if m is None:
        return None
    hh, mm, ss, ff = m.groups()
    ff = ff or ""
    floor = f"{hh}{mm or '00'}{ss or '00'}.{ff.ljust(6, '0')}"
    ceil = f"{hh}{mm or '59'}{ss or '59'}.{ff.ljust(6, '9')}"
    return floor, ceil


def dt_bounds(text: str) -> tuple[str, str] | None:
    """Floor and ceiling of a DT value, partial or not; a UTC offset is ignored.

    The offset is dropped, not applied: values are compared as the local times
    they were recorded in, which is what a stored value without an offset
    already means (PS3.5 6.2, DT).
    """
    text = text.strip(" \x00")
    m = _DT.fullmatch(text)
    if m is None:
        return None
    y, mo, d, h, mi, s, f, _offset = m.groups()
    f = f or ""
    floor = f"{y}{mo or '01'}{d or '01'}{h or '00'}{mi or '00'}{s or '00'}.{f.ljust(6, '0')}"
    ceil = f"{y}{mo or '12'}{d or '31'}{h or '23'}{mi or '59'}{s or '59'}.{f.ljust(6, '9')}"
    return floor, ceil


def dt_is_value_with_negative_offset(text: str) -> bool:
    """Whether a DT query with a "-" is one value with a UTC offset, not a range.

    PS3.4 C.2.2.2.5 reads a "-" as a range, but "20240101120000-0500" is a
    time five hours behind UTC. It is read as one value when its offset is
    valid (-1200 to -0000) and reading it as a range would give an empty one.
    """
    m = _DT.fullmatch(text)
    if m is None or m.group(8) is None or not m.group(8).startswith("-"):
        return False
    offset = m.group(8)
    if int(offset[1:3]) > 12 or int(offset[3:5]) > 59:
        return False
    r = DT_RANGE.fullmatch(text)
    if r is None or not r.group(1) or not r.group(2):
        return True
    lo, hi = dt_bounds(r.group(1)), dt_bounds(r.group(2))
    return lo is None or hi is None or lo[0] > hi[1]


BOUNDS = {"DA": da_bounds, "TM": tm_bounds, "DT": dt_bounds}


def time_point(vr: str, value: object) -> str | None:
    """The normalised point a stored DA/TM/DT value stands for (its floor), or None."""
    if not isinstance(value, str):
        return None
    if vr == "DA" and len(value) == 8 and value.isdigit():
        return value  # the common case, without a regex
    bounds = BOUNDS[vr](value)
    return None if bounds is None else bounds[0]


def normalise_value(vr: str, value: object, *, fold_pn: bool) -> str:
    """The canonical text of one stored or queried value of `vr` (see the module docstring).

    Dates and times become their normalised floor; a value that does not parse
    keeps its unpadded text. PN is folded to upper case when `fold_pn`.
    """
    if not isinstance(value, str):
        num = parse_int(value)
        return str(value) if num is None else str(num)
    if vr in DATE_TIME_VRS:
        point = time_point(vr, value)
        return point if point is not None else strip_padding(vr, value)
    if vr == "PN":
        return normalise_pn(value, fold_pn)
    if vr in NUMERIC_VRS:
        num = parse_int(value)
        return strip_padding(vr, value) if num is None else str(num)
    return strip_padding(vr, value)
