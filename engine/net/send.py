"""Retrieve sub-operations on our own wire: C-STORE-RQs written from the stored bytes.

C-GET sends its C-STORE sub-operations on the requestor's own association
(PS3.4 C.4.3.3), C-MOVE on one we open to the Move Destination (C.4.2.3).
:func:`send_all` is the loop both use; a :class:`Link` is where the
sub-operations go.

- An instance goes in its stored transfer syntax whenever the peer accepted
  that syntax for its SOP Class: the record's parts
  (:meth:`engine.archive.Archive.get_dataset_parts`) become P-DATA-TF PDUs
  of the largest size the peer allows, written with one scatter/gather call
  (:func:`engine.pdu.send_buffers`): no Dataset, no copy per PDU.
- Otherwise it is converted (:func:`engine.net.retrieve.prepare`) and
  encoded for an accepted Explicit or Implicit VR Little Endian context;
  each conversion is counted.
- An instance that cannot be read or converted, or that the peer answers
  with a failure, is a failed sub-operation listed in the Failed SOP
  Instance UID List (PS3.4 C.4.2.1.4.2); it never ends the retrieve.
- Pending responses carry the counts (PS3.4 C.4.2.1.5). They are optional
  (C.4.2.3, C.4.3.3): one goes after the first sub-operation and then at
  most every :data:`PENDING_INTERVAL_S`, so a fast retrieve does not cost
  the requestor a message per instance.
- A C-CANCEL is honoured between two sub-operations (PS3.7 9.3.3.3,
  9.3.4.3): the final response is Cancel, with the remaining count.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pydicom.dataset import Dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom.dsutils import encode
from pynetdicom.status import code_to_category

from engine import dimse
from engine import pdu as P
from engine.net.retrieve import Match, Matches, prepare
from engine.net.status import (
    CANCEL,
    OUT_OF_RESOURCES_MATCHES,
    OUT_OF_RESOURCES_SUBOPS,
    PENDING,
    SUB_OPERATIONS_WARNING,
    SUCCESS,
    error_comment,
    failure_status,
)
from engine.net.substore import EncodedInstance

if TYPE_CHECKING:
    from engine.archive import Archive

log = logging.getLogger("engine.net")

PENDING_INTERVAL_S = 0.1  # between two pending responses, after the first
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
# What a converted instance is encoded in, best first: Explicit keeps the VRs
CONVERSION_TARGETS = (ExplicitVRLittleEndian, IMPLICIT_VR_LE, DeflatedExplicitVRLittleEndian)
US_MAX = 0xFFFF  # counts are US (PS3.7 E.1); more sub-operations than that are sent, not counted


class LinkLost(ConnectionError):
    """The association the sub-operations go over has ended; no more can be sent."""


class Link(Protocol):
    """Where the C-STORE sub-operations of one retrieve go."""

    def accepted(self, sop_class: str) -> dict[str, int]:
        """Transfer syntax -> context ID in which we may send `sop_class` as Storage SCU."""
        ...

    def store(self, context_id: int, command: bytes, data: list[memoryview],
              meanwhile: Callable[[], None] = lambda: None) -> int:  # fmt: skip
        """Send one C-STORE-RQ and its data set; the status of its C-STORE-RSP.

        `meanwhile` is called once the request is sent, before the response is
        awaited (it must not touch the association). Raises :class:`LinkLost`
        when the association broke.
        """
        ...

    def next_message_id(self) -> int: ...

    def cancelled(self) -> bool:
        """Whether the retrieve's requestor has sent a C-CANCEL for it (never blocks)."""
        ...


@dataclass(slots=True)
class Tally:
    """Sub-operation counts of one retrieve (PS3.4 C.4.2.1.5)."""

    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    converted: int = 0  # sent in another syntax than the stored one
    failed_uids: list[str] = field(default_factory=list)
    error: str = ""  # why the retrieve stopped short: the final response's Error Comment

    def counts(self, *, remaining: bool) -> dict[int, int]:
        """The count elements of a response; Remaining only in pending and Cancel responses."""
        out = {
            dimse.NumberOfCompletedSuboperations: min(self.completed, US_MAX),
            dimse.NumberOfFailedSuboperations: min(self.failed, US_MAX),
            dimse.NumberOfWarningSuboperations: min(self.warning, US_MAX),
        }
        if remaining:
            out[dimse.NumberOfRemainingSuboperations] = min(self.remaining, US_MAX)
        return out

    def record(self, m: Match, status: int) -> None:
        self.remaining -= 1
        category = code_to_category(status)
        if category == "Success":
            self.completed += 1
        elif category == "Warning":
            self.warning += 1
        else:  # PS3.4 C.4.2.3.1: any other status fails the sub-operation
            self.failed += 1
            self.failed_uids.append(m.sop_instance)

    def plus(self, later: Tally) -> Tally:
        """This retrieve's counts with those of a `later` round of it (its remaining count)."""
        return Tally(later.remaining, self.completed + later.completed,
                     self.failed + later.failed, self.warning + later.warning,
                     self.converted + later.converted, self.failed_uids + later.failed_uids,
                     later.error or self.error)  # fmt: skip

    def final_status(self, cancelled: bool) -> int:
        """PS3.4 C.4.2.1.5, C.4.3.1.5: Cancel, Success, all failed, or some failed or warned."""
        if cancelled:
            return CANCEL
        if not self.failed and not self.warning:
            return SUCCESS
        if self.failed and not self.completed and not self.warning:
            return OUT_OF_RESOURCES_SUBOPS
        return SUB_OPERATIONS_WARNING


Respond = Callable[[int, Tally], None]  # sends a pending response with the counts


def send_all(
    archive: Archive,
    matches: list[Match] | Matches | Fitting,
    link: Link,
    pending: Respond,
    originator: tuple[str, int] | None = None,
) -> tuple[int, Tally]:
    """Send every match as a C-STORE sub-operation; the final status and the counts.

    While the peer takes in one instance, the next is found and read
    (:class:`_Ahead`): the peer's work and ours overlap on two cores.

    Parameters
    ----------
    matches
        The instances, in sending order; :class:`engine.net.retrieve.Matches`
        sends its first before the rest is resolved.
    link
        Where they go.
    pending
        Called to send a pending response; at most every :data:`PENDING_INTERVAL_S`.
    originator
        A C-MOVE's requestor AE title and Message ID (PS3.7 9.3.1.1).
    """
    tally = Tally(0)
    last_pending = 0.0
    ahead = _Ahead(archive, matches, link)
    ahead.advance()
    for i in itertools.count():
        if ahead.next is None:
            break
        m, ready = ahead.next
        if link.cancelled():
            tally.remaining = len(matches) - i
            return CANCEL, tally
        try:
            status = _store(link, m, ready, originator, tally, ahead.advance)
        except LinkLost as exc:
            tally.remaining = len(matches) - i
            log.warning("retrieve: %s; %d sub-operations not sent", exc, tally.remaining)
            for rest in list(matches)[i:]:
                tally.record(rest, OUT_OF_RESOURCES_SUBOPS)
            break
        if ahead.error is not None:  # resolving the rest failed: the first one counts
            tally.remaining = 1
            tally.record(m, status)
            return unresolved(tally, ahead.error)
        if i == 0:  # a lazy answer was resolved while its first instance was on its way
            tally.remaining = len(matches)
        tally.record(m, status)
        now = time.monotonic()
        if tally.remaining and (i == 0 or now - last_pending >= PENDING_INTERVAL_S):
            pending(PENDING, tally)
            last_pending = now
    if ahead.error is not None:  # not even the first match could be found
        return unresolved(tally, ahead.error)
    return tally.final_status(False), tally


def store_each(archive: Archive, matches: Iterable[Match], link: Link,
               tally: Tally | None = None) -> Iterator[tuple[Match, int]]:  # fmt: skip
    """Send each match as a C-STORE over `link`, the next read while the peer takes in the one
    before; yield each with its status (forwarding keeps its own counts).

    Raises :class:`LinkLost` when the association broke, and what the index
    raised if `matches` could not be iterated.
    """
    tally = Tally(0) if tally is None else tally  # counts conversions
    ahead = _Ahead(archive, matches, link)
    ahead.advance()
    while ahead.next is not None:
        m, ready = ahead.next
        yield m, _store(link, m, ready, None, tally, ahead.advance)
    if ahead.error is not None:
        raise ahead.error


# a sub-operation ready to go: (context ID, data set parts, converted), or the failure status
Prepared = tuple[int, list[memoryview], bool] | int


class _Ahead:
    """The next sub-operation of :func:`send_all`, found and read one step ahead."""

    def __init__(self, archive: Archive, matches: Iterable[Match], link: Link) -> None:
        self._archive, self._found, self._link = archive, iter(matches), link
        self.next: tuple[Match, Prepared] | None = None
        self.error: Exception | None = None  # the index failed resolving a lazy answer

    def advance(self) -> None:
        self.next = None
        try:
            m = next(self._found, None)
        except Exception as exc:  # noqa: BLE001 -- reported in the final response
            self.error = exc
            return
        if m is not None:
            self.next = (m, _prepare(self._archive, m, self._link))


class Fitting:
    """The matches of a lazy answer stored as its first one is (SOP Class and transfer
    syntax): a C-MOVE sends them over an association proposed for that pair alone, opened
    before the rest is resolved, and the others (:meth:`misfits`) over a second one.

    ``len()`` is every match's count, so that the remaining count of pending
    responses includes the misfits still to go.
    """

    def __init__(self, matches: Matches, first: Match) -> None:
        self._matches, self._pair = matches, (first.sop_class, first.transfer_syntax)

    def __len__(self) -> int:
        return len(self._matches)

    def __iter__(self) -> Iterator[Match]:
        return (m for m in self._matches if (m.sop_class, m.transfer_syntax) == self._pair)

    def misfits(self) -> list[Match]:
        return [m for m in self._matches if (m.sop_class, m.transfer_syntax) != self._pair]


def unresolved(tally: Tally, exc: Exception) -> tuple[int, Tally]:
    """The final status of a retrieve whose matches could not all be found (PS3.4 C.4.2.1.5)."""
    log.warning("retrieve: the matches could not all be found: %s", exc)
    tally.remaining, tally.error = 0, error_comment(f"finding the matches failed: {exc}")
    return OUT_OF_RESOURCES_MATCHES, tally


def send_spread(
    archive: Archive,
    matches: list[Match],
    links: Sequence[Link],
    pending: Respond,
    cancelled: Callable[[], bool],
    originator: tuple[str, int] | None = None,
) -> tuple[int, Tally]:
    """:func:`send_all` over several associations to one destination at once.

    A thread per link takes the next match as it finishes the last, so a slow
    instance does not hold the others up. Pending responses and the C-CANCEL
    check stay in the calling thread: only it reads the requestor's
    association. A link that breaks fails its instance and stops; the others
    take the rest.

    Parameters
    ----------
    cancelled
        Whether the requestor has cancelled (never blocks); looked at every
        :data:`PENDING_INTERVAL_S`.
    """
    tally = Tally(len(matches))
    lock, stop = threading.Lock(), threading.Event()
    todo = iter(matches)

    def work(link: Link) -> None:
        scratch = Tally(0)  # counts this thread's conversions, added under the lock
        while not stop.is_set():
            with lock:
                m = next(todo, None)
            if m is None:
                return
            try:
                status = _send_one(archive, m, link, originator, scratch)
            except LinkLost as exc:
                log.warning("retrieve: %s; the other associations go on", exc)
                status = OUT_OF_RESOURCES_SUBOPS
                stop_here = True
            else:
                stop_here = False
            with lock:
                tally.record(m, status)
                tally.converted, scratch.converted = tally.converted + scratch.converted, 0
            if stop_here:
                return

    threads = [threading.Thread(target=work, args=(link,), name=f"c-move-{i}", daemon=True)
               for i, link in enumerate(links)]  # fmt: skip
    for t in threads:
        t.start()
    was_cancelled, reported = False, -1
    while alive := [t for t in threads if t.is_alive()]:
        alive[0].join(PENDING_INTERVAL_S)
        if not was_cancelled and cancelled():
            was_cancelled = True
            stop.set()
        with lock:
            done = tally.completed + tally.failed + tally.warning
            if tally.remaining and done != reported and not was_cancelled:
                pending(PENDING, tally)
                reported = done
    for t in threads:
        t.join()
    if was_cancelled:
        return CANCEL, tally  # remaining: those no thread took
    for m in todo:  # every link broke before these were taken
        tally.record(m, OUT_OF_RESOURCES_SUBOPS)
    return tally.final_status(False), tally


def _send_one(
    archive: Archive, m: Match, link: Link, originator: tuple[str, int] | None, tally: Tally
) -> int:
    """One sub-operation: its C-STORE-RSP status, or a failure status if it could not be sent."""
    return _store(link, m, _prepare(archive, m, link), originator, tally, lambda: None)


def _prepare(archive: Archive, m: Match, link: Link) -> Prepared:
    """The context and the data set of one sub-operation: the stored bytes when the peer
    accepted their syntax, else converted; the failure status if neither can be sent."""
    accepted = link.accepted(m.sop_class)
    try:
        context_id = accepted.get(m.transfer_syntax)
        if context_id is not None:  # the usual case: the stored bytes as they are
            data = _even(archive.get_dataset_parts(m.sop_instance), m.transfer_syntax)
            if data is not None:
                return context_id, data, False
        return (*_converted(archive, m, accepted), True)
    except Exception as exc:  # noqa: BLE001 -- one instance fails, not the retrieve
        return failure_status(exc, f"retrieve of {m.sop_instance}")[0]


def _store(link: Link, m: Match, ready: Prepared, originator: tuple[str, int] | None,
           tally: Tally, meanwhile: Callable[[], None]) -> int:  # fmt: skip
    """Send a prepared sub-operation (`meanwhile` runs while the peer answers); its status."""
    if isinstance(ready, int):
        meanwhile()
        return ready
    context_id, data, converted = ready
    tally.converted += converted
    command = dimse.request(dimse.C_STORE_RQ, link.next_message_id(), m.sop_class,
                            sop_instance_uid=m.sop_instance, originator=originator)  # fmt: skip
    return link.store(context_id, command, data, meanwhile)


def _even(parts: list[memoryview], transfer_syntax: str) -> list[memoryview] | None:
    """`parts` of even length, as PDV fragments must be (DCMTK refuses odd ones); None
    when only re-encoding can make them so (an odd value, which pydicom pads)."""
    if not sum(len(p) for p in parts) % 2:
        return parts
    if UID(transfer_syntax).is_deflated:  # the deflate stream's own length: pad, as pydicom does
        return [*parts, memoryview(b"\0")]
    return None


def _converted(
    archive: Archive, m: Match, accepted: dict[str, int]
) -> tuple[int, list[memoryview]]:
    """The instance converted for an accepted uncompressed context (PS3.5 A.2, A.5)."""
    target = next((ts for ts in CONVERSION_TARGETS if ts in accepted), None)
    if target is None:
        offered = ", ".join(sorted(accepted)) or "none"
        raise ValueError(f"the peer accepts none of the syntaxes we can send "
                         f"{m.sop_class} in (stored {m.transfer_syntax}; accepted: {offered})")
    ds = prepare(archive, m, {})
    assert not isinstance(ds, EncodedInstance)  # nothing accepted: always decoded
    ts = UID(target)
    encoded = encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
    if encoded is None:  # pynetdicom logged why
        raise ValueError(f"{m.sop_instance} could not be encoded in {ts.name}")
    return accepted[target], [memoryview(encoded)]


def failed_list(tally: Tally, transfer_syntax: str) -> bytes | None:
    """The final response's identifier: (0008,0058) Failed SOP Instance UID List, if any failed."""
    if not tally.failed_uids:
        return None
    ds = Dataset()
    ds.FailedSOPInstanceUIDList = tally.failed_uids
    ts = UID(transfer_syntax)
    return encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)



def by_class(contexts: Iterable[tuple[int, str, str]]) -> dict[str, dict[str, int]]:
    """SOP Class -> transfer syntax -> context ID, from (context ID, abstract, syntax) triples.

    The lowest context ID wins when two contexts accepted one pair.
    """
    found: dict[str, dict[str, int]] = {}
    for cid, abstract, ts in sorted(contexts):
        found.setdefault(abstract, {}).setdefault(ts, cid)
    return found


@dataclass(frozen=True, slots=True)
class Destination:
    """A C-MOVE destination as :meth:`engine.dimse.Association.open` wants it."""

    host: str
    port: int
    calling: str  # our AE title
    ae_title: str  # the Move Destination


class DestinationLink:
    """A C-MOVE's sub-operations, over the association we opened to the Move Destination.

    Parameters
    ----------
    assoc
        The established association; nothing else sends on it.
    cancelled
        Whether the C-MOVE's requestor has cancelled it (never blocks).
    """

    def __init__(self, assoc: dimse.Association, cancelled: Callable[[], bool]) -> None:
        self.assoc = assoc
        self.cancelled = cancelled
        self._by_class = by_class((cid, a, ts) for cid, (a, ts) in assoc.accepted.items())
        self._sent_id = 0  # the Message ID of the C-STORE-RQ being answered

    def accepted(self, sop_class: str) -> dict[str, int]:
        return self._by_class.get(sop_class, {})

    def next_message_id(self) -> int:
        self._sent_id = self.assoc.next_message_id()
        return self._sent_id

    def store(self, context_id: int, command: bytes, data: list[memoryview],
              meanwhile: Callable[[], None] = lambda: None) -> int:  # fmt: skip
        assoc, peer_max = self.assoc, self.assoc.peer_max_pdu
        try:
            P.send_buffers(assoc.sock, [P.encode_p_data(context_id, command, peer_max),
                                        *P.data_set_buffers(context_id, data, peer_max)])
            meanwhile()
            rsp = assoc.read_message()
        except (OSError, P.PeerClosed, P.ProtocolError) as exc:  # DimseError is an OSError
            raise LinkLost(f"the association to the move destination ended: {exc}") from exc
        answered = dimse.us(rsp.command, dimse.MessageIDBeingRespondedTo)
        if rsp.field != dimse.C_STORE_RSP or answered != self._sent_id:
            raise LinkLost(f"the move destination answered C-STORE-RQ {self._sent_id} with "
                           f"command 0x{rsp.field:04X} to message {answered}")  # fmt: skip
        return rsp.status
