"""Retrieve SCPs: C-GET and C-MOVE for the Patient Root and Study Root models.

The identifier's unique keys (PS3.4 C.4.2.2.1: at and above the retrieve
level, a list of UIDs allowed at the level) become one IMAGE-level query,
which gives each instance's SOP Class and stored transfer syntax without
reading a record. Each instance is then read and sent by a C-STORE
sub-operation (PS3.4 C.4.2.3 / C.4.3.3):

- in its stored transfer syntax when the peer accepted that syntax for its
  SOP Class (the usual case): the stored data set bytes go out as they are,
  nothing is decoded or re-encoded (:mod:`engine.net.substore`);
- otherwise converted: compressed pixel data is decompressed (pydicom with
  pylibjpeg) to Explicit VR Little Endian, big endian pixel data is swapped;
- an instance that cannot be read or converted is a failed sub-operation,
  counted in the final response with its UID in the Failed SOP Instance UID
  List; it never ends the association.

Associations on the fast path (:mod:`engine.net.fastpath`) send through
our own loop (:mod:`engine.net.send`), which uses :func:`identify`,
:func:`resolve`, :func:`proposed_contexts` and :func:`prepare` from here.
On the others (:func:`handle_get`, :func:`handle_move`) pynetdicom counts
the sub-operations and sends the pending and final responses (0x0000,
0xB000 when some failed, 0xFE00 when cancelled).
"""

from __future__ import annotations

import io
import logging
import ssl
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from engine import audit
from engine.attributes import UNIQUE_KEY
from engine.errors import InvalidQueryError, UnsupportedTransferSyntaxError
from engine.net.find import Identifier
from engine.net.pynetdicom_compat import set_run_loop_delay
from engine.net.settings import Access, Remote
from engine.net.status import (
    CANCEL,
    DOES_NOT_MATCH_SOP_CLASS,
    PENDING,
    REFUSED_NOT_AUTHORISED,
    failure,
    status_dataset,
)
from engine.net.store import audit_refusal
from engine.net.substore import (
    RETRIEVE_POLL_S,
    encoded_instance,
    quick_polling,
    send_encoded_instances,
)
from engine.net.transport import set_nodelay

if TYPE_CHECKING:
    from engine.archive import Archive

log = logging.getLogger("engine.net")

HIERARCHY = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
MAX_PROPOSED_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1..255
UNCOMPRESSED = (ExplicitVRLittleEndian, "1.2.840.10008.1.2")  # explicit, implicit VR LE


class Match:
    """One instance to send: its UIDs and how it is stored."""

    __slots__ = ("sop_class", "sop_instance", "transfer_syntax")

    def __init__(self, sop_instance: str, sop_class: str, transfer_syntax: str) -> None:
        self.sop_instance, self.sop_class = sop_instance, sop_class
        self.transfer_syntax = transfer_syntax


def resolve(archive: Archive, ident: Identifier) -> list[Match]:
    """The instances a retrieve identifier names (PS3.4 C.4.2.2.1 hierarchical keys).

    Raises
    ------
    engine.errors.InvalidQueryError
        The unique key of the retrieve level is missing or empty.
    """
    return list(_found(archive, _image_query(ident)))


def _image_query(ident: Identifier) -> dict[str, Any]:
    """The IMAGE-level index query of a retrieve identifier; InvalidQueryError if it names none."""
    unique = UNIQUE_KEY[ident.level]
    if not ident.query.get(unique):
        raise InvalidQueryError(f"a {ident.level} retrieve needs a value for {unique}")
    query = {k: v for k, v in ident.query.items() if k in HIERARCHY and v}
    query.update(SOPInstanceUID=query.get("SOPInstanceUID", ""), SOPClassUID="",
                 TransferSyntaxUID="")  # fmt: skip
    return query


def _found(archive: Archive, query: dict[str, Any], limit: int | None = None) -> Iterator[Match]:
    # plain dicts: a Dataset per match delayed the first C-STORE by milliseconds
    for a in archive.find_attrs("IMAGE", query, limit=limit):
        yield Match(a["SOPInstanceUID"], a.get("SOPClassUID", ""), a.get("TransferSyntaxUID", ""))


class Matches:
    """A retrieve's instances, the first one found before the rest (C-GET sends it at once).

    Resolving a series takes the index about 15 us per instance (3 ms for a
    200-slice CT) before a list of them exists. Iterating yields the first
    match of a one-row query, then resolves the whole answer, calls
    `on_resolved` with its size (the audit record) and yields the rest in
    the same index order. ``len()`` resolves the answer too.
    """

    def __init__(self, archive: Archive, ident: Identifier,
                 on_resolved: Callable[[int], None]) -> None:  # fmt: skip
        self._archive, self._query = archive, _image_query(ident)  # validated now
        self._on_resolved = on_resolved
        self._all: list[Match] | None = None
        self._first: Match | None = None
        self._looked = False  # for the first match

    def first(self) -> Match | None:
        """The first match, from a one-row query; None (and resolved: none) if nothing."""
        if not self._looked:
            if self._all is not None:
                self._first = self._all[0] if self._all else None
            else:
                self._first = next(_found(self._archive, self._query, limit=1), None)
            self._looked = True
        if self._first is None:
            self._resolved()
        return self._first

    def _resolved(self) -> list[Match]:
        if self._all is None:
            self._all = list(_found(self._archive, self._query))
            self._on_resolved(len(self._all))
        return self._all

    def __len__(self) -> int:
        return len(self._resolved())

    def __iter__(self) -> Iterator[Match]:
        if self._all is not None:
            yield from self._all
            return
        first = self.first()
        if first is None:
            return
        yield first
        for m in self._resolved():  # stored meanwhile, it may come first now: not twice
            if m.sop_instance != first.sop_instance:
                yield m


def proposed_contexts(matches: list[Match]) -> list[PresentationContext]:
    """Contexts for a C-MOVE sub-association: each stored syntax, and uncompressed for all.

    One context per (SOP Class, stored transfer syntax), so that the peer can
    accept each stored syntax (the acceptor picks one syntax per context: an
    Implicit VR instance offered beside Explicit VR in one context would go
    converted), and one per SOP Class offering the uncompressed syntaxes we
    can convert to; at most 128 (PS3.8 9.3.2.2).
    """
    stored: dict[str, set[str]] = {}
    for m in matches:
        stored.setdefault(m.sop_class, set()).add(m.transfer_syntax)
    contexts: list[PresentationContext] = []
    for sop_class, syntaxes in sorted(stored.items()):
        for ts in sorted(syntaxes):
            contexts.append(build_context(sop_class, [ts]))
        contexts.append(build_context(sop_class, list(UNCOMPRESSED)))
    if len(contexts) > MAX_PROPOSED_CONTEXTS:  # keep the uncompressed ones: they always work
        contexts = [cx for cx in contexts if len(cx.transfer_syntax) > 1]
    return contexts[:MAX_PROPOSED_CONTEXTS]


def accepted_syntaxes(contexts: list[PresentationContext], sop_class: str) -> dict[str, int]:
    """Transfer syntaxes in which we may send `sop_class` as the Storage SCU: their context IDs."""
    return {
        str(cx.transfer_syntax[0]): int(cx.context_id)  # type: ignore[arg-type]
        for cx in contexts
        if cx.abstract_syntax == sop_class and cx.as_scu
    }


class Accepted:
    """Per SOP Class, the syntaxes the peer accepted (cached: one retrieve, one SOP Class)."""

    def __init__(self, contexts: Any) -> None:
        self._contexts = contexts  # a callable: C-MOVE knows them only once associated
        self._by_class: dict[str, dict[str, int]] = {}

    def __call__(self, sop_class: str) -> dict[str, int]:
        found = self._by_class.get(sop_class)
        if found is None:
            found = self._by_class[sop_class] = accepted_syntaxes(self._contexts(), sop_class)
        return found


def _unsendable(uid: str) -> Dataset:
    """A Dataset pynetdicom cannot send: counts as a failed sub-operation with `uid` listed."""
    ds = Dataset()
    ds.SOPInstanceUID = uid
    return ds


def _to_little_endian(ds: Dataset) -> None:
    """Explicit VR Big Endian to Little Endian: pydicom re-encodes values, we swap Pixel Data."""
    # Read every element once, which decodes it: once the dataset is labelled little
    # endian, pydicom would write an element still raw as its big endian bytes.
    for _ in ds.iterall():
        pass
    if "PixelData" in ds and ds.get("BitsAllocated", 8) > 8:
        arr = ds.pixel_array
        ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_original_encoding(False, True, ds.original_character_set)


def prepare(archive: Archive, m: Match, accepted: dict[str, int]) -> Dataset:
    """Read one instance and make it sendable in a syntax the peer accepted.

    In its stored syntax, an :class:`engine.net.substore.EncodedInstance`
    holding the stored bytes; converted, a decoded Dataset that pynetdicom
    encodes.

    Raises
    ------
    Exception
        Whatever reading or converting raised; the caller fails the sub-operation.
    """
    data = archive.get(m.sop_instance)
    context_id = accepted.get(m.transfer_syntax)
    if context_id is not None:  # the usual case: nothing is decoded or re-encoded
        return encoded_instance(data, m.sop_class, m.sop_instance, context_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # odd stored values are sent as they were received
        ds = pydicom.dcmread(io.BytesIO(data))
    ts = UID(m.transfer_syntax)
    if ts.is_compressed:
        # PS3.5 A.4: pixel data in fragments; pylibjpeg decodes it, pydicom re-encodes.
        # The SOP Instance UID stays: the pixels are those the sender's syntax decodes to.
        try:
            ds.decompress(decoding_plugin="pylibjpeg", generate_instance_uid=False)
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            raise UnsupportedTransferSyntaxError(ts, f"cannot decompress: {exc}") from exc
    elif ts == ExplicitVRBigEndian:  # the peer did not accept it (it would have been sent)
        _to_little_endian(ds)
    return ds


def _send_all(
    event: Any, archive: Archive, matches: list[Match], accepted: Any
) -> Iterator[tuple[int, Dataset | None]]:
    for m in matches:
        if event.is_cancelled:  # PS3.4 C.4.2.3.1: stop, pynetdicom reports the counts
            yield CANCEL, None
            return
        try:
            ds = prepare(archive, m, accepted(m.sop_class))
        except Exception as exc:  # noqa: BLE001 -- one instance fails, not the association
            failure(exc, f"retrieve of {m.sop_instance}")
            ds = _unsendable(m.sop_instance)
        yield PENDING, ds


def _identifier(event: Any, calling: str, access: Access, levels: tuple[str, ...],
                archive: Archive, what: str, **detail: Any) -> list[Match] | Dataset:  # fmt: skip
    found = identify(lambda: event.identifier, calling, str(event.assoc.requestor.address),
                     access, levels, archive, what, **detail)  # fmt: skip
    assert not isinstance(found, Matches)  # not asked to be lazy
    return found


def identify(
    identifier: Callable[[], Dataset],
    calling: str,
    address: str,
    access: Access,
    levels: tuple[str, ...],
    archive: Archive,
    what: str,
    lazy: bool = False,
    **detail: Any,
) -> list[Match] | Matches | Dataset:
    """The instances a C-GET or C-MOVE asks for, audited; or the failure status to answer.

    Parameters
    ----------
    identifier
        Decodes the request's identifier (a decoding error is a 0xA900 answer).
    calling, address
        The requestor, for the access rules and the audit trail.
    levels
        The information model's levels (Patient Root or Study Root).
    what
        "C-GET" or "C-MOVE"; `detail` goes into the audit record.
    lazy
        Return :class:`Matches`: the first instance is found before the rest,
        and the audit record is written once they all are.
    """
    if not access.may(calling, "retrieve"):
        log.warning("%s from %s refused: not allowed to retrieve", what, calling)
        audit_refusal(audit.Event.BEGIN_TRANSFERRING, calling, address, "may not retrieve")
        return status_dataset(REFUSED_NOT_AUTHORISED, f"{calling} may not retrieve here")
    try:
        ident = Identifier(identifier(), levels)

        def begin(instances: int) -> None:
            audit.emit(audit.Event.BEGIN_TRANSFERRING, user=calling, address=address,
                       patient=ident.query.get("PatientID") or None,
                       study=ident.query.get("StudyInstanceUID") or None,
                       service=what, level=ident.level, keys=ident.query,
                       instances=instances, **detail)  # fmt: skip

        if lazy:
            return Matches(archive, ident, begin)
        found = resolve(archive, ident)
        begin(len(found))
        return found
    except InvalidQueryError as exc:
        return failure(exc, f"{what} from {calling}")
    except Exception as exc:  # noqa: BLE001 -- undecodable identifier, or the index failed
        if isinstance(exc, ValueError | TypeError | AttributeError):
            return status_dataset(DOES_NOT_MATCH_SOP_CLASS, f"cannot decode identifier: {exc}")
        return failure(exc, f"{what} from {calling}")


def handle_get(
    event: Any, archive: Archive, access: Access, levels: tuple[str, ...]
) -> Iterator[Any]:
    """EVT_C_GET: send the matches back over the same association (PS3.4 C.4.3).

    Yields
    ------
    object
        The number of sub-operations, then ``(0xFF00, dataset)`` per instance
        (pynetdicom sends each by C-STORE on a context the requestor proposed
        with the SCP role, PS3.7 D.3.3.4), or one failure status.
    """
    calling = str(event.assoc.requestor.ae_title).strip()
    found = _identifier(event, calling, access, levels, archive, "C-GET")
    if isinstance(found, Dataset):
        yield 1  # with 0 sub-operations pynetdicom would answer Success, not our failure
        yield found, None
        return
    send_encoded_instances(event.assoc)
    yield len(found)
    with quick_polling(event.assoc):
        yield from _send_all(event, archive, found, Accepted(lambda: event.assoc.accepted_contexts))


def handle_move(
    event: Any,
    archive: Archive,
    access: Access,
    levels: tuple[str, ...],
    remotes: dict[str, Remote],
    tls: ssl.SSLContext | None = None,
) -> Iterator[Any]:
    """EVT_C_MOVE: send the matches to the Move Destination named in the request (PS3.4 C.4.2).

    Yields
    ------
    object
        ``(host, port, kwargs)`` of the destination (``(None, None)`` when it
        is not configured: 0xA801), the number of sub-operations, then
        ``(0xFF00, dataset)`` per instance.
    """
    calling = str(event.assoc.requestor.ae_title).strip()
    destination = str(event.move_destination).strip()
    why = access.may_move_to(calling, destination)
    if why is not None:  # unknown, or not allowed: never connect to it
        log.warning("C-MOVE from %s refused: %s", calling, why)
        audit_refusal(audit.Event.BEGIN_TRANSFERRING, calling,
                      str(event.assoc.requestor.address), why)  # fmt: skip
        yield None, None  # pynetdicom answers 0xA801, PS3.4 C.4.2.1.5
        return
    remote = remotes[destination]
    assert remote.host is not None and remote.port is not None  # may_move_to checked
    # PS3.15 B.1: a remote that requires TLS gets it, with our certificate
    connect: dict[str, Any] = {"tls_args": (tls, None)} if remote.tls and tls else {}
    found = _identifier(event, calling, access, levels, archive, "C-MOVE",
                        destination=destination)  # fmt: skip
    if isinstance(found, Dataset):
        # pynetdicom only sends a failure after associating with the destination:
        # a Verification-only association, released unused.
        yield remote.host, remote.port, {"contexts": [build_context(Verification)], **connect}
        yield 1
        yield found, None
        return
    sub: dict[str, Any] = {}

    def on_open(ev: Any) -> None:  # our own outgoing socket: TCP_NODELAY too
        sock = getattr(getattr(ev.assoc.dul, "socket", None), "socket", None)
        if sock is not None:
            set_nodelay(sock)

    def on_established(ev: Any) -> None:
        sub["contexts"] = ev.assoc.accepted_contexts
        send_encoded_instances(ev.assoc, direct=True)  # ours alone: nothing else sends on it
        set_run_loop_delay(ev.assoc.dul, RETRIEVE_POLL_S)  # it only lives for this retrieve

    handlers = [(evt.EVT_CONN_OPEN, on_open), (evt.EVT_ESTABLISHED, on_established)]
    contexts = proposed_contexts(found) if found else None
    yield remote.host, remote.port, {"contexts": contexts, "evt_handlers": handlers, **connect}
    yield len(found)
    yield from _send_all(event, archive, found, Accepted(lambda: sub.get("contexts", [])))
