"""C-STORE sub-operations that send an instance's stored bytes as they are.

pynetdicom's C-GET and C-MOVE service classes take one Dataset per
sub-operation and hand it to ``assoc.send_c_store``, which encodes it again
(PS3.7 9.1.1 C-STORE: the Data Set is the encoded instance). When the peer
accepted the stored transfer syntax we already hold that encoding, so:

- :func:`encoded_instance` strips the preamble and File Meta Information
  (PS3.10 7.1: group 0002 is not part of a DIMSE data set) off the stored
  Part 10 bytes and wraps the rest in an :class:`EncodedInstance`, a Dataset
  that only carries the SOP Instance UID pynetdicom reads for the Failed SOP
  Instance UID List (PS3.4 C.4.2.1.4.2);
- :func:`send_encoded_instances` gives one association a ``send_c_store``
  that sends an :class:`EncodedInstance` as a C-STORE-RQ whose Data Set is
  those bytes, and hands any other Dataset to pynetdicom's own method.
- On a C-MOVE's own outgoing association (``direct``), nothing but these
  C-STORE-RQs is sent while the retrieve runs, so they are written straight
  to the socket as P-DATA-TF PDUs (PS3.8 9.3.5) instead of one pynetdicom
  DUL round trip per PDU (a 512x512 slice is 33 PDUs at a 16 KiB maximum
  length). pynetdicom's DUL thread still reads and decodes the C-STORE-RSP.

The counting, pending responses, cancel and final status stay pynetdicom's.
This serves the associations pynetdicom keeps (user identity, extended
negotiation); the fast path sends with :mod:`engine.net.send`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE

from engine import dimse
from engine import pdu as P
from engine.net import pynetdicom_compat as C
from engine.part10 import dataset_offset

PAUSE_POLL_S = 0.0001  # as pynetdicom's own send_* methods wait for the reactor
# pynetdicom's DUL thread sleeps this long between polls of its queue and socket when idle
# (1 ms by default): each sub-operation waits for it twice, to send the C-STORE-RQ and
# to read the C-STORE-RSP. While a retrieve runs the thread is never idle for long.
RETRIEVE_POLL_S = 0.0001
SEND_AHEAD_PDUS = 4  # answers queued ahead of the network (see wait_for_network)
DRAIN_EVERY = 16  # answers between two chances for the DUL to read a C-CANCEL


class EncodedInstance(Dataset):
    """One retrieve sub-operation's instance, already encoded for a context the peer accepted.

    Parameters
    ----------
    sop_class, sop_instance
        The C-STORE-RQ's Affected SOP Class and Instance UIDs.
    context_id
        The accepted presentation context whose transfer syntax `encoded` is in.
    encoded
        The data set (no File Meta Information).
    """

    def __init__(self, sop_class: str, sop_instance: str, context_id: int,
                 encoded: bytes) -> None:  # fmt: skip
        super().__init__()
        self.SOPInstanceUID = sop_instance  # pynetdicom lists it when the sub-operation fails
        self.sop_class, self.context_id, self.encoded = sop_class, context_id, encoded


def encoded_instance(part10: bytes, sop_class: str, sop_instance: str,
                     context_id: int) -> EncodedInstance:  # fmt: skip
    """Wrap a stored Part 10 instance for sending on `context_id` as it is."""
    return EncodedInstance(sop_class, sop_instance, context_id,
                           part10[dataset_offset(part10):])  # fmt: skip


def _write_request(assoc: Any, item: EncodedInstance, command: bytes) -> None:
    peer_max_pdu = int(assoc.dimse.maximum_pdu_size or 0)
    assoc.dul.socket.socket.sendall(
        P.encode_p_data(item.context_id, command, peer_max_pdu)
        + P.data_set_pdus(item.context_id, item.encoded, peer_max_pdu)
    )


def _request(item: EncodedInstance, msg_id: int, priority: int, originator_aet: str | None,
             originator_id: int | None) -> C_STORE:  # fmt: skip
    req = C_STORE()
    req.MessageID = msg_id
    req.Priority = priority
    req.MoveOriginatorApplicationEntityTitle = originator_aet
    req.MoveOriginatorMessageID = originator_id
    req.AffectedSOPClassUID = item.sop_class
    req.AffectedSOPInstanceUID = str(item.SOPInstanceUID)
    req.DataSet = BytesIO(item.encoded)  # getvalue() returns these bytes, uncopied
    return req


def _send(assoc: Any, item: EncodedInstance, msg_id: int, priority: int,
          originator_aet: str | None, originator_id: int | None,
          direct: bool) -> Dataset:  # fmt: skip
    if direct:  # the reactor stays paused for the whole retrieve (send_encoded_instances)
        while not C.reactor_blocked(assoc):
            if not assoc.is_established:  # aborted or released: it will never block again
                raise ConnectionError("the C-MOVE destination association has ended")
            time.sleep(PAUSE_POLL_S)
        originator = (originator_aet, originator_id or 0) if originator_aet else None
        command = dimse.request(dimse.C_STORE_RQ, msg_id, item.sop_class,
                                sop_instance_uid=str(item.SOPInstanceUID), priority=priority,
                                originator=originator)  # fmt: skip
        _write_request(assoc, item, command)
        _, rsp = assoc.dimse.get_msg(block=True)
    else:
        # The reactor must not take our C-STORE-RSP off the DIMSE queue: pause it,
        # exactly as Association.send_c_store does (a C-GET's reactor is paused already).
        C.pause_reactor(assoc)
        try:
            while not C.reactor_paused(assoc):
                time.sleep(PAUSE_POLL_S)
            assoc.dimse.send_msg(_request(item, msg_id, priority, originator_aet, originator_id),
                                 item.context_id)  # fmt: skip
            _, rsp = assoc.dimse.get_msg(block=True)
        finally:
            C.resume_reactor(assoc)
    if rsp is None:  # DIMSE timeout: pynetdicom aborts, the sub-operation fails
        C.no_response(assoc)
        return Dataset()
    return C.received_status(assoc, rsp)


def send_encoded_instances(assoc: Any, *, direct: bool = False) -> None:
    """Let `assoc` send :class:`EncodedInstance` sub-operations without re-encoding them.

    Only this association's ``send_c_store`` is replaced; pynetdicom's class
    and every other association are untouched. Any other Dataset still goes
    through pynetdicom's method (the conversion path). `direct`: write the
    requests to the socket ourselves; only for an association on which
    nothing else is being sent (a C-MOVE's sub-association).
    """
    original = assoc.send_c_store
    if getattr(original, "sends_encoded", False):
        return  # a second C-GET on the same association
    if direct:  # pause its reactor until pynetdicom releases the association
        C.pause_reactor(assoc)

    def send_c_store(dataset: Any, msg_id: int = 1, priority: int = 2,
                     originator_aet: str | None = None,
                     originator_id: int | None = None) -> Dataset:  # fmt: skip
        if isinstance(dataset, EncodedInstance):
            return _send(assoc, dataset, msg_id, priority, originator_aet, originator_id, direct)
        try:  # a converted instance: pynetdicom's own method
            result: Dataset = original(dataset, msg_id, priority, originator_aet, originator_id)
        finally:
            if direct:  # pynetdicom's send_c_store reopened the checkpoint: pause again
                C.pause_reactor(assoc)
        return result

    send_c_store.sends_encoded = True  # type: ignore[attr-defined]
    assoc.send_c_store = send_c_store


def wait_for_network(assoc: Any, *, drain: bool = False) -> None:
    """Keep a handler that yields answers from running ahead of `assoc`'s network.

    pynetdicom's DUL sends whatever is queued before it reads the peer: a
    handler yielding faster than it sends would queue its whole answer in
    memory, and a C-CANCEL would stay unread until the last answer is out.
    So at most :data:`SEND_AHEAD_PDUS` PDUs wait; with `drain`, the queue is
    emptied and the DUL given a loop in which to read what the peer sent.
    """
    pending = assoc.dul.to_provider_queue
    limit = 0 if drain else SEND_AHEAD_PDUS
    while pending.qsize() > limit and assoc.is_established:
        time.sleep(PAUSE_POLL_S)
    if drain:
        time.sleep(2 * C.run_loop_delay(assoc.dul))


@contextlib.contextmanager
def quick_polling(assoc: Any) -> Iterator[None]:
    """Let `assoc`'s DUL thread poll every :data:`RETRIEVE_POLL_S` for the duration."""
    dul = assoc.dul
    before = C.run_loop_delay(dul)
    C.set_run_loop_delay(dul, RETRIEVE_POLL_S)
    try:
        yield
    finally:
        C.set_run_loop_delay(dul, before)
