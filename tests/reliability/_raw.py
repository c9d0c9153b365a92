"""A DICOM requestor over a bare socket, and what the server's processes cost.

:class:`RawPeer` sends exactly the bytes a test builds (pynetdicom's PDU
classes encode the well-formed parts), so a malformed PDU or data set reaches
the server unchanged. It proposes storage, with C-FIND (both on the server's
fast path) or with C-GET (pynetdicom's path).
"""

from __future__ import annotations

import socket
import struct
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    ModalityWorklistInformationFind,
    StudyRootQueryRetrieveInformationModelFind,
)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
STORE_CONTEXT = 1
HAND_OVER_CONTEXT = 3
FIND_CONTEXT = 11
PDU = struct.Struct(">BxI")
PDV = struct.Struct(">IBB")
READ_TIMEOUT_S = 60.0  # generous: a loaded 2-core CI machine


# Extra CT storage contexts, one per transfer syntax, for data sets of other encodings.
SYNTAX_CONTEXTS = {
    "1.2.840.10008.1.2": 5,  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2": 7,  # Explicit VR Big Endian
    "1.2.840.10008.1.2.1.99": 9,  # Deflated Explicit VR Little Endian
    EXPLICIT_LE: STORE_CONTEXT,
}


def associate_rq(*, via_pynetdicom: bool, calling: str = "PYNETDICOM", version: int = 1,
                 all_syntaxes: bool = False, with_find: bool = False) -> bytes:  # fmt: skip
    """An encoded A-ASSOCIATE-RQ: CT storage, plus Modality Worklist if `via_pynetdicom` (a
    class the fast path does not serve: it hands the association to pynetdicom), plus
    a CT context for each of :data:`SYNTAX_CONTEXTS` if `all_syntaxes`, plus Study Root
    C-FIND if `with_find`."""
    rq = A_ASSOCIATE()
    rq.application_context_name = "1.2.840.10008.3.1.1.1"
    rq.calling_ae_title = calling
    rq.called_ae_title = "PACS"
    wanted = {STORE_CONTEXT: (CTImageStorage, EXPLICIT_LE)}
    if via_pynetdicom:
        wanted[HAND_OVER_CONTEXT] = (ModalityWorklistInformationFind, EXPLICIT_LE)
    if with_find:
        wanted[FIND_CONTEXT] = (StudyRootQueryRetrieveInformationModelFind, EXPLICIT_LE)
    if all_syntaxes:
        wanted.update({cid: (CTImageStorage, uid) for uid, cid in SYNTAX_CONTEXTS.items()})
    contexts = []
    for cid, (abstract, syntax) in sorted(wanted.items()):
        contexts.append(build_context(abstract, [syntax]))
        contexts[-1].context_id = cid
    rq.presentation_context_definition_list = contexts
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    rq.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(rq)
    pdu.protocol_version = version
    return bytes(pdu.encode())


def store_command(ds: Dataset, message_id: int = 1) -> bytes:
    return command_for(str(ds.SOPInstanceUID), message_id)


def command_for(sop_instance_uid: str, message_id: int = 1) -> bytes:
    """An encoded C-STORE-RQ command set (CT Image Storage) for `sop_instance_uid`."""
    return _command(CTImageStorage, 0x0001, message_id, AffectedSOPInstanceUID=sop_instance_uid)


def find_request(identifier: bytes, message_id: int = 1) -> bytes:
    """A whole Study Root C-FIND-RQ: its command, then `identifier` as given, a PDU each."""
    command = _command(StudyRootQueryRetrieveInformationModelFind, 0x0020, message_id)
    return p_data(FIND_CONTEXT, 0x03, command) + p_data(FIND_CONTEXT, 0x02, identifier)


def _command(sop_class: str, field: int, message_id: int, **more: str) -> bytes:
    """A request command set with a data set (PS3.7 E.1), implicit VR Little Endian."""
    cmd = Dataset()
    cmd.CommandGroupLength = 0
    cmd.AffectedSOPClassUID = sop_class
    cmd.CommandField = field
    cmd.MessageID = message_id
    cmd.Priority = 0
    cmd.CommandDataSetType = 0x0000
    for keyword, value in more.items():
        setattr(cmd, keyword, value)
    raw = encode(cmd, True, True)
    assert raw is not None
    cmd.CommandGroupLength = len(raw) - 12  # PS3.7 E.1: the bytes after the group length
    out = encode(cmd, True, True)
    assert out is not None
    return bytes(out)


def data_set(ds: Dataset) -> bytes:
    raw = encode(ds, False, True)  # Explicit VR Little Endian, the accepted context's syntax
    assert raw is not None
    return bytes(raw)


def p_data(context: int, mch: int, data: bytes) -> bytes:
    item = PDV.pack(len(data) + 2, context, mch) + data
    return PDU.pack(0x04, len(item)) + item


def c_store(ds: Dataset, context: int = STORE_CONTEXT) -> bytes:
    """A whole C-STORE request: command and data set, one P-DATA-TF each."""
    return p_data(context, 0x03, store_command(ds)) + p_data(context, 0x02, data_set(ds))


class RawPeer:
    """One TCP connection to the server; nothing is sent until asked."""

    def __init__(self, port: int, timeout: float = READ_TIMEOUT_S) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def associate(self, *, via_pynetdicom: bool, all_syntaxes: bool = False,
                  with_find: bool = False) -> None:  # fmt: skip
        self.sock.sendall(associate_rq(via_pynetdicom=via_pynetdicom, all_syntaxes=all_syntaxes,
                                       with_find=with_find))  # fmt: skip
        kind, _ = self.read_pdu()
        assert kind == 0x02, f"expected A-ASSOCIATE-AC, got PDU type {kind}"

    def _exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            got = self.sock.recv(n - len(out))
            if not got:
                raise ConnectionError("closed")
            out += got
        return bytes(out)

    def read_pdu(self) -> tuple[int, bytes]:
        kind, length = PDU.unpack(self._exact(6))
        return kind, self._exact(length)

    def store(self, ds: Dataset) -> int:
        """A well-formed C-STORE; its status."""
        return int(self.store_raw(store_command(ds), data_set(ds), STORE_CONTEXT).Status)

    def store_raw(self, command: bytes, data: bytes, context: int) -> Dataset:
        """A C-STORE of `data` as it is, in PDUs of at most 64 KiB; the response."""
        self.sock.sendall(p_data(context, 0x03, command))
        step = 64 << 10
        for at in range(0, max(len(data), 1), step):
            last = 0x02 if at + step >= len(data) else 0x00
            self.sock.sendall(p_data(context, last, data[at : at + step]))
        kind, body = self.read_pdu()
        assert kind == 0x04, f"expected a C-STORE response, got PDU type {kind}"
        return decode(BytesIO(body[6:]), True, True)

    def send(self, data: bytes) -> bool:
        """Send; False if the server had already closed (it may abort mid-send)."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def outcome(self) -> str:
        """What the server did next: 'abort', 'reject', 'closed', 'accept' or 'data' (a
        response); a hang raises TimeoutError from the socket."""
        try:
            kind, _ = self.read_pdu()
        except (ConnectionError, ConnectionResetError):
            return "closed"
        return {0x07: "abort", 0x03: "reject", 0x02: "accept", 0x04: "data",
                0x06: "release"}.get(kind, f"pdu-0x{kind:02X}")  # fmt: skip

    def close(self) -> None:
        self.sock.close()


def peak_rss_kib(pid: int) -> int:
    """VmHWM: the most resident memory the process has had."""
    return _status_kib(pid, "VmHWM")


def rss_kib(pid: int) -> int:
    return _status_kib(pid, "VmRSS")


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} for pid {pid}")


def fd_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))
