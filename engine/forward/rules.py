"""Forward rules: the ``[[forward]]`` tables of the TOML file, checked once at start-up.

::

    [[forward]]
    name = "reading-room"
    when = { Modality = "CT\\\\MR", CallingAE = "CT*" }  # PS3.4 C.2.2.2 matching
    to = "dicom:VIEWER1"       # a [remotes.VIEWER1] entry; or "stow:http://host/dicom-web"
    parallel = 2               # associations (or HTTP streams) to it at once
    batch = 200                # instances per association, at most
    max_attempts = 10          # refusals of one instance before it is a dead letter
    max_age_s = 604800         # an instance waiting longer is a dead letter (0: never)
    commit = false             # true: delivered once the destination committed it
    commit_timeout_s = 600     # no Storage Commitment report in this long: sent again

With ``commit = true`` (``dicom:`` targets) each batch is followed by a
Storage Commitment request (PS3.4 Annex J, :mod:`engine.forward.commit`);
an instance counts as delivered only once the destination's report commits
it, and one it does not commit is retried like a refused one.

A rule applies to instances stored after it first ran: its queue starts at
the head of the change log, not at the beginning of history. ``when`` keys
are DICOM keywords of any stored attribute and take the values a C-FIND
identifier would (single value, a backslash list, ``*``/``?`` wildcards,
ranges, UID lists); ``CallingAE`` is the AE title that sent the instance,
as recorded in its File Meta Information (Source Application Entity Title).
Keys the index holds are matched from the index; others read the
instance's metadata once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydicom.datadict import dictionary_VR, keyword_dict

from engine.attributes import BY_KEYWORD, level_of, vr_of
from engine.errors import InvalidQueryError
from engine.query.matching import Matcher, compile_matcher

RULE_KEYS = ("name", "when", "to", "parallel", "batch", "max_attempts", "max_age_s", "commit",
             "commit_timeout_s")  # fmt: skip
DEFAULT_COMMIT_TIMEOUT_S = 600
DEFAULT_BATCH = 200
DEFAULT_MAX_ATTEMPTS = 10
DEFAULT_MAX_AGE_S = 7 * 86400.0
MAX_PARALLEL = 16
CALLING_AE = "CallingAE"  # the sender, from (0002,0016) Source Application Entity Title
_SOURCE_AE = "SourceApplicationEntityTitle"
# computed keys the index has for one instance (counts change as a study grows: not these)
INDEXED_COMPUTED = ("ModalitiesInStudy", "SOPClassesInStudy", "TransferSyntaxUID")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class Target:
    """Where a rule sends: ``dicom`` to a [remotes] AE title, ``stow`` to a DICOMweb base URL."""

    kind: str  # "dicom" or "stow"
    address: str  # the AE title, or the URL

    def __str__(self) -> str:
        return f"{self.kind}:{self.address}"


@dataclass(frozen=True, slots=True)
class Condition:
    """One ``when`` key: the attribute, whether the index holds it, and its matcher."""

    keyword: str  # as stored: CallingAE is SourceApplicationEntityTitle
    indexed: bool
    matcher: Matcher


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    target: Target
    conditions: tuple[Condition, ...] = ()
    parallel: int = 1
    batch: int = DEFAULT_BATCH
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_age_s: float = DEFAULT_MAX_AGE_S
    commit: bool = False
    commit_timeout_s: float = DEFAULT_COMMIT_TIMEOUT_S

    @property
    def needs_metadata(self) -> bool:
        """Whether some key is not in the index (the instance's metadata must be read)."""
        return any(not c.indexed for c in self.conditions)

    def matches(self, indexed: Mapping[str, Any], stored: Mapping[str, Any] | None) -> bool:
        """Whether an instance matches every ``when`` key.

        `indexed` is the instance's attributes as the index keeps them (every
        level merged); `stored` the other attributes (keyword -> value as
        text), needed only when :attr:`needs_metadata`.
        """
        for c in self.conditions:
            source = indexed if c.indexed else (stored or {})
            if not c.matcher(source.get(c.keyword)):
                return False
        return True


def forward_rules(extra: Mapping[str, Any], remotes: Mapping[str, Any]) -> list[Rule]:
    """The ``[[forward]]`` tables as rules; ValueError naming the problem.

    `remotes` are the configured [remotes] entries (AE title -> Remote):
    a ``dicom:`` target must be one of them, with a host and a port.
    """
    tables = extra.get("forward", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ValueError("forward rules are [[forward]] tables")
    rules = [_rule(i, t, remotes) for i, t in enumerate(tables)]
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise ValueError(f"[[forward]] names must differ: {names}")
    return rules


def _rule(i: int, t: dict[str, Any], remotes: Mapping[str, Any]) -> Rule:
    where = f"[[forward]] #{i + 1}"
    unknown = set(t) - set(RULE_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (known: {', '.join(RULE_KEYS)})")
    name = t.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{where}: name must be 1..64 letters, digits, '.', '_' or '-'")
    where = f"[[forward]] {name!r}"
    target = _target(where, t.get("to"), remotes)
    when = t.get("when", {})
    if not isinstance(when, dict):
        raise ValueError(f'{where}: when must be a table like {{ Modality = "CT" }}')
    conditions = tuple(_condition(where, k, v) for k, v in when.items())
    commit = t.get("commit", False)
    if not isinstance(commit, bool):
        raise ValueError(f"{where}: commit must be true or false")
    if commit and target.kind != "dicom":
        raise ValueError(f"{where}: commit = true needs a dicom: target (Storage Commitment "
                         "is a DIMSE service)")  # fmt: skip
    return Rule(
        name, target, conditions,
        parallel=_int(where, t, "parallel", 1, 1, MAX_PARALLEL),
        batch=_int(where, t, "batch", DEFAULT_BATCH, 1, 10_000),
        max_attempts=_int(where, t, "max_attempts", DEFAULT_MAX_ATTEMPTS, 1, 1_000_000),
        max_age_s=float(_int(where, t, "max_age_s", int(DEFAULT_MAX_AGE_S), 0, 10**9)),
        commit=commit,
        commit_timeout_s=float(_int(where, t, "commit_timeout_s", DEFAULT_COMMIT_TIMEOUT_S,
                                    1, 10**7)),
    )  # fmt: skip


def _target(where: str, to: Any, remotes: Mapping[str, Any]) -> Target:
    if not isinstance(to, str) or ":" not in to:
        raise ValueError(f'{where}: to must be "dicom:AE_TITLE" or "stow:http(s)://host/path"')
    kind, address = to.split(":", 1)
    if kind == "dicom":
        remote = remotes.get(address)
        if remote is None or remote.host is None or remote.port is None:
            raise ValueError(f"{where}: {address!r} is not a [remotes.{address}] entry with "
                             "host and port")  # fmt: skip
        return Target(kind, address)
    if kind == "stow":
        try:
            parts = urlsplit(address)
            parts.port  # noqa: B018 -- raises for a port that is not a number
        except ValueError as exc:
            raise ValueError(f"{where}: {address!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{where}: a stow target is an http(s) URL, not {address!r}")
        return Target(kind, address.rstrip("/"))
    raise ValueError(f"{where}: unknown destination kind {kind!r} (dicom or stow)")


def _condition(where: str, keyword: str, value: Any) -> Condition:
    if not isinstance(value, str):
        raise ValueError(f"{where}: when.{keyword} must be a string, as in a C-FIND identifier")
    stored_as = _SOURCE_AE if keyword == CALLING_AE else keyword
    indexed = stored_as in INDEXED_COMPUTED or (
        stored_as in BY_KEYWORD and bool(BY_KEYWORD[stored_as].level)
    )
    if indexed:
        vr, level = vr_of(stored_as), level_of(stored_as)
    elif stored_as in keyword_dict:
        vr, level = dictionary_VR(keyword_dict[stored_as]), "IMAGE"
    else:
        raise ValueError(f"{where}: when.{keyword}: not a DICOM keyword")
    try:
        matcher = compile_matcher(stored_as, vr, level, value)
    except InvalidQueryError as exc:
        raise ValueError(f"{where}: when.{keyword}: {exc}") from None
    if matcher is None:
        raise ValueError(f"{where}: when.{keyword} = {value!r} matches everything; leave it out")
    return Condition(stored_as, indexed, matcher)


def _int(where: str, t: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = t.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{where}: {key} must be an integer {lo}..{hi}")
    return value
