"""A whole query, validated and parsed once: :func:`compile_query` and :class:`Query`.

The archive's ``find``, the C-FIND SCP and QIDO-RS all build their query
with :func:`compile_query`, test stored records with :meth:`Query.matches`
(or level by level with :meth:`Query.matches_level`), and hand the query to
:func:`engine.query.plan.choose_index` to pick a secondary index.
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.attributes import BY_KEYWORD, COMPUTED, LEVELS, level_of, vr_of
from engine.errors import InvalidQueryError
from engine.query.matching import Matcher, Test, compile_matcher

# Keys a query may ask to have returned that the index does not match on:
# their values are ignored (PS3.4 C.2.2.1.2: an SCP need not match on them),
# except that a QueryRetrieveLevel must agree with the level asked for.
RETURN_ONLY = frozenset(
    {
        "QueryRetrieveLevel",
        "RetrieveAETitle",
        "InstanceAvailability",
        "RetrieveURL",
        "TimezoneOffsetFromUTC",
        "SpecificCharacterSet",
    }
)

_LEVEL_ALIASES = {"INSTANCE": "IMAGE"}


def normalise_level(level: str) -> str:
    """The PS3.4 level name for `level`: case-insensitive, "INSTANCE" is "IMAGE".

    Parameters
    ----------
    level : str
        ``PATIENT``, ``STUDY``, ``SERIES``, ``IMAGE`` or ``INSTANCE``, any case.

    Returns
    -------
    str
        One of ``engine.attributes.LEVELS``.

    Raises
    ------
    InvalidQueryError
        If `level` is none of these.
    """
    if isinstance(level, str):
        name = level.strip().upper()
        name = _LEVEL_ALIASES.get(name, name)
        if name in LEVELS:
            return name
    raise InvalidQueryError(
        f"unknown query level {level!r}: use PATIENT, STUDY, SERIES or IMAGE (or INSTANCE)"
    )


class Query:
    """A compiled query: its level, its non-universal matchers and the keys to return.

    Build it with :func:`compile_query`.

    Attributes
    ----------
    level : str
        The query level, one of ``engine.attributes.LEVELS``.
    matchers : dict of str to Matcher
        The non-universal keys, in query order.
    requested : list of str
        Every key of the query, universal ones included, in query order.
    case_sensitive_pn : bool
        Whether PN values are matched case-sensitively.
    """

    __slots__ = ("_by_level", "_tests", "case_sensitive_pn", "level", "matchers", "requested")

    def __init__(
        self,
        level: str,
        matchers: dict[str, Matcher],
        requested: list[str],
        case_sensitive_pn: bool,
    ) -> None:
        self.level = level
        self.matchers = matchers
        self.requested = requested
        self.case_sensitive_pn = case_sensitive_pn
        self._tests: tuple[tuple[str, Test], ...] = tuple(
            (kw, m.test) for kw, m in matchers.items()
        )
        by_level: dict[str, list[tuple[str, Test]]] = {lvl: [] for lvl in LEVELS}
        for kw, m in matchers.items():
            by_level[m.level].append((kw, m.test))
        self._by_level = {lvl: tuple(tests) for lvl, tests in by_level.items()}

    @property
    def levels(self) -> frozenset[str]:
        """The levels that have at least one non-universal matcher."""
        return frozenset(lvl for lvl, tests in self._by_level.items() if tests)

    def matchers_at(self, level: str) -> list[Matcher]:
        """The non-universal matchers of keys at `level`.

        Parameters
        ----------
        level : str
            A level name, any case; ``INSTANCE`` is ``IMAGE``.

        Returns
        -------
        list of Matcher
            In query order.
        """
        name = normalise_level(level)
        return [m for m in self.matchers.values() if m.level == name]

    def matches(self, attrs: Mapping[str, object]) -> bool:
        """Whether a record satisfies every non-universal key.

        Parameters
        ----------
        attrs : mapping of str to object
            Stored values by keyword, all levels merged; a missing key has no value.

        Returns
        -------
        bool
            True if every matcher accepts its stored value.
        """
        get = attrs.get
        for kw, test in self._tests:  # noqa: SIM110  -- hot loop: no generator frame
            if not test(get(kw)):
                return False
        return True

    def matches_level(self, level: str, attrs: Mapping[str, object]) -> bool:
        """Whether a record of `level` satisfies the keys of that level.

        Parameters
        ----------
        level : str
            The level of the record (``PATIENT``, ``STUDY``, ``SERIES``, ``IMAGE``).
        attrs : mapping of str to object
            The record's stored values by keyword.

        Returns
        -------
        bool
            True if every matcher whose key belongs to `level` accepts its stored value.
        """
        tests = self._by_level.get(level)
        if tests is None:
            tests = self._by_level[normalise_level(level)]
        get = attrs.get
        for kw, test in tests:  # noqa: SIM110  -- hot loop
            if not test(get(kw)):
                return False
        return True

    def __repr__(self) -> str:
        keys = ", ".join(f"{kw}={m.query!r}" for kw, m in self.matchers.items())
        return f"Query({self.level}: {keys or 'all'})"


def compile_query(
    level: str,
    query: Mapping[str, str | None],
    *,
    case_sensitive_pn: bool = False,
) -> Query:
    """Validate a query and parse each of its keys once.

    Parameters
    ----------
    level : str
        ``PATIENT``, ``STUDY``, ``SERIES`` or ``IMAGE`` (``INSTANCE`` is an alias), any case.
    query : mapping of str to (str or None)
        Key attributes by DICOM keyword, each with its query value as written
        in a C-FIND identifier or a QIDO-RS parameter; "" and None are universal.
    case_sensitive_pn : bool, optional
        Match PN values case-sensitively (default: case is ignored, PS3.4 C.2.2.2.1).

    Returns
    -------
    Query
        The compiled query.

    Raises
    ------
    InvalidQueryError
        For an unknown level or keyword, or a value the key's VR cannot match.
    """
    name = normalise_level(level)
    matchers: dict[str, Matcher] = {}
    requested: list[str] = []
    for keyword, value in query.items():
        if not isinstance(keyword, str):
            raise InvalidQueryError(f"query keys must be DICOM keywords, not {keyword!r}")
        requested.append(keyword)
        if keyword in RETURN_ONLY or (keyword in BY_KEYWORD and not BY_KEYWORD[keyword].level):
            if keyword == "QueryRetrieveLevel" and value and normalise_level(value) != name:
                raise InvalidQueryError(
                    f"QueryRetrieveLevel {value!r} disagrees with the level asked for ({name})"
                )
            continue
        if keyword not in BY_KEYWORD and keyword not in COMPUTED:
            raise InvalidQueryError(
                f"unknown attribute {keyword!r} in query: the archive neither indexes nor "
                "returns it (see engine.attributes); check the keyword's spelling"
            )
        matcher = compile_matcher(
            keyword, vr_of(keyword), level_of(keyword), value, case_sensitive_pn=case_sensitive_pn
        )
        if matcher is not None:
            matchers[keyword] = matcher
    return Query(name, matchers, requested, case_sensitive_pn)
