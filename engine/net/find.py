"""Query SCP: C-FIND for the Patient Root and Study Root information models.

The identifier (PS3.4 C.4.1.1.3) is split once: keys the archive indexes go
to :func:`engine.search.find_rows`, which matches them (PS3.4 C.2.2.2);
:mod:`engine.net.identifier` encodes each answer with exactly those keys
straight from the index's values; keys it does not know are
returned empty, which PS3.4 C.2.2.1.2 allows for optional keys an SCP does
not support. Matches are streamed: each pending response (0xFF00) leaves as
soon as its match is found, and a C-CANCEL (PS3.7 9.3.2.3) is checked
between two matches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from engine import audit
from engine.attributes import BY_KEYWORD, COMPUTED
from engine.errors import InvalidQueryError
from engine.net.charset import answer_charset, query_charset, query_text
from engine.net.identifier import (
    INSTANCE_AVAILABILITY,
    QUERY_RETRIEVE_LEVEL,
    RETRIEVE_AE_TITLE,
    SPECIFIC_CHARACTER_SET,
    AnswerEncoder,
    Encoding,
    answer_dataset,
)
from engine.net.settings import Access
from engine.net.status import (
    CANCEL,
    DOES_NOT_MATCH_SOP_CLASS,
    PENDING,
    REFUSED_NOT_AUTHORISED,
    SUCCESS,
    failure,
    status_dataset,
)
from engine.net.store import audit_refusal
from engine.net.substore import DRAIN_EVERY, quick_polling, wait_for_network
from engine.query import RETURN_ONLY, normalise_level
from engine.search import find_rows

if TYPE_CHECKING:
    from engine.archive import Archive

log = logging.getLogger("engine.net")

PATIENT_ROOT_LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")  # PS3.4 C.6.1
STUDY_ROOT_LEVELS = ("STUDY", "SERIES", "IMAGE")  # PS3.4 C.6.2
# Returned by us rather than matched: PS3.4 C.4.1.1.3.2, C.6.1.1.x
LOCAL_KEYS = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle",
                        "InstanceAvailability"})  # fmt: skip

# (status, answer): an answer's Dataset, or its bytes when Encoding.as_bytes allowed them
Response = tuple[int | Dataset, Dataset | bytes | None]


def audit_query(ident: Identifier, calling: str, address: str) -> None:
    """One audit record for a C-FIND; raises AuditError."""
    audit.emit(audit.Event.QUERY, user=calling, address=address,
               patient=ident.query.get("PatientID") or None,
               study=ident.query.get("StudyInstanceUID") or None,
               level=ident.level, keys=ident.query)  # fmt: skip


class Identifier:
    """A C-FIND / C-MOVE / C-GET identifier, split into what the archive matches and the rest.

    Parameters
    ----------
    ds
        The decoded identifier.
    levels
        The levels the information model allows.

    Raises
    ------
    engine.errors.InvalidQueryError
        No Query/Retrieve Level, or one the model does not have.
    """

    def __init__(self, ds: Dataset, levels: tuple[str, ...]) -> None:
        raw = ds.get("QueryRetrieveLevel", "")
        level = normalise_level(str(raw)) if raw else ""
        if level not in levels:
            raise InvalidQueryError(
                f"QueryRetrieveLevel {raw!r} is not one of {', '.join(levels)} in this model"
            )
        self.level = level
        # PS3.4 C.4.1.1.3.2: answered in the query's character set where the values fit it
        self.charset: tuple[str, ...] | None = None
        self.query: dict[str, str] = {}
        self.unknown: list[tuple[int, str]] = []  # (tag, VR) returned empty
        self.local: list[str] = []
        for elem in ds:
            tag = int(elem.tag)
            if tag & 0xFFFF == 0 or elem.tag.is_private:
                continue  # group lengths and private keys are neither matched nor returned
            keyword = elem.keyword or keyword_for_tag(tag)
            if keyword in LOCAL_KEYS:
                self.local.append(keyword)
                if tag == SPECIFIC_CHARACTER_SET:
                    self.charset = query_charset(elem.value)
            elif keyword in BY_KEYWORD or keyword in COMPUTED or keyword in RETURN_ONLY:
                self.query[keyword] = _query_string(elem.value)
            else:
                self.unknown.append((tag, elem.VR if elem.VR else _vr(tag)))


def _vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _query_string(value: Any) -> str:
    """A query value as written in an identifier (PS3.4 C.2.2.2: multiple values by ``\\``)."""
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return query_text("\\".join(str(v) for v in value))
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return query_text(str(value))


def answer(match: Dataset, ident: Identifier, ae_title: str) -> Dataset:
    """Complete one match: level, local keys, the unknown keys (empty), its character set.

    The Dataset path that :func:`engine.net.identifier.answer_dataset` replaces:
    pydicom's writer encodes its values in the Specific Character Set set here.
    """
    match.QueryRetrieveLevel = ident.level
    if "RetrieveAETitle" in ident.local:
        match.RetrieveAETitle = ae_title
    if "InstanceAvailability" in ident.local:
        match.InstanceAvailability = "ONLINE"  # PS3.4 C.4.1.1.3.2: everything is on disk
    for tag, vr in ident.unknown:
        match.add_new(tag, vr, None)
    texts = [str(e.value) for e in match if e.VR in _TEXT_OF_CHARSET and e.value is not None]
    terms = answer_charset(ident.charset, [t for t in texts if not t.isascii()])
    if terms is None:
        match.pop(SPECIFIC_CHARACTER_SET, None)
    else:
        match.SpecificCharacterSet = list(terms) if len(terms) > 1 else terms[0]
    return match


# PS3.5 6.1.2.3: the VRs whose values Specific Character Set applies to
_TEXT_OF_CHARSET = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})


def local_values(ident: Identifier, ae_title: str) -> dict[int, tuple[str, str]]:
    """Tag -> (VR, value) of the keys every answer to `ident` gets from us, not the index."""
    local = {QUERY_RETRIEVE_LEVEL: ("CS", ident.level)}
    if "RetrieveAETitle" in ident.local:
        local[RETRIEVE_AE_TITLE] = ("AE", ae_title)
    if "InstanceAvailability" in ident.local:
        local[INSTANCE_AVAILABILITY] = ("CS", "ONLINE")  # PS3.4 C.4.1.1.3.2: all on disk
    return local


def find_responses(
    identifier: Callable[[], Dataset],
    levels: tuple[str, ...],
    archive: Archive,
    access: Access,
    peer: tuple[str, str],
    ae_title: str,
    encoding: Encoding,
    cancelled: Callable[[int], bool],
) -> Iterator[Response]:
    """The responses to one C-FIND, whichever path serves the association.

    Parameters
    ----------
    identifier
        Decodes the request's identifier (it may raise: the answer is then 0xA900).
    levels
        The levels of the information model of the presentation context.
    archive
        This worker's archive.
    access
        Whether the calling AE may query.
    peer
        The calling AE title and its address.
    ae_title
        Our AE title, returned as RetrieveAETitle when asked.
    encoding
        The transfer syntax of the presentation context, for the answers.
    cancelled
        Called before match ``i`` is looked for: whether a C-CANCEL arrived. What it
        raises ends the association, not the C-FIND.

    Yields
    ------
    tuple
        ``(0xFF00, answer)`` per match (its bytes where ``encoding.as_bytes``
        allows and :class:`AnswerEncoder` can write them), then ``(status, None)``; 0xFE00 once
        cancelled; a failure status Dataset with an Error Comment on error.
    """
    calling, address = peer
    if not access.may(calling, "query"):
        log.warning("C-FIND from %s refused: not allowed to query", calling)
        audit_refusal(audit.Event.QUERY, calling, address, "may not query")
        yield status_dataset(REFUSED_NOT_AUTHORISED, f"{calling} may not query here"), None
        return
    try:
        ident = Identifier(identifier(), levels)
    except InvalidQueryError as exc:
        yield failure(exc, f"C-FIND from {calling}"), None
        return
    except Exception as exc:  # noqa: BLE001 -- an undecodable identifier
        log.warning("C-FIND from %s: cannot decode the identifier: %s", calling, exc)
        yield status_dataset(DOES_NOT_MATCH_SOP_CLASS, f"cannot decode identifier: {exc}"), None
        return
    what = f"C-FIND {ident.level} from {calling}"
    try:
        audit_query(ident, calling, address)
        columns, rows = find_rows(archive, ident.level, ident.query)
        local = local_values(ident, ae_title)
        matches = _answers(columns, rows, ident, local, encoding)
    except Exception as exc:  # noqa: BLE001 -- every failure must become a status
        yield failure(exc, what), None
        return
    i = 0
    # outside the try: what `cancelled` raises (a broken association) is no DIMSE status
    while not cancelled(i):
        try:
            match = next(matches, None)
        except Exception as exc:  # noqa: BLE001 -- every failure must become a status
            yield failure(exc, what), None
            return
        if match is None:
            yield SUCCESS, None
            return
        yield PENDING, match
        i += 1
    yield CANCEL, None  # PS3.4 C.4.1.3.1: stop and answer Cancel


def _answers(
    columns: list[tuple[str, int, str]],
    rows: Iterable[dict[str, Any]],
    ident: Identifier,
    local: dict[int, tuple[str, str]],
    encoding: Encoding,
) -> Iterator[Dataset | bytes]:
    """Each match's answer: its bytes where :class:`AnswerEncoder` can write them and the
    encoding allows, else its Dataset (:func:`answer_dataset`)."""
    args = (ident.level, local, ident.unknown, encoding, ident.charset)
    encoder = AnswerEncoder(columns, *args) if encoding.as_bytes else None
    for attrs in rows:
        raw = encoder.encode(attrs) if encoder is not None else None
        yield raw if raw is not None else answer_dataset(columns, attrs, *args)


def handle_find(
    event: Any, archive: Archive, access: Access, levels: tuple[str, ...], ae_title: str
) -> Iterator[Response]:
    """EVT_C_FIND: stream the matches of one identifier (:func:`find_responses`).

    Parameters
    ----------
    event : pynetdicom.events.Event
        The C-FIND request.
    archive
        This worker's archive.
    access
        Whether the calling AE may query.
    levels
        The levels of the information model of the presentation context.
    ae_title
        Our AE title, returned as RetrieveAETitle when asked.
    """
    peer = (str(event.assoc.requestor.ae_title).strip(), str(event.assoc.requestor.address))
    ts = event.context.transfer_syntax
    encoding = Encoding(ts.is_implicit_VR, ts.is_little_endian)

    def cancelled(i: int) -> bool:
        wait_for_network(event.assoc, drain=i % DRAIN_EVERY == DRAIN_EVERY - 1)
        return bool(event.is_cancelled)

    with quick_polling(event.assoc):
        yield from find_responses(lambda: event.identifier, levels, archive, access, peer,
                                  ae_title, encoding, cancelled)  # fmt: skip
