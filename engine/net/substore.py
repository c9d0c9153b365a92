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

The counting, pending responses, cancel and final status stay pynetdicom's.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Iterator
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE

from engine.errors import MalformedDicomError
from engine.part10 import PREAMBLE

PAUSE_POLL_S = 0.0001  # as pynetdicom's own send_* methods wait for the reactor
# pynetdicom's DUL thread sleeps this long between polls of its queue and socket when idle
# (1 ms by default): each sub-operation waits for it twice, to send the C-STORE-RQ and
# to read the C-STORE-RSP. While a retrieve runs the thread is never idle for long.
RETRIEVE_POLL_S = 0.0001
_SHORT = struct.Struct("<HH2sH")  # PS3.5 7.1.2: group, element, VR, 16-bit length
_LONG_LENGTH = struct.Struct("<I")
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC",
                       b"UN", b"UR", b"UT", b"UV"})  # fmt: skip


def dataset_offset(part10: bytes | memoryview) -> int:
    """Where the data set starts in Part 10 bytes: after the preamble and group 0002.

    Raises
    ------
    engine.errors.MalformedDicomError
        The File Meta Information runs past the end of the bytes.
    """
    n = len(part10)
    pos = len(PREAMBLE) if part10[128:132] == PREAMBLE[128:] else 0
    # PS3.10 7.1: group 0002 is Explicit VR Little Endian whatever the data set's syntax
    while n - pos >= 8 and part10[pos] == 2 and part10[pos + 1] == 0:
        _, _, vr, length = _SHORT.unpack_from(part10, pos)
        if vr in _LONG_VRS:
            if n - pos < 12:
                raise MalformedDicomError(pos, "truncated File Meta Information element")
            (length,) = _LONG_LENGTH.unpack_from(part10, pos + 8)
            pos += 12 + length
        else:
            pos += 8 + length
        if pos > n:
            raise MalformedDicomError(pos, "File Meta Information runs past the end")
    return pos


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


def _send(assoc: Any, item: EncodedInstance, msg_id: int, priority: int,
          originator_aet: str | None, originator_id: int | None) -> Dataset:  # fmt: skip
    req = C_STORE()
    req.MessageID = msg_id
    req.Priority = priority
    req.MoveOriginatorApplicationEntityTitle = originator_aet
    req.MoveOriginatorMessageID = originator_id
    req.AffectedSOPClassUID = item.sop_class
    req.AffectedSOPInstanceUID = str(item.SOPInstanceUID)
    req.DataSet = BytesIO(item.encoded)  # getvalue() returns these bytes, uncopied
    # The reactor must not take our C-STORE-RSP off the DIMSE queue: pause it,
    # exactly as Association.send_c_store does (a C-GET's reactor is paused already).
    assoc._reactor_checkpoint.clear()
    try:
        while not assoc._is_paused:
            time.sleep(PAUSE_POLL_S)
        assoc.dimse.send_msg(req, item.context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    if rsp is None:  # DIMSE timeout: pynetdicom aborts, the sub-operation fails
        assoc._handle_no_response()
        return Dataset()
    status: Dataset = assoc._check_received_status(rsp)
    return status


def send_encoded_instances(assoc: Any) -> None:
    """Let `assoc` send :class:`EncodedInstance` sub-operations without re-encoding them.

    Only this association's ``send_c_store`` is replaced; pynetdicom's class
    and every other association are untouched. Any other Dataset still goes
    through pynetdicom's method (the conversion path).
    """
    original = assoc.send_c_store

    def send_c_store(dataset: Any, msg_id: int = 1, priority: int = 2,
                     originator_aet: str | None = None,
                     originator_id: int | None = None) -> Dataset:  # fmt: skip
        if isinstance(dataset, EncodedInstance):
            return _send(assoc, dataset, msg_id, priority, originator_aet, originator_id)
        result: Dataset = original(dataset, msg_id, priority, originator_aet, originator_id)
        return result

    assoc.send_c_store = send_c_store


@contextlib.contextmanager
def quick_polling(assoc: Any) -> Iterator[None]:
    """Let `assoc`'s DUL thread poll every :data:`RETRIEVE_POLL_S` for the duration."""
    dul = assoc.dul
    before = dul._run_loop_delay
    dul._run_loop_delay = RETRIEVE_POLL_S
    try:
        yield
    finally:
        dul._run_loop_delay = before
