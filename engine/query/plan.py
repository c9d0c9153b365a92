"""Index planning: which secondary index narrows a query most, and over which keys.

The index keeps, for some keywords, a secondary index from a *normalised*
value to the records holding it. :func:`normalise_for_index` (one value) and
:func:`index_keys` (a stored attribute, split into its values) are the only
way to make those keys, for the writer and for :func:`choose_index` alike, so
that the two cannot disagree:

- text loses its PS3.5 6.2 padding (trailing spaces and NULs; leading spaces
  too for AE, CS, SH, LO);
- PN also loses trailing empty components and is upper-cased, always, even
  when a query asks for case-sensitive matching (that query then filters the
  candidates it gets from the upper-cased key); a name of several component
  groups ("Yamada^Tarou=山田^太郎") has a key for the whole name and one for
  each group, since a query may match any group (engine.query.matching).
  Names stored before group keys existed are found by a group after
  ``pacs reindex``;
- DA is "YYYYMMDD", TM "HHMMSS.ffffff", DT "YYYYMMDDHHMMSS.ffffff" (the floor
  of a partial value, offset dropped); a value that does not parse keeps its
  unpadded text, and never matches a date or time query;
- IS and US are the decimal integer ("05" is "5");
- UI is the UID without padding.

A multi-valued stored attribute (ModalitiesInStudy "CT\\MR") has one key per
value. An :class:`IndexChoice` is a candidate set: the caller must still
filter the candidates with :meth:`engine.query.Query.matches`; the choice
never excludes a record that matches.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from engine.attributes import vr_of
from engine.errors import InvalidQueryError
from engine.query._values import normalise_value, pn_groups, split_values
from engine.query.compiled import Query
from engine.query.matching import RANGE, SINGLE, UID_LIST, WILDCARD, Matcher

EXACT = "exact"
PREFIX = "prefix"

# Most selective first. UID keys are tried before these, most specific level first.
_PREFERENCE: tuple[tuple[str, str], ...] = (
    ("AccessionNumber", SINGLE),
    ("PatientID", SINGLE),
    ("PatientID", WILDCARD),
    ("PatientName", SINGLE),
    ("PatientName", WILDCARD),
    ("StudyDate", SINGLE),
    ("StudyDate", RANGE),
    ("ModalitiesInStudy", SINGLE),
)
_UID_KEYS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")


@dataclass(frozen=True, slots=True)
class IndexChoice:
    """A secondary index and the part of it to read.

    Exactly one description is set: `keys` (exact), `prefix`, or `lo`/`hi`
    (an inclusive key range, either end open).

    Attributes
    ----------
    index : str
        The index's name, which is the keyword it indexes.
    level : str
        The level of that keyword (``engine.attributes.level_of``).
    kind : str
        ``"exact"``, ``"prefix"`` or ``"range"``.
    keys : list of str or None
        exact: the normalised keys to look up, sorted and distinct.
    prefix : str or None
        prefix: every key starting with it.
    lo, hi : str or None
        range: every key with ``lo <= key <= hi``; None is an open end.
    matcher : Matcher
        The matcher this choice was derived from.
    """

    index: str
    level: str
    kind: str
    matcher: Matcher
    keys: list[str] | None = None
    prefix: str | None = None
    lo: str | None = None
    hi: str | None = None

    def covers(self, key: str) -> bool:
        """Whether an index key falls within the chosen part of the index.

        Parameters
        ----------
        key : str
            A key made by :func:`normalise_for_index` / :func:`index_keys`.

        Returns
        -------
        bool
            True if a reader following this choice would visit `key`.
        """
        if self.kind == EXACT:
            assert self.keys is not None  # set for every exact choice
            return key in self.keys
        if self.kind == PREFIX:
            assert self.prefix is not None  # set for every prefix choice
            return key.startswith(self.prefix)
        return (self.lo is None or self.lo <= key) and (self.hi is None or key <= self.hi)


def normalise_for_index(keyword: str, value: object) -> str:
    """The index key of one value of `keyword` (see the module docstring).

    Parameters
    ----------
    keyword : str
        An indexed or computed keyword of ``engine.attributes``.
    value : object
        One value (str or int), not a backslash-joined list: use
        :func:`index_keys` for a stored attribute.

    Returns
    -------
    str
        The normalised key.

    Raises
    ------
    InvalidQueryError
        If `keyword` is not an attribute the archive knows.
    """
    try:
        vr = vr_of(keyword)
    except KeyError:
        raise InvalidQueryError(f"unknown attribute {keyword!r}: no index can hold it") from None
    return normalise_value(vr, value, fold_pn=True)


def index_keys(keyword: str, stored: object) -> list[str]:
    """Every index key of a stored attribute: one per non-empty value, distinct, in order.

    Parameters
    ----------
    keyword : str
        An indexed or computed keyword of ``engine.attributes``.
    stored : object
        The stored value as the index keeps it (backslash-joined text, int, or None).

    Returns
    -------
    list of str
        The keys to write; empty when the attribute has no value.
    """
    vr = vr_of(keyword)
    keys = [normalise_value(vr, v, fold_pn=True) for v in split_values(vr, stored)]
    if vr == "PN":
        keys = [g for k in keys for g in ((k, *pn_groups(k, False)) if "=" in k else (k,))]
    return [k for k in dict.fromkeys(keys) if k]


def _name_key(keyword: str, value: object) -> str:
    """The key a matching name certainly has: its first non-empty group, or the whole value."""
    key = normalise_for_index(keyword, value)
    return next((g for g in pn_groups(key, False) if g), key)


def _describe(matcher: Matcher) -> IndexChoice | None:
    """The part of the matcher's index that holds every record it can match, if narrow."""
    kw = matcher.keyword
    base = (kw, matcher.level)
    if matcher.kind in (SINGLE, UID_LIST) and matcher.uids:
        return IndexChoice(*base, EXACT, matcher, keys=sorted(matcher.uids))
    if matcher.kind == SINGLE and matcher.lo is None and matcher.hi is None:
        key_of = _name_key if matcher.vr == "PN" else normalise_for_index
        keys = sorted({key_of(kw, v) for v in matcher.values})
        return IndexChoice(*base, EXACT, matcher, keys=keys)
    if matcher.kind in (SINGLE, RANGE):
        # Dates and times: a single value covers its precision interval.
        lo, hi = matcher.lo, matcher.hi
        if lo is None and hi is None:
            return None
        if lo == hi and lo is not None:
            return IndexChoice(*base, EXACT, matcher, keys=[lo])
        return IndexChoice(*base, RANGE, matcher, lo=lo, hi=hi)
    if matcher.kind == WILDCARD and matcher.prefix:
        prefix = normalise_for_index(kw, matcher.prefix)
        if prefix:
            return IndexChoice(*base, PREFIX, matcher, prefix=prefix)
    return None


def _rank(matcher: Matcher) -> int:
    """Lower is more selective."""
    kw, kind = matcher.keyword, matcher.kind
    if matcher.vr == "UI" and kind in (SINGLE, UID_LIST):
        return _UID_KEYS.index(kw) if kw in _UID_KEYS else len(_UID_KEYS)
    base = len(_UID_KEYS) + 1
    for i, pref in enumerate(_PREFERENCE):
        if (kw, kind) == pref:
            return base + i
    # Any other index the caller offers: after the known ones, exact before prefix before range.
    return base + len(_PREFERENCE) + {SINGLE: 0, WILDCARD: 1, RANGE: 2}.get(kind, 3)


def choose_index(query: Query, available: Collection[str]) -> IndexChoice | None:
    """Pick the most selective secondary index a query can use.

    The order is: UID (single or list; SOP Instance, Series, Study UID, then
    others) > AccessionNumber single > PatientID single > PatientID prefix >
    PatientName single > PatientName prefix > StudyDate single > StudyDate
    range > ModalitiesInStudy single > any other offered index (single, then
    prefix, then range). A wildcard is usable only through a non-empty literal
    prefix; a range needs at least one bound.

    Parameters
    ----------
    query : Query
        A query from :func:`engine.query.compile_query`, at any level.
    available : collection of str
        The names (keywords) of the secondary indexes the index offers.

    Returns
    -------
    IndexChoice or None
        The index and keys to read, or None when a full scan is needed.
    """
    best: tuple[int, IndexChoice] | None = None
    for keyword, matcher in query.matchers.items():
        if keyword not in available:
            continue
        rank = _rank(matcher)
        if best is not None and rank >= best[0]:
            continue
        choice = _describe(matcher)
        if choice is not None:
            best = (rank, choice)
    return None if best is None else best[1]
