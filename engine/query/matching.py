"""Attribute matching, PS3.4 C.2.2.2: one implementation for find, C-FIND and QIDO-RS.

Each matching type has one public function, named as PS3.4 names it:
:func:`match_single_value`, :func:`match_uid_list`, :func:`match_universal`,
:func:`match_wildcard` and :func:`match_range`. Each takes a stored value and
a query value written the DICOM way (as in a C-FIND identifier or a QIDO-RS
parameter). They are the readable specification; :func:`compile_matcher` and
:func:`compile_query` parse each query value once and return the same tests
as closures, for the hot path.

Stored values are what the index keeps: text as scanned (multiple values
joined by backslashes), IS as str or int, US and computed counts as int; an
absent key or an empty string is no value.

Decisions beyond the letter of PS3.4:

- A backslash in a non-UID single value query ("CT\\MR") matches any of the
  values, as most archives do; wildcards and ranges take one value only.
- A single value DA/TM/DT matches at the precision it is written in: "1030"
  matches 103015.5. A range's bounds do the same ("1000-1100" ends at
  110059.999999).
- StudyDate and StudyTime are matched separately; the combined date-time
  matching of C.2.2.2.5.1 (an Extended Negotiation option) is not offered.
- PN matching looks into the component groups (PS3.5 6.2.1.1: alphabetic,
  ideographic, phonetic). A query value of one group ("Yamada^Tarou",
  "山田^太郎", "Yamada*") matches a name if it matches the whole name or any
  one of its groups; a query value of several groups ("Yamada^Tarou=山田^太郎",
  "=山田*") matches group by group, an empty or "*" group matching anything.
  Text is compared as the decoded Unicode the index keeps, whatever the
  Specific Character Set of the query or of the stored instance.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from engine.errors import InvalidQueryError
from engine.query._values import (
    BOUNDS,
    DATE_TIME_VRS,
    DT_RANGE,
    NUMERIC_VRS,
    SINGLE_VALUED_VRS,
    WILDCARD_VRS,
    dt_is_value_with_negative_offset,
    normalise_pn,
    parse_int,
    pn_groups,
    split_values,
    strip_padding,
    time_point,
)

Test = Callable[[object], bool]

SINGLE = "single"
WILDCARD = "wildcard"
RANGE = "range"
UID_LIST = "uid_list"
UNIVERSAL = "universal"

_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")


@dataclass(frozen=True, slots=True, eq=False)
class Matcher:
    """One non-universal key of a query, parsed once.

    Call it with a stored value (``matcher(stored) -> bool``). The parsed
    parameters are there for index planning: which of them is set depends on
    `kind`.

    Attributes
    ----------
    keyword, vr, level : str
        The attribute, its VR and its level (``engine.attributes.level_of``).
    kind : str
        ``"single"``, ``"wildcard"``, ``"range"`` or ``"uid_list"``.
    query : str
        The query value as given.
    value : str or int or None
        single: the one value, normalised (PN upper-cased when matching is
        case-insensitive, dates/times as their floor); None when several.
    values : tuple
        single: every value (a backslash list gives several); uid_list: the UIDs.
    prefix : str or None
        wildcard: the literal text before the first ``*`` or ``?``, unpadded,
        upper-cased for case-insensitive PN.
    lo, hi : str or None
        range, and single DA/TM/DT: the normalised inclusive bounds; None is open.
    uids : frozenset of str
        uid_list, and single UI: the UIDs.
    """

    keyword: str
    vr: str
    level: str
    kind: str
    query: str
    test: Test = field(repr=False)
    value: str | int | None = None
    values: tuple[str | int, ...] = ()
    prefix: str | None = None
    lo: str | None = None
    hi: str | None = None
    uids: frozenset[str] = frozenset()

    def __call__(self, stored: object) -> bool:
        return self.test(stored)


# -- classifying a query value (PS3.4 C.2.2.2) --------------------------------


def matching_type(vr: str, query: str | None) -> str:
    """Which PS3.4 C.2.2.2 matching a query value asks for.

    Parameters
    ----------
    vr : str
        The VR of the key attribute.
    query : str or None
        The query value as written in the identifier.

    Returns
    -------
    str
        ``"universal"``, ``"single"``, ``"wildcard"``, ``"range"`` or ``"uid_list"``.

    Raises
    ------
    InvalidQueryError
        If the value uses wildcards or a range where `vr` does not allow them.
    """
    if query is None:
        return UNIVERSAL
    text = strip_padding(vr, query)
    # C.2.2.2.3: zero length is universal (a PN of empty components is zero
    # length, PS3.5 6.2.1); C.2.2.2.4: so is "*" alone.
    if not text or text.strip("*") == "" or (vr == "PN" and not normalise_pn(text, False)):
        return UNIVERSAL
    has_wildcard = "*" in text or "?" in text
    if vr == "UI":
        if has_wildcard:
            raise InvalidQueryError(
                f"wildcards are not allowed in a UID ({query!r}, PS3.4 C.2.2.2.4)"
            )
        return UID_LIST if "\\" in text else SINGLE
    if vr in DATE_TIME_VRS:
        if has_wildcard:
            raise InvalidQueryError(
                f"wildcards are not allowed in a {vr} value ({query!r}); use a range 'lo-hi'"
            )
        if "-" not in text or (vr == "DT" and dt_is_value_with_negative_offset(text)):
            return SINGLE
        return RANGE  # C.2.2.2.5: a "-" makes it a range
    if has_wildcard:
        if vr not in WILDCARD_VRS:
            raise InvalidQueryError(
                f"wildcards are not allowed for VR {vr} ({query!r}, PS3.4 C.2.2.2.4)"
            )
        if "\\" in text and vr not in SINGLE_VALUED_VRS:
            raise InvalidQueryError(f"a wildcard query takes one value, not a list ({query!r})")
        return WILDCARD
    return SINGLE


# -- the tests, built once per query value ------------------------------------


def _any_value(vr: str, pred: Callable[[object], bool]) -> Test:
    """A test that is true when any value of the stored attribute satisfies `pred`."""
    splittable = vr not in SINGLE_VALUED_VRS

    def test(stored: object) -> bool:
        if type(stored) is str:
            if not splittable or "\\" not in stored:
                return bool(stored) and pred(stored)  # the common case: one value
            for part in stored.split("\\"):  # noqa: SIM110  -- hot loop
                if part and pred(part):
                    return True
            return False
        return any(pred(v) for v in split_values(vr, stored))

    return test


def _text_normaliser(vr: str, fold_pn: bool) -> Callable[[str], str]:
    if vr == "PN":
        return lambda s: normalise_pn(s, fold_pn)
    return lambda s: strip_padding(vr, s)


def _build_single(
    keyword: str, vr: str, level: str, query: str, case_sensitive_pn: bool
) -> Matcher:
    text = strip_padding(vr, query)
    parts = [p for p in (text.split("\\") if vr not in SINGLE_VALUED_VRS else [text]) if p]
    if vr in DATE_TIME_VRS:
        if len(parts) != 1:
            raise InvalidQueryError(
                f"{keyword}: a {vr} query takes one value or a range ({query!r})"
            )
        bounds = BOUNDS[vr](parts[0])
        if bounds is None:
            raise InvalidQueryError(f"{keyword}: {query!r} is not a valid {vr} value")
        lo, hi = bounds
        return Matcher(
            keyword, vr, level, SINGLE, query, _range_test(vr, lo, hi), lo, (lo,), lo=lo, hi=hi
        )
    if vr == "UI":
        return _build_uids(keyword, vr, level, query, SINGLE)
    if vr in NUMERIC_VRS:
        numbers: list[int] = []
        for p in parts:
            n = parse_int(p)
            if n is None:
                raise InvalidQueryError(f"{keyword}: {p!r} is not an integer ({vr})")
            numbers.append(n)
        wanted = frozenset(numbers)

        def is_wanted(v: object) -> bool:
            return parse_int(v) in wanted

        test = _any_value(vr, is_wanted)
        number = numbers[0] if len(numbers) == 1 else None
        return Matcher(keyword, vr, level, SINGLE, query, test, number, tuple(numbers))
    # C.2.2.2.1: exact, except PN, which may ignore case (and does by default).
    norm = _text_normaliser(vr, not case_sensitive_pn)
    targets = tuple(dict.fromkeys(norm(p) for p in parts if norm(p)))
    if not targets:
        raise InvalidQueryError(f"{keyword}: {query!r} has no value to match")
    target_set = frozenset(targets)

    def is_text_target(v: object) -> bool:
        return isinstance(v, str) and (v in target_set or norm(v) in target_set)

    is_target = (
        _person_name_target(targets, not case_sensitive_pn) if vr == "PN" else is_text_target
    )
    value = targets[0] if len(targets) == 1 else None
    return Matcher(keyword, vr, level, SINGLE, query, _any_value(vr, is_target), value, targets)


def _person_name_target(targets: tuple[str, ...], fold: bool) -> Callable[[object], bool]:
    """Single value matching of one stored name against normalised `targets`, by group."""
    names = frozenset(t for t in targets if "=" not in t)  # equal to the name or any group
    grouped = tuple(pn_groups(t, fold) for t in targets if "=" in t)  # equal group by group

    def is_target(v: object) -> bool:
        if not isinstance(v, str):
            return False
        if v in names:
            return True
        whole = normalise_pn(v, fold)
        if whole in names:
            return True
        if "=" not in whole and not grouped:
            return False  # the common case: a name of one group, already compared
        groups = pn_groups(v, fold)
        if not names.isdisjoint(groups):
            return True
        for want in grouped:  # the last wanted group is never empty: normalised
            if len(groups) >= len(want) and all(
                not w or w == g for w, g in zip(want, groups, strict=False)
            ):
                return True
        return False

    return is_target


def _build_uids(keyword: str, vr: str, level: str, query: str, kind: str) -> Matcher:
    uids = [u.strip(" \x00") for u in query.split("\\")]
    uids = [u for u in uids if u]
    for uid in uids:
        if len(uid) > 64 or _UID.fullmatch(uid) is None:
            raise InvalidQueryError(
                f"{keyword}: {uid[:80]!r} is not a valid UID (PS3.5 9.1: digits and dots, "
                "at most 64 characters)"
            )
    uid_set = frozenset(uids)

    def is_listed(v: object) -> bool:
        return isinstance(v, str) and v.rstrip(" \x00") in uid_set

    value = uids[0] if len(uid_set) == 1 else None
    return Matcher(
        keyword, vr, level, kind, query, _any_value(vr, is_listed), value, tuple(uids), uids=uid_set
    )


def wildcard_regex(pattern: str) -> re.Pattern[str]:
    """Compile a PS3.4 C.2.2.2.4 pattern: ``*`` is any run of characters, ``?`` exactly one.

    Parameters
    ----------
    pattern : str
        The pattern; every other character is literal.

    Returns
    -------
    re.Pattern
        A regex to use with ``fullmatch``, so that the pattern covers the whole value.
    """
    out: list[str] = []
    for ch in pattern:
        if ch == "*":
            if not out or out[-1] != ".*":
                out.append(".*")
        elif ch == "?":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _literal_prefix(pattern: str) -> str:
    """The text of a wildcard pattern before its first ``*`` or ``?``."""
    cut = min((i for i in (pattern.find("*"), pattern.find("?")) if i >= 0), default=len(pattern))
    return pattern[:cut]


def _pattern_test(pattern: str) -> Callable[[str], bool]:
    """Whether a text, unpadded and folded as `pattern` is, matches the whole pattern."""
    prefix = _literal_prefix(pattern)
    if pattern[len(prefix) :] == "*":
        return lambda s: s.startswith(prefix)  # "Doe*", the commonest pattern: no regex
    fullmatch = wildcard_regex(pattern).fullmatch
    return lambda s: fullmatch(s) is not None


def _build_wildcard(
    keyword: str, vr: str, level: str, query: str, case_sensitive_pn: bool
) -> Matcher:
    fold = vr == "PN" and not case_sensitive_pn
    pattern = strip_padding(vr, query)
    if fold:
        pattern = pattern.upper()
    whole = _pattern_test(pattern)
    pred: Callable[[object], bool]
    if vr == "PN":
        pred, prefix = _person_name_pattern(pattern, whole, fold)
    else:
        prefix = _literal_prefix(pattern)

        def pred(v: object) -> bool:
            return isinstance(v, str) and whole(strip_padding(vr, v))

    return Matcher(keyword, vr, level, WILDCARD, query, _any_value(vr, pred), prefix=prefix)


def _person_name_pattern(
    pattern: str, whole: Callable[[str], bool], fold: bool
) -> tuple[Callable[[object], bool], str]:
    """Wild card matching of a name by group, and the literal prefix every match has in a key.

    The prefix is that of the first group of the pattern that is not
    universal: a matching name has it at the start of the whole name or of
    one of its groups, each of which is an index key (:func:`~engine.query.index_keys`).
    """
    groups = pn_groups(pattern, False)  # already folded
    tests = [None if not g.strip("*") else _pattern_test(g) for g in groups]
    wanted = [i for i, t in enumerate(tests) if t is not None]
    prefix = _literal_prefix(groups[wanted[0]]) if wanted else ""
    one_group = len(groups) == 1
    needed = wanted[-1] + 1 if wanted else 0

    def pred(v: object) -> bool:
        if not isinstance(v, str):
            return False
        s = strip_padding("PN", v)
        if fold:
            s = s.upper()
        if whole(s):
            return True
        if one_group:
            if "=" not in s:
                return False  # the common case: a name of one group, already compared
            test = tests[0]  # None for "*^": any name with a value
            return any(g and (test is None or test(g)) for g in pn_groups(s, False))
        name = pn_groups(s, False)
        return len(name) >= needed and all(
            t is None or t(g) for t, g in zip(tests, name, strict=False)
        )

    return pred, prefix


def parse_range(vr: str, query: str) -> tuple[str | None, str | None]:
    """The normalised inclusive bounds of a PS3.4 C.2.2.2.5 range query.

    Parameters
    ----------
    vr : str
        ``"DA"``, ``"TM"`` or ``"DT"``.
    query : str
        ``"lo-hi"``, ``"lo-"``, ``"-hi"``, or one value (its own range).

    Returns
    -------
    tuple of (str or None, str or None)
        The floor of `lo` and the ceiling of `hi`; None for an open end.

    Raises
    ------
    InvalidQueryError
        If a bound is not a valid value of `vr`.
    """
    text = strip_padding(vr, query)
    bounds = BOUNDS[vr]
    if "-" not in text:
        single = bounds(text)
        if single is None:
            raise InvalidQueryError(f"{query!r} is not a valid {vr} value")
        return single
    if vr == "DT":
        m = DT_RANGE.fullmatch(text)
        if m is None:
            raise InvalidQueryError(f"{query!r} is not a valid DT range 'lo-hi'")
        lo_text, hi_text = m.group(1) or "", m.group(2) or ""
    else:
        lo_text, _sep, hi_text = text.partition("-")
        if "-" in hi_text:
            raise InvalidQueryError(f"{query!r} is not a valid {vr} range 'lo-hi'")
    lo = hi = None
    if lo_text:
        lo_b = bounds(lo_text)
        if lo_b is None:
            raise InvalidQueryError(f"{query!r}: {lo_text!r} is not a valid {vr} value")
        lo = lo_b[0]
    if hi_text:
        hi_b = bounds(hi_text)
        if hi_b is None:
            raise InvalidQueryError(f"{query!r}: {hi_text!r} is not a valid {vr} value")
        hi = hi_b[1]
    return lo, hi


def _range_test(vr: str, lo: str | None, hi: str | None) -> Test:
    def in_range(v: object) -> bool:
        point = time_point(vr, v)
        return point is not None and (lo is None or lo <= point) and (hi is None or point <= hi)

    return _any_value(vr, in_range)


def _build_range(keyword: str, vr: str, level: str, query: str) -> Matcher:
    if "\\" in query:
        raise InvalidQueryError(f"{keyword}: a range takes one value, not a list ({query!r})")
    try:
        lo, hi = parse_range(vr, query)
    except InvalidQueryError as exc:
        raise InvalidQueryError(f"{keyword}: {exc}") from None
    return Matcher(keyword, vr, level, RANGE, query, _range_test(vr, lo, hi), lo=lo, hi=hi)


def compile_matcher(
    keyword: str, vr: str, level: str, query: str | None, *, case_sensitive_pn: bool = False
) -> Matcher | None:
    """Parse one key of a query into a :class:`Matcher`, or None if it is universal.

    Parameters
    ----------
    keyword, vr, level : str
        The attribute, its VR and its level of the hierarchy.
    query : str or None
        The query value as written in the identifier.
    case_sensitive_pn : bool, optional
        Match PN values case-sensitively; by default case is ignored (PS3.4 C.2.2.2.1).

    Returns
    -------
    Matcher or None
        None when the key matches every entity (universal matching).

    Raises
    ------
    InvalidQueryError
        If the value cannot be matched against `vr`.
    """
    if query is not None and not isinstance(query, str):
        raise InvalidQueryError(f"{keyword}: query value must be a str, not {type(query).__name__}")
    kind = matching_type(vr, query)
    if kind == UNIVERSAL:
        return None
    assert query is not None  # only None is universal without text
    if kind == WILDCARD:
        return _build_wildcard(keyword, vr, level, query, case_sensitive_pn)
    if kind == RANGE:
        return _build_range(keyword, vr, level, query)
    if kind == UID_LIST:
        return _build_uids(keyword, vr, level, query, UID_LIST)
    return _build_single(keyword, vr, level, query, case_sensitive_pn)


# -- one function per matching type (PS3.4 C.2.2.2.1 - C.2.2.2.5) -------------


def _checked(kind: str, vr: str, query: str | None, allowed: Iterable[str]) -> None:
    if kind not in allowed:
        raise InvalidQueryError(f"{query!r} asks for {kind} matching, not this function's ({vr})")


def match_single_value(
    stored: object, query: str, vr: str, *, case_sensitive_pn: bool = False
) -> bool:
    """Single value matching (PS3.4 C.2.2.2.1).

    Parameters
    ----------
    stored : object
        The stored value: str (backslash-joined when multi-valued), int, or None.
    query : str
        One value (or a backslash list, matched as any of them), no wildcards.
    vr : str
        The VR of the attribute.
    case_sensitive_pn : bool, optional
        Compare PN values case-sensitively (default: case is ignored).

    Returns
    -------
    bool
        True if any stored value equals the query value; never for an empty stored value.
    """
    kind = matching_type(vr, query)
    _checked(kind, vr, query, (SINGLE,))
    matcher = _build_single("", vr, "", query, case_sensitive_pn)
    return matcher.test(stored)


def match_uid_list(stored: object, uids: str | Collection[str]) -> bool:
    """List of UID matching (PS3.4 C.2.2.2.2).

    Parameters
    ----------
    stored : object
        The stored UID (or backslash-joined UIDs).
    uids : str or collection of str
        A backslash-separated list as in an identifier, or the UIDs themselves.

    Returns
    -------
    bool
        True if a stored UID is one of `uids`.
    """
    query = uids if isinstance(uids, str) else "\\".join(uids)
    return _build_uids("", "UI", "", query, UID_LIST).test(stored)


def match_universal(stored: object) -> bool:
    """Universal matching (PS3.4 C.2.2.2.3): every entity matches, with a value or without.

    Parameters
    ----------
    stored : object
        The stored value, ignored.

    Returns
    -------
    bool
        Always True.
    """
    return True


def match_wildcard(
    stored: object, pattern: str, vr: str, *, case_sensitive_pn: bool = False
) -> bool:
    """Wild card matching (PS3.4 C.2.2.2.4): ``*`` is any run, ``?`` one character.

    Parameters
    ----------
    stored : object
        The stored value: str, backslash-joined when multi-valued.
    pattern : str
        The pattern, applied to each whole value. ``*`` alone is universal.
    vr : str
        The VR of the attribute; one of AE, CS, LO, LT, PN, SH, ST, UC, UR, UT.
    case_sensitive_pn : bool, optional
        Compare PN values case-sensitively (default: case is ignored).

    Returns
    -------
    bool
        True if any stored value matches the pattern.
    """
    kind = matching_type(vr, pattern)
    if kind == UNIVERSAL:
        return True
    if vr not in WILDCARD_VRS:
        raise InvalidQueryError(f"wildcards are not allowed for VR {vr} ({pattern!r})")
    return _build_wildcard("", vr, "", pattern, case_sensitive_pn).test(stored)


def match_range(stored: object, query: str, vr: str) -> bool:
    """Range matching (PS3.4 C.2.2.2.5) for DA, TM and DT, inclusive, open ends allowed.

    Parameters
    ----------
    stored : object
        The stored value (str); partial times and dates stand for their floor.
    query : str
        ``"lo-hi"``, ``"lo-"`` or ``"-hi"``; partial bounds cover their whole
        interval ("-1100" ends at 110059.999999).
    vr : str
        ``"DA"``, ``"TM"`` or ``"DT"``.

    Returns
    -------
    bool
        True if the stored value lies within the bounds; never for an empty value.
    """
    if vr not in DATE_TIME_VRS:
        raise InvalidQueryError(f"range matching is defined for DA, TM and DT, not {vr}")
    lo, hi = parse_range(vr, query)
    return _range_test(vr, lo, hi)(stored)
