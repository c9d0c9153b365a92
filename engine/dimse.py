"""The DIMSE wire: command sets (PS3.7 6.3.1, Annex E) and a lean requesting association.

One module encodes and parses every command set we send or read: the
server's fast path, the retrieve sub-operations and ``pacs bench`` all use
it. pynetdicom decodes every message into objects (about 0.57 ms of CPU per
C-FIND match, about 3 ms per CT slice received), so this keeps to bytes:

- command sets are group 0000 only, always implicit VR Little Endian: a
  tag, a 32-bit length and the value (PS3.7 6.3.1), elements in tag order,
  Command Group Length first;
- :class:`Association` is the requesting side: association negotiation
  through pynetdicom's PDU classes (PS3.8 9.3.2, 9.3.3), SCP/SCU role
  selection for C-GET (PS3.7 D.3.3.4), data sets sent in P-DATA-TF
  fragments no longer than the peer accepts (PS3.8 9.3.5), received data
  sets counted or kept, never decoded. ``pacs bench`` times servers with it;
  a C-MOVE sends its sub-operations over it (:mod:`engine.net.send`).

It reuses the socket reader and PDU framing of :mod:`engine.pdu`.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pynetdicom._globals import APPLICATION_CONTEXT_NAME
from pynetdicom.pdu import A_ASSOCIATE_AC as AssociateAcPDU
from pynetdicom.pdu import A_ASSOCIATE_RQ as AssociateRqPDU
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext

from engine import pdu as P
from engine.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from engine.pdu import PDUReader, PeerClosed

MAX_PDU_BYTES = 1 << 20  # what a requestor accepts; the peer's own limit decides what we send
CONNECT_TIMEOUT_S = 30.0
NETWORK_TIMEOUT_S = 300.0  # a slow archive on a loaded machine is measured, not aborted

# PS3.7 E.1: command elements
CommandGroupLength = 0x00000000
AffectedSOPClassUID = 0x00000002
CommandField = 0x00000100
MessageID = 0x00000110
MessageIDBeingRespondedTo = 0x00000120
MoveDestination = 0x00000600
Priority = 0x00000700
CommandDataSetType = 0x00000800
Status = 0x00000900
ErrorComment = 0x00000902
AffectedSOPInstanceUID = 0x00001000
MoveOriginatorApplicationEntityTitle = 0x00001030
MoveOriginatorMessageID = 0x00001031
NumberOfRemainingSuboperations = 0x00001020
NumberOfCompletedSuboperations = 0x00001021
NumberOfFailedSuboperations = 0x00001022
NumberOfWarningSuboperations = 0x00001023

# PS3.7 E.1: Command Field values
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_MOVE_RQ, C_MOVE_RSP = 0x0021, 0x8021
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_CANCEL_RQ = 0x0FFF
RESPONSE_BIT = 0x8000
NO_DATA_SET = 0x0101  # PS3.7 E.1: CommandDataSetType "no data set"; any other value: one follows
DATA_SET_PRESENT = 0x0000
PRIORITY_MEDIUM = 0x0000

PENDING = (0xFF00, 0xFF01)
WARNING_STATUSES = (0x0001, 0xB000, 0xB006, 0xB007)
COMMAND_MAX_BYTES = 64 << 10  # a command set is a few hundred bytes; more is not a command
_ELEMENT = struct.Struct("<HHI")  # group, element, length (PS3.5 7.1.3, implicit VR)
_US = struct.Struct("<H")
_UL = struct.Struct("<I")


class DimseError(ConnectionError):
    """The association could not be made, or the peer broke off or broke the protocol.

    A ConnectionError (an OSError), so callers report it as a failed I/O.
    """


# -- command sets -----------------------------------------------------------------


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw  # PS3.5 6.2: UI pads with NUL


def _text(text: str) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw  # PS3.5 6.2: AE, LO pad with a space


def command_set(elements: dict[int, bytes]) -> bytes:
    """An implicit VR command set, elements in tag order, Command Group Length first."""
    body = b"".join(
        _ELEMENT.pack(tag >> 16, tag & 0xFFFF, len(value)) + value
        for tag, value in sorted(elements.items())
    )
    return _ELEMENT.pack(0, 0, 4) + _UL.pack(len(body)) + body


def request(
    command_field: int,
    message_id: int,
    sop_class_uid: str,
    *,
    sop_instance_uid: str = "",
    move_destination: str = "",
    priority: int = PRIORITY_MEDIUM,
    originator: tuple[str, int] | None = None,
) -> bytes:
    """A C-STORE/C-FIND/C-GET/C-MOVE request command, with a data set to follow.

    `originator`: the Move Originator AE Title and Message ID of a C-MOVE's
    C-STORE sub-operation (PS3.7 9.3.1.1).
    """
    elements = {
        AffectedSOPClassUID: _ui(sop_class_uid),
        CommandField: _US.pack(command_field),
        MessageID: _US.pack(message_id),
        Priority: _US.pack(priority),
        CommandDataSetType: _US.pack(DATA_SET_PRESENT),
    }
    if sop_instance_uid:
        elements[AffectedSOPInstanceUID] = _ui(sop_instance_uid)
    if move_destination:
        elements[MoveDestination] = move_destination.encode("ascii").ljust(16)
    if originator is not None:
        elements[MoveOriginatorApplicationEntityTitle] = _text(originator[0])
        elements[MoveOriginatorMessageID] = _US.pack(originator[1])
    return command_set(elements)


def encode_response(
    command_field: int,
    message_id: int,
    sop_class_uid: str,
    status: int,
    *,
    sop_instance_uid: str = "",
    error_comment: str = "",
    data_set: bool = False,
    counts: dict[int, int] | None = None,
) -> bytes:
    """Encode a response command set.

    Parameters
    ----------
    command_field
        C-STORE-RSP (0x8001), C-ECHO-RSP (0x8030), or a request's field with
        the response bit set.
    message_id
        The request's Message ID, sent back as Message ID Being Responded To.
    sop_class_uid
        Affected SOP Class UID (omitted when empty).
    status
        The DIMSE status (PS3.7 C).
    sop_instance_uid
        Affected SOP Instance UID (omitted when empty).
    error_comment
        Error Comment (0000,0902), already at most 64 characters (omitted when empty).
    data_set
        Whether a data set follows (a C-FIND pending response's identifier).
    counts
        Sub-operation counts of a C-GET or C-MOVE response, by tag
        (Number of Remaining/Completed/Failed/Warning Sub-operations).
    """
    elements = {
        CommandField: _US.pack(command_field),
        MessageIDBeingRespondedTo: _US.pack(message_id),
        CommandDataSetType: _US.pack(DATA_SET_PRESENT if data_set else NO_DATA_SET),
        Status: _US.pack(status),
    }
    if sop_class_uid:
        elements[AffectedSOPClassUID] = _ui(sop_class_uid)
    if error_comment:
        elements[ErrorComment] = _text(error_comment)
    if sop_instance_uid:
        elements[AffectedSOPInstanceUID] = _ui(sop_instance_uid)
    for tag, n in (counts or {}).items():
        elements[tag] = _US.pack(n)
    return command_set(elements)


def parse_elements(data: bytes) -> dict[int, bytes]:
    """Tag -> value of a received command set (no validation beyond framing)."""
    values: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos + 8 <= end:
        group, element, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        values[group << 16 | element] = data[pos : pos + length]
        pos += length
    return values


def us(values: dict[int, bytes], tag: int, default: int = 0) -> int:
    raw = values.get(tag)
    return _US.unpack(raw)[0] if raw is not None and len(raw) == 2 else default


def uid(values: dict[int, bytes], tag: int) -> str:
    return values.get(tag, b"").rstrip(b"\0 ").decode("ascii", "replace")


@dataclass(slots=True)
class Command:
    """The elements of a received command set that the server acts on."""

    command_field: int
    message_id: int  # a response's or a C-CANCEL's: the Message ID Being Responded To
    has_data_set: bool
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    priority: int = 0
    status: int = 0
    move_destination: str = ""

    @property
    def is_response(self) -> bool:
        return bool(self.command_field & RESPONSE_BIT)


def parse_command(data: bytes) -> Command:
    """Walk an implicit VR Little Endian command set and pick out the fields we act on.

    Parameters
    ----------
    data
        The concatenated command fragments (PS3.7 6.3.1).

    Raises
    ------
    engine.pdu.ProtocolError
        An element runs past the end, or Command Field or the message's ID
        is missing: without them there is nothing to answer.
    """
    values: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 8:
            raise P.invalid("command set ends inside an element header")
        group, element, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        if length > end - pos:  # also catches an undefined length, 0xFFFFFFFF
            raise P.invalid("command element runs past the command set")
        values[group << 16 | element] = data[pos : pos + length]
        pos += length
    field_ = values.get(CommandField)
    if field_ is None or len(field_) != 2:
        raise P.invalid("command set without a Command Field")
    command_field = _US.unpack(field_)[0]
    # PS3.7 9.3.2.3: a C-CANCEL-RQ, like a response, names the request it is about
    about = command_field == C_CANCEL_RQ or command_field & RESPONSE_BIT
    message_id = values.get(MessageIDBeingRespondedTo if about else MessageID)
    if message_id is None or len(message_id) != 2:
        raise P.invalid("command without a Message ID" if not about else
                        "command without a Message ID Being Responded To")  # fmt: skip
    return Command(
        command_field, _US.unpack(message_id)[0],
        us(values, CommandDataSetType, NO_DATA_SET) != NO_DATA_SET,
        uid(values, AffectedSOPClassUID), uid(values, AffectedSOPInstanceUID),
        us(values, Priority), us(values, Status),
        values.get(MoveDestination, b"").decode("ascii", "replace").strip(" \0"),
    )  # fmt: skip


# -- Part 10 files ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Part10:
    """What a C-STORE needs from a file: its UIDs, syntax and the data set's bytes."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data: bytes
    offset: int  # where the data set starts (after the File Meta Information)

    @property
    def dataset(self) -> memoryview:
        return memoryview(self.data)[self.offset :]


_LONG_VRS = (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV")


META_READ_BYTES = 64 << 10  # the File Meta Information is a few hundred bytes


def read_part10(path: Path, *, meta_only: bool = False) -> Part10:
    """Read a Part 10 file and its meta header (PS3.10 7.1: explicit VR LE, group 0002).

    With `meta_only`, only the file's head is read: enough for its UIDs and syntax.
    """
    if meta_only:
        with open(path, "rb") as f:
            data = f.read(META_READ_BYTES)
    else:
        data = path.read_bytes()
    if data[128:132] != b"DICM":
        raise DimseError(f"{path}: not a DICOM Part 10 file (no DICM prefix)")
    pos, meta = 132, {}
    while pos + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            length, pos = _UL.unpack_from(data, pos + 8)[0], pos + 12
        else:
            length, pos = _US.unpack_from(data, pos + 6)[0], pos + 8
        meta[element] = data[pos : pos + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos += length
    try:
        return Part10(meta[0x0002], meta[0x0003], meta[0x0010], data, pos)
    except KeyError as exc:
        raise DimseError(f"{path}: file meta lacks (0002,{exc.args[0]:04X})") from None


# -- the association ----------------------------------------------------------------


class Peer(Protocol):
    """Where to associate and as whom (a ``pacs bench`` target, a C-MOVE destination)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def calling(self) -> str: ...  # our AE title
    @property
    def ae_title(self) -> str: ...  # theirs: the called AE title


@dataclass(slots=True)
class Message:
    """A received DIMSE message: its command elements and its data set, if one came."""

    context_id: int
    command: dict[int, bytes]
    dataset_bytes: int = 0
    dataset: bytes | None = None

    @property
    def field(self) -> int:
        return us(self.command, CommandField)

    @property
    def status(self) -> int:
        return us(self.command, Status)


@dataclass(slots=True)
class Association:
    """An established association over a blocking socket; not thread-safe (one per thread)."""

    sock: socket.socket
    accepted: dict[int, tuple[str, str]]  # context ID -> (abstract syntax, transfer syntax)
    peer_max_pdu: int
    reader: PDUReader = field(init=False)
    _pdu_left: int = 0
    _message_id: int = 0

    def __post_init__(self) -> None:
        self.reader = PDUReader(self.sock)

    @classmethod
    def open(
        cls,
        target: Peer,
        contexts: Sequence[tuple[str, Sequence[str]]],
        *,
        scp_roles: Sequence[str] = (),
        tls: ssl.SSLContext | None = None,
        timeout_s: float = NETWORK_TIMEOUT_S,
    ) -> Association:
        """Request an association proposing `contexts` (abstract syntax, transfer syntaxes).

        `scp_roles` are abstract syntaxes for which we offer the SCP role
        (C-GET: the peer sends us C-STORE sub-operations on this association).
        `tls`: a client context, for a peer that requires TLS (PS3.15 B.1).
        """
        if len(contexts) > 128:
            raise DimseError(f"{len(contexts)} presentation contexts; PS3.8 allows 128")
        sock = socket.create_connection((target.host, target.port),
                                        timeout=min(CONNECT_TIMEOUT_S, timeout_s))  # fmt: skip
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if tls is not None:
                sock = tls.wrap_socket(sock)  # by address: the CA vouches
            sock.settimeout(timeout_s)
            sock.sendall(_associate_rq(target.calling, target.ae_title, contexts, scp_roles))
            return cls._accepted(sock, contexts)
        except BaseException:
            sock.close()
            raise

    @classmethod
    def _accepted(
        cls, sock: socket.socket, contexts: Sequence[tuple[str, Sequence[str]]]
    ) -> Association:
        reader = PDUReader(sock)
        kind, length = reader.pdu_header()
        body = reader.read(length)
        if kind == P.A_ASSOCIATE_RJ:
            raise DimseError(f"association rejected (result, source, reason: {tuple(body[1:4])})")
        if kind != P.A_ASSOCIATE_AC:
            raise DimseError(f"expected A-ASSOCIATE-AC, got PDU type {kind:#04x}")
        pdu = AssociateAcPDU()
        pdu.decode(P.PDU_HEADER.pack(kind, length) + body)
        primitive = pdu.to_primitive()
        accepted = {}
        for ctx in primitive.presentation_context_definition_results_list:
            if ctx.result == 0 and ctx.context_id is not None:
                abstract = contexts[(ctx.context_id - 1) // 2][0]
                accepted[ctx.context_id] = (abstract, str(ctx.transfer_syntax[0]))
        if not accepted:
            raise DimseError("association accepted, but none of its presentation contexts")
        return cls(sock, accepted, int(primitive.maximum_length_received or 0))

    def context_for(self, abstract: str, transfer_syntax: str | None = None) -> int:
        """An accepted context ID for `abstract` (and `transfer_syntax`, when given)."""
        for cid, (a, ts) in self.accepted.items():
            if a == abstract and (transfer_syntax is None or ts == transfer_syntax):
                return cid
        raise DimseError(f"no accepted presentation context for {abstract} {transfer_syntax or ''}")

    def next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    # -- sending ------------------------------------------------------------------------

    def send(self, context_id: int, command: bytes, dataset: bytes | memoryview | None) -> None:
        """Send a command set and, when given, a data set (fragmented to the peer's limit)."""
        self.sock.sendall(P.encode_p_data(context_id, command, self.peer_max_pdu))
        if dataset is None:
            return
        limit = self.peer_max_pdu - P.PDV_HEADER_BYTES if self.peer_max_pdu else 1 << 20
        total, pos, sendall = len(dataset), 0, self.sock.sendall
        view = memoryview(dataset)
        while True:
            chunk = view[pos : pos + limit]
            pos += len(chunk)
            mch = P.MCH_LAST if pos >= total else 0
            sendall(
                P.PDU_HEADER.pack(P.P_DATA_TF, len(chunk) + P.PDV_HEADER_BYTES)
                + P.PDV_HEADER.pack(len(chunk) + 2, context_id, mch)
                + chunk
            )
            if pos >= total:
                return

    # -- receiving ----------------------------------------------------------------------

    def _pdv(self) -> tuple[int, int, int]:
        """(context ID, control header, fragment length) of the next PDV item."""
        reader = self.reader
        while not self._pdu_left:
            kind, length = reader.pdu_header()
            if kind == P.P_DATA_TF:
                self._pdu_left = length
            elif kind == P.A_ABORT:
                reader.skip(length)
                raise DimseError(
                    "the peer aborted the association (does it accept our calling AE title?)"
                )
            elif kind == P.A_RELEASE_RQ:
                reader.skip(length)
                raise DimseError("the peer asked to release the association mid-operation")
            else:
                raise DimseError(f"unexpected PDU type {kind:#04x} during DIMSE")
        item_length, context_id, mch = reader.pdv_header()
        self._pdu_left -= P.PDV_HEADER_BYTES + item_length - 2
        return context_id, mch, item_length - 2

    def read_message(self, keep_dataset: bool = False) -> Message:
        """The next whole message; its data set kept only if asked (else counted and dropped)."""
        parts: list[bytes] = []
        while True:
            context_id, mch, n = self._pdv()
            if not mch & P.MCH_COMMAND:
                raise DimseError("data set fragment before its command")
            if n > COMMAND_MAX_BYTES:
                raise DimseError(f"a command fragment of {n} bytes is not a command set")
            parts.append(self.reader.read(n))
            if mch & P.MCH_LAST:
                break
        message = Message(context_id, parse_elements(b"".join(parts)))
        if us(message.command, CommandDataSetType, NO_DATA_SET) == NO_DATA_SET:
            return message
        chunks: list[bytes] = []
        while True:
            _, mch, n = self._pdv()
            if mch & P.MCH_COMMAND:
                raise DimseError("command fragment inside a data set")
            message.dataset_bytes += n
            if keep_dataset:
                chunks.append(self._read_bytes(n))
            else:
                self.reader.skip(n)
            if mch & P.MCH_LAST:
                break
        if keep_dataset:
            message.dataset = b"".join(chunks)
        return message

    def _read_bytes(self, n: int) -> bytes:
        buf = P.MessageBuffer(max(n, 1))
        self.reader.read_into(buf, n)
        return bytes(buf.view[:n])

    # -- ending -------------------------------------------------------------------------

    def release(self) -> None:
        """A-RELEASE-RQ, wait for the RP (PS3.8 9.3.6), close."""
        try:
            self.sock.sendall(P.PDU_HEADER.pack(P.A_RELEASE_RQ, 4) + b"\0\0\0\0")
            while True:
                kind, length = self.reader.pdu_header()
                self.reader.skip(length)
                if kind in (P.A_RELEASE_RP, P.A_ABORT):
                    break
        except (OSError, PeerClosed):
            pass  # the peer closing instead of answering still ends the association
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> Association:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.release()
        else:
            with contextlib.suppress(OSError):
                self.sock.sendall(P.encode_abort(P.ABORT_NOT_SPECIFIED, source=0))
            self.close()


def identity_items(max_pdu_bytes: int) -> list[Any]:
    """The user information every A-ASSOCIATE-RQ/AC of ours carries (PS3.7 D.3.3.1, D.3.3.2)."""
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu_bytes
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    return [max_length, class_uid, version]


def _associate_rq(
    calling: str,
    called: str,
    contexts: Sequence[tuple[str, Sequence[str]]],
    scp_roles: Sequence[str],
) -> bytes:
    rq = A_ASSOCIATE()
    rq.application_context_name = APPLICATION_CONTEXT_NAME
    rq.calling_ae_title = calling
    rq.called_ae_title = called
    proposed = []
    for i, (abstract, syntaxes) in enumerate(contexts):
        ctx = PresentationContext()
        ctx.context_id = 2 * i + 1  # PS3.8 9.3.2.2: odd IDs 1-255
        ctx.abstract_syntax = abstract
        ctx.transfer_syntax = list(syntaxes)
        proposed.append(ctx)
    rq.presentation_context_definition_list = proposed
    items = identity_items(MAX_PDU_BYTES)
    for abstract in scp_roles:
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = abstract
        role.scu_role, role.scp_role = False, True
        items.append(role)
    rq.user_information = items
    pdu = AssociateRqPDU()
    pdu.from_primitive(rq)
    return bytes(pdu.encode())
