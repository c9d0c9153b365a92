"""The fast path: associations served without pynetdicom after negotiation.

pynetdicom spends about 3 ms of CPU per CT slice on the receive path
(polling reactors, one object per PDU, deep copies per message) and as much
again per instance it sends; storing the instance costs 0.3 ms. So the
worker serves the associations a PACS mostly sees itself:

1. :func:`peek_associate_rq` looks at the A-ASSOCIATE-RQ without taking it
   off the socket (``MSG_PEEK``), within an ARTIM-like timeout (PS3.8 9.1.5).
2. :meth:`FastPath.classify` decodes it with pynetdicom's PDU classes.
   If every proposed abstract syntax is a Storage SOP Class, Verification
   or a Find, Get or Move model of Query/Retrieve, or a UID the standard
   does not name (a private SOP class, taken as storage), and nothing
   beyond the maximum length, implementation identity, asynchronous
   operations window, SCP/SCU role selection and user identity is
   negotiated, the fast path takes the association; anything else (SOP
   class extended negotiation, another
   standard SOP class, a PDU it cannot decode) goes to pynetdicom, socket untouched.
3. :class:`FastAssociation` applies the same access rules and association
   limit as pynetdicom's path, negotiates the presentation contexts and
   roles with pynetdicom's own ``negotiate_as_acceptor``, sends the
   A-ASSOCIATE-AC, then runs the DIMSE loop (PS3.7 9.3.1 C-STORE, 9.3.5
   C-ECHO, 9.3.2 C-FIND, 9.3.3 C-GET, 9.3.4 C-MOVE) over
   :class:`engine.pdu.PDUReader`, command sets through :mod:`engine.dimse`.
   C-FIND answers come from :func:`engine.net.find.find_responses`, as on
   pynetdicom's path; C-GET and C-MOVE sub-operations from
   :func:`engine.net.send.send_all` (C-GET on this association, C-MOVE on
   one opened to the destination); a C-CANCEL is looked for between two
   answers or sub-operations without blocking.

The acknowledgement rule is unchanged: a C-STORE-RSP leaves only after
:meth:`engine.archive.Archive.store` returned, that is once the instance is
durable and indexed; statuses come from :mod:`engine.net.status`.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from io import BytesIO
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom._globals import APPLICATION_CONTEXT_NAME
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_AC as AssociateAcPDU
from pynetdicom.pdu import A_ASSOCIATE_RQ as AssociateRqPDU
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import negotiate_as_acceptor
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from engine import audit
from engine import dimse as D
from engine import pdu as P
from engine.audit import SERIOUS_FAILURE, Event
from engine.dimse import Command
from engine.errors import AuditError
from engine.net.contexts import STORAGE_SOP_CLASSES, is_unknown_sop_class, unknown_storage_contexts
from engine.net.find import find_responses
from engine.net.identifier import Encoding
from engine.net.identity import REJECT_USER, UserCheck, UserRefused
from engine.net.request_cache import Answer, RequestCache
from engine.net.retrieve import Match, Matches, identify, proposed_contexts
from engine.net.scp import (
    FIND_MODELS,
    GET_MODELS,
    MAX_PDU_BYTES,
    MOVE_MODELS,
)
from engine.net.send import (
    Destination,
    DestinationLink,
    Fitting,
    Tally,
    by_class,
    failed_list,
    send_all,
    send_spread,
    unresolved,
)
from engine.net.settings import ServerSettings
from engine.net.status import (
    CANCEL,
    MOVE_DESTINATION_UNKNOWN,
    OUT_OF_RESOURCES_MATCHES,
    OUT_OF_RESOURCES_SUBOPS,
    PENDING,
    REFUSED_NOT_AUTHORISED,
    SUCCESS,
    UNRECOGNIZED_OPERATION,
    error_comment,
    failure,
    failure_status,
)
from engine.net.store import audit_refusal, audit_store
from engine.net.tls import client_context
from engine.net.transport import REJECT_LIMIT, DrainWatch, refusal, refused
from engine.pdu import MessageBuffer, PDUReader, PDUTimeout, PeerClosed, ProtocolError

if TYPE_CHECKING:
    from pynetdicom import AE

    from engine.archive import Archive

log = logging.getLogger("engine.net")

# An A-ASSOCIATE-RQ is a few KB. MSG_PEEK can never return more than the kernel's receive
# buffer holds (its default is about 128 KiB, less under memory pressure), so a longer
# PDU could never be seen whole and would wait out the ARTIM timer: pynetdicom takes it.
ASSOCIATE_RQ_MAX_BYTES = 64 << 10  # the whole PDU, header included
PEEK_RETRY_S = 0.002  # MSG_PEEK returns at once while part of the PDU is there: wait a little
ARTIM_TIMEOUT_S = 30.0  # PS3.8 9.1.5: how long a new connection has to send its A-ASSOCIATE-RQ
# User information sub-items (PS3.7 D.3.3) the fast path may ignore: the asynchronous
# operations window has a default (1, 1) that a missing reply confirms (PS3.7 D.3.3.3).
# Role selection is negotiated here (PS3.7 D.3.3.4: a C-GET's requestor takes the SCP role),
# user identity too (PS3.7 D.3.3.7, engine.net.identity).
_PLAIN_USER_ITEMS = (
    MaximumLengthNotification,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    AsynchronousOperationsWindowNegotiation,
    SCP_SCU_RoleSelectionNegotiation,
    UserIdentityNegotiation,
)
_TIMEVAL = struct.Struct("@ll")  # struct timeval, for SO_RCVTIMEO / SO_SNDTIMEO


def peek_associate_rq(sock: socket.socket, timeout_s: float) -> bytes | None:
    """The whole A-ASSOCIATE-RQ PDU waiting on `sock`, left unread; None if it is not one.

    Parameters
    ----------
    sock
        A freshly accepted socket; nothing is consumed from it.
    timeout_s
        How long the peer has to send the whole PDU (the ARTIM timer, PS3.8 9.1.5).

    Returns
    -------
    bytes or None
        The PDU (header included), or None when the first byte is not an
        A-ASSOCIATE-RQ or it is longer than :data:`ASSOCIATE_RQ_MAX_BYTES`
        (more than a peek can be sure to deliver): pynetdicom answers those.

    Raises
    ------
    TimeoutError
        The PDU did not arrive in time.
    PeerClosed
        The peer closed the connection first.
    """
    deadline = time.monotonic() + timeout_s
    want = P.PDU_HEADER_BYTES
    old_timeout = sock.gettimeout()
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no A-ASSOCIATE-RQ within {timeout_s:.0f} s")
            sock.settimeout(left)
            data = sock.recv(want, socket.MSG_PEEK)
            if not data:
                raise PeerClosed("the peer closed the connection before associating")
            if data[0] != P.A_ASSOCIATE_RQ:
                return None
            if want == P.PDU_HEADER_BYTES and len(data) == want:
                length = P.PDU_HEADER.unpack_from(data)[1]
                if P.PDU_HEADER_BYTES + length > ASSOCIATE_RQ_MAX_BYTES:
                    return None  # decided on the header alone: no waiting for the rest
                want += length
                continue
            if len(data) == want:
                return data
            if _shut_down_by_peer(sock):  # the rest will never come; don't wait for ARTIM
                raise PeerClosed("the peer closed the connection inside its A-ASSOCIATE-RQ")
            time.sleep(PEEK_RETRY_S)
    finally:
        sock.settimeout(old_timeout)


def _shut_down_by_peer(sock: socket.socket) -> bool:
    """Whether the peer has shut its side down (POLLRDHUP), though unread bytes remain."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)
    return bool(poller.poll(0))


def _set_timeouts(sock: socket.socket, receive_s: float, send_s: float) -> None:
    """Kernel receive/send timeouts on a blocking socket: no poll() before each recv."""
    if isinstance(sock, ssl.SSLSocket):
        # OpenSSL retries a read that the kernel timed out (EAGAIN is "want read") forever:
        # TLS needs Python's own timeout, a poll() before each read (one for both ways)
        sock.settimeout(receive_s)
        return
    for option, seconds in ((socket.SO_RCVTIMEO, receive_s), (socket.SO_SNDTIMEO, send_s)):
        whole = int(seconds)
        timeval = _TIMEVAL.pack(whole, int((seconds - whole) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, option, timeval)


class FastPath:
    """What a worker's fast-path associations share: archive, settings, contexts, counts.

    Parameters
    ----------
    archive
        This worker's archive.
    settings
        Access rules, association limit and timeouts.
    ae
        The worker's pynetdicom AE: its supported presentation contexts are
        the ones negotiated here too, and its acceptor associations count
        towards the limit.
    users
        Checks the user identity of each association (PS3.7 D.3.3.7).
    """

    def __init__(self, archive: Archive, settings: ServerSettings, ae: AE,
                 users: UserCheck) -> None:  # fmt: skip
        self.archive = archive
        self.settings = settings
        self.ae = ae
        self.users = users
        self.contexts = ae.supported_contexts
        self.syntaxes = frozenset({*STORAGE_SOP_CLASSES, str(Verification), *FIND_MODELS,
                                   *GET_MODELS, *MOVE_MODELS})  # fmt: skip
        remotes = settings.remotes.values()
        # PS3.15 B.1: a C-MOVE destination that requires TLS gets it, with our certificate
        self.client_tls = (client_context(settings.tls)
                           if settings.tls and any(r.tls for r in remotes) else None)  # fmt: skip
        self.requests = RequestCache()  # peers send the same A-ASSOCIATE-RQ each time
        self._lock = threading.Lock()
        self._active: set[FastAssociation] = set()
        self.served = 0  # associations the fast path took
        self.handed_over = 0  # associations given to pynetdicom
        self.sent = 0  # instances sent by C-GET and C-MOVE sub-operations
        self.converted = 0  # of those, sent in another transfer syntax than the stored one

    @property
    def active(self) -> list[FastAssociation]:
        """The fast-path associations open now."""
        with self._lock:
            return list(self._active)

    def pynetdicom_acceptors(self) -> int:
        """How many associations pynetdicom is serving as acceptor now."""
        return sum(1 for a in self.ae.active_associations if a.is_acceptor)

    def peek(self, sock: socket.socket) -> bytes | None:
        """:func:`peek_associate_rq` with the ARTIM timeout (at most the network timeout)."""
        return peek_associate_rq(sock, min(ARTIM_TIMEOUT_S, self.settings.network_timeout_s))

    def classify(self, rq: bytes) -> A_ASSOCIATE | None:
        """The A-ASSOCIATE request if the fast path can serve it, else None (pynetdicom's).

        Parameters
        ----------
        rq
            The whole A-ASSOCIATE-RQ PDU (PS3.8 9.3.2).
        """
        try:
            primitive = self.requests.decoded(rq, _decode_rq)
        except Exception:  # noqa: BLE001 -- undecodable: pynetdicom answers it as it always has
            return None
        if primitive is None:
            return None
        if primitive.application_context_name != APPLICATION_CONTEXT_NAME:
            return None
        contexts = primitive.presentation_context_definition_list
        if not contexts:
            return None
        for cx in contexts:  # a private SOP class is storage: accepted here or refused here
            uid = str(cx.abstract_syntax)
            if uid not in self.syntaxes and not is_unknown_sop_class(uid):
                return None  # a standard service we do not serve: pynetdicom refuses it
        if not all(isinstance(item, _PLAIN_USER_ITEMS) for item in primitive.user_information):
            return None  # SOP class extended negotiation: pynetdicom's
        return primitive

    def serve(
        self, sock: socket.socket, address: Any, rq: bytes, primitive: A_ASSOCIATE
    ) -> None:
        """Serve one association on `sock` until it is released, aborted or times out.

        Parameters
        ----------
        sock
            The accepted socket; its A-ASSOCIATE-RQ is still unread.
        address
            The peer's (host, port).
        rq
            The peeked A-ASSOCIATE-RQ PDU, consumed here.
        primitive
            The decoded request (:meth:`classify`).
        """
        assoc = FastAssociation(self, sock, address, primitive, rq)
        with self._lock:
            self._active.add(assoc)
            self.served += 1
        try:
            assoc.run()
        finally:
            with self._lock:
                self._active.discard(assoc)

    def count(self) -> int:
        """Fast-path associations open now (this one included, once registered)."""
        with self._lock:
            return len(self._active)


class FastAssociation:
    """One association served by the fast path (PS3.8 9.2 state machine, acceptor side).

    It runs in the socket server's handler thread; :meth:`join` and
    :meth:`abort` let the worker drain it on shutdown like a pynetdicom
    association.
    """

    def __init__(self, owner: FastPath, sock: socket.socket, address: Any,
                 rq: A_ASSOCIATE, rq_pdu: bytes) -> None:  # fmt: skip
        self.owner = owner
        self.sock = sock
        self.address = str(address[0]) if isinstance(address, tuple) else str(address)
        self.rq, self.rq_pdu = rq, rq_pdu
        self.calling = str(rq.calling_ae_title).strip()
        self.peer_max_pdu = int(rq.maximum_length_received or 0)
        self.accepted: dict[int, str] = {}  # context ID -> accepted transfer syntax
        self.abstract: dict[int, str] = {}  # context ID -> its abstract syntax
        self.find_levels: dict[int, tuple[str, ...]] = {}  # Find contexts -> the model's levels
        self.get_levels: dict[int, tuple[str, ...]] = {}
        self.move_levels: dict[int, tuple[str, ...]] = {}
        self.sends: set[int] = set()  # storage contexts with the requestor as SCP (C-GET)
        self.busy = "a C-FIND"  # what a command arriving now would interrupt, for errors
        self._message_id = 0  # of the C-STORE-RQs we send
        settings = owner.settings
        self.reader = PDUReader(sock, patience=DrainWatch(sock),  # a slow reader is not idle
                                pdu_timeout_s=settings.pdu_timeout_s,
                                idle_timeout_s=settings.network_timeout_s)  # fmt: skip
        self.pdu_left = 0  # bytes of PDVs left in the P-DATA-TF being read
        self.access = owner.settings.access  # with the user's roles once negotiated
        self.may_store = self.access.may(self.calling, "store")
        self.stored = 0
        self._done = threading.Event()

    # -- the Association-like surface used by the worker's drain -----------------------

    def is_alive(self) -> bool:
        return not self._done.is_set()

    def join(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)

    def abort(self) -> None:
        """End the association from another thread: its blocked read fails at once."""
        with contextlib.suppress(OSError):
            self.sock.sendall(P.encode_abort(P.ABORT_NOT_SPECIFIED))
            self.sock.shutdown(socket.SHUT_RDWR)

    # -- lifecycle ---------------------------------------------------------------------

    def run(self) -> None:
        """Negotiate, then serve DIMSE messages; always closes the socket."""
        sock = self.sock
        try:
            settings = self.owner.settings
            # reads wake at least every pdu_timeout_s: PDUReader keeps both deadlines
            _set_timeouts(sock, min(settings.pdu_timeout_s, settings.network_timeout_s),
                          settings.network_timeout_s)  # fmt: skip
            _consume(sock, len(self.rq_pdu))
            if self._negotiate():
                self._loop()
        except PeerClosed:
            log.info("fast path: %s at %s closed the connection", self.calling, self.address)
        except ProtocolError as exc:
            log.warning("fast path: aborting the association from %s at %s: %s (A-ABORT reason %d)",
                        self.calling, self.address, exc, exc.reason)  # fmt: skip
            self._send_quietly(P.encode_abort(exc.reason))
        except PDUTimeout as exc:
            log.warning("fast path: aborting the association from %s at %s: %s",
                        self.calling, self.address, exc)  # fmt: skip
            self._send_quietly(P.encode_abort(P.ABORT_NOT_SPECIFIED))
        except (TimeoutError, BlockingIOError):  # SO_RCVTIMEO/SO_SNDTIMEO expired: EAGAIN
            log.warning("fast path: association from %s at %s idle for %.1f s; aborting",
                        self.calling, self.address,
                        self.owner.settings.network_timeout_s)  # fmt: skip
            self._send_quietly(P.encode_abort(P.ABORT_NOT_SPECIFIED))
        except OSError as exc:
            log.info("fast path: connection to %s at %s failed: %s",
                     self.calling, self.address, exc)  # fmt: skip
        except Exception:  # a bug here must end one association, not the worker
            log.exception("fast path: association from %s at %s failed", self.calling, self.address)
            self._send_quietly(P.encode_abort(P.ABORT_NOT_SPECIFIED))
        finally:
            try:
                sock.close()
            finally:
                self._done.set()
        log.info("fast path: association from %s at %s ended, %d instances stored",
                 self.calling, self.address, self.stored)  # fmt: skip

    def _send_quietly(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def _reject(self, reason: tuple[int, int, int]) -> None:
        """Send A-ASSOCIATE-RJ, then wait for the peer to close (PS3.8 9.2 AE-8, Sta13).

        pynetdicom's acceptor waits so too. Closing at once raced the RJ against our
        close (and a close with bytes unread sends a TCP RST): on one fresh machine a
        TLS requestor refused here saw no rejection, while pynetdicom's path held.
        """
        self.sock.sendall(P.encode_reject(*reason))
        deadline = time.monotonic() + min(ARTIM_TIMEOUT_S, self.owner.settings.network_timeout_s)
        with contextlib.suppress(OSError):  # TimeoutError, a reset, an SSLError: closed anyway
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                if not self.sock.recv(4096):
                    return

    def _negotiate(self) -> bool:
        """Access control, the association limit, presentation contexts; send AC or RJ."""
        owner = self.owner
        refused_why = refusal(owner.settings, str(self.rq.called_ae_title), self.calling,
                              self.address)  # fmt: skip
        if refused_why is not None:
            reason, why = refused_why
            log.warning("association from %r at %s refused: %s", self.calling, self.address, why)
            refused(self.calling, self.address, why)
            self._reject(reason)
            return False
        try:
            user = owner.users.check(self.rq.user_information)
        except UserRefused as exc:
            log.warning("association from %r at %s refused: %s", self.calling, self.address, exc)
            refused(self.calling, self.address, f"user identity: {exc}")
            self._reject(REJECT_USER)
            return False
        if user.identity is not None:
            log.info("association from %s at %s: user %s", self.calling, self.address,
                     user.identity.name)  # fmt: skip
        self.access = owner.settings.access.for_user(user.roles)
        self.may_store = self.access.may(self.calling, "store")
        open_now = owner.count() + owner.pynetdicom_acceptors()
        if open_now > owner.settings.max_associations:
            log.warning("association from %s at %s refused: %d associations open, limit %d",
                        self.calling, self.address, open_now - 1,
                        owner.settings.max_associations)  # fmt: skip
            refused(self.calling, str(self.address), "association limit reached")
            self._reject(REJECT_LIMIT)
            return False
        answer = owner.requests.answer(self.rq_pdu) if user.response is None else None
        if answer is None:
            answer = self._answer(user.response)
            if user.response is None:  # no identity response: the same bytes answer the same
                owner.requests.keep_answer(self.rq_pdu, answer)
        accepted = [cx for cx in answer.results if cx.result == 0x00]
        self.accepted = {int(cx.context_id): str(cx.transfer_syntax[0])  # type: ignore[arg-type]
                         for cx in accepted}  # fmt: skip
        self.abstract = {int(cx.context_id): str(cx.abstract_syntax) for cx in accepted}  # type: ignore[arg-type]
        self.find_levels = {cid: FIND_MODELS[uid] for cid, uid in self.abstract.items()
                            if uid in FIND_MODELS}  # fmt: skip
        self.get_levels = {cid: GET_MODELS[uid] for cid, uid in self.abstract.items()
                           if uid in GET_MODELS}  # fmt: skip
        self.move_levels = {cid: MOVE_MODELS[uid] for cid, uid in self.abstract.items()
                            if uid in MOVE_MODELS}  # fmt: skip
        self.sends = {int(cx.context_id) for cx in accepted if cx.as_scu}  # type: ignore[arg-type]
        self.sock.sendall(answer.ac)
        log.debug("fast path: association from %s at %s, %d of %d contexts accepted",
                 self.calling, self.address, len(self.accepted), len(answer.results))  # fmt: skip
        return True

    def _answer(self, identity_response: Any) -> Answer:
        """Negotiate the presentation contexts and roles (pynetdicom's acceptor rules); the
        results and the A-ASSOCIATE-AC, with `identity_response` if the user asked for one."""
        owner = self.owner
        roles = {UID(str(item.sop_class_uid)): (item.scu_role, item.scp_role)
                 for item in self.rq.user_information
                 if isinstance(item, SCP_SCU_RoleSelectionNegotiation)}  # fmt: skip
        proposed = self.rq.presentation_context_definition_list
        supported = owner.contexts
        if owner.settings.accept_unknown_sop_classes:
            uids = (str(cx.abstract_syntax) for cx in proposed)
            unknown = [u for u in uids if u not in owner.syntaxes]
            supported = supported + unknown_storage_contexts(unknown)
        results, role_replies = negotiate_as_acceptor(proposed, supported, roles)
        ac = A_ASSOCIATE()
        ac.application_context_name = APPLICATION_CONTEXT_NAME
        ac.calling_ae_title = self.rq.calling_ae_title
        ac.called_ae_title = self.rq.called_ae_title
        ac.result = 0x00
        ac.result_source = 0x01
        ac.presentation_context_definition_results_list = results
        ac.user_information = [*D.identity_items(MAX_PDU_BYTES), *role_replies]
        if identity_response is not None:
            ac.user_information.append(identity_response)
        pdu = AssociateAcPDU()
        pdu.from_primitive(ac)
        return Answer(results, pdu.encode())

    # -- the DIMSE loop (PS3.8 9.3.5, PS3.7 6.3.1) ------------------------------------------

    def _loop(self) -> None:  # hot loop, kept in one piece
        reader = self.reader
        message = MessageBuffer(limit_bytes=self.owner.settings.max_instance_bytes)
        command_bytes = bytearray()
        command_context = 0
        pending: Command | None = None  # a command whose data set is arriving
        pending_context = 0
        accepted = self.accepted
        pdu_header, pdv_header = reader.pdu_header, reader.pdv_header
        while True:
            kind, length = pdu_header()
            if kind == P.P_DATA_TF:
                if length > MAX_PDU_BYTES:  # PS3.8 D.1: at most the Maximum Length we sent
                    raise P.invalid(f"P-DATA-TF of {length} bytes, more than {MAX_PDU_BYTES}")
                left = length
                while left:
                    if left < P.PDV_HEADER_BYTES:
                        raise P.invalid("PDU ends inside a PDV header")
                    item_length, context, mch = pdv_header()
                    if item_length < 2 or item_length + 4 > left:
                        raise P.invalid("PDV length runs past the end of its PDU")
                    left -= item_length + 4
                    n = item_length - 2
                    if context not in accepted:
                        raise P.invalid(f"PDV on presentation context {context}, not accepted")
                    if mch & P.MCH_COMMAND:
                        if pending is not None:
                            raise P.unexpected("a command fragment inside a data set")
                        if command_bytes and context != command_context:
                            raise P.unexpected("command fragments on two contexts")
                        if len(command_bytes) + n > D.COMMAND_MAX_BYTES:
                            raise P.invalid("command set too long")
                        command_context = context
                        command_bytes += reader.read(n)
                        if mch & P.MCH_LAST:
                            command = D.parse_command(bytes(command_bytes))
                            command_bytes.clear()
                            if command.has_data_set:
                                pending, pending_context = command, context
                                message.length = 0
                            else:
                                self._dispatch(command, context, None)
                    else:
                        if pending is None:
                            raise P.unexpected("a data set fragment without its command")
                        if context != pending_context:
                            raise P.unexpected("data set on another context than its command")
                        reader.read_into(message, n)
                        if mch & P.MCH_LAST:
                            command, pending = pending, None
                            self.pdu_left = left  # a C-FIND may read on, for a C-CANCEL
                            self._dispatch(command, context, message.data())
                            left = self.pdu_left
            elif kind == P.A_RELEASE_RQ:  # PS3.8 9.3.6: answer, then the requestor closes
                if length != 4:
                    raise P.invalid("A-RELEASE-RQ length not 4")
                reader.skip(4)
                self.sock.sendall(P.RELEASE_RP)
                return
            elif kind == P.A_ABORT:
                log.info("fast path: %s at %s aborted the association", self.calling, self.address)
                return
            elif kind in (P.A_ASSOCIATE_RQ, P.A_ASSOCIATE_AC, P.A_ASSOCIATE_RJ, P.A_RELEASE_RP):
                raise ProtocolError(P.ABORT_UNEXPECTED_PDU, f"unexpected PDU type 0x{kind:02X}")
            else:
                raise ProtocolError(P.ABORT_UNRECOGNIZED_PDU, f"unknown PDU type 0x{kind:02X}")

    def _dispatch(self, command: Command, context: int, data: memoryview | None) -> None:
        """Act on a complete request and send its response (one P-DATA-TF)."""
        field_ = command.command_field
        if field_ == D.C_STORE_RQ and data is not None:
            status, comment = self._store(command, context, data)
            rsp = D.encode_response(
                D.C_STORE_RSP, command.message_id, command.sop_class_uid, status,
                sop_instance_uid=command.sop_instance_uid, error_comment=comment,
            )  # fmt: skip
        elif field_ == D.C_FIND_RQ and data is not None and context in self.find_levels:
            self._find(command, context, data)
            return
        elif field_ == D.C_GET_RQ and data is not None and context in self.get_levels:
            self._retrieve(command, context, data, self.get_levels[context])
            return
        elif field_ == D.C_MOVE_RQ and data is not None and context in self.move_levels:
            self._retrieve(command, context, data, self.move_levels[context])
            return
        elif field_ == D.C_ECHO_RQ:  # PS3.7 9.3.5: always success
            uid = command.sop_class_uid or str(Verification)
            rsp = D.encode_response(D.C_ECHO_RSP, command.message_id, uid, SUCCESS)
        elif field_ == D.C_CANCEL_RQ:  # PS3.7 9.3.2.3: nothing outstanding, and no response
            return
        elif field_ & D.RESPONSE_BIT:
            raise P.unexpected(f"a response (0x{field_:04X}) from the requestor")
        else:  # PS3.7 C.5.5: unrecognized operation on a storage-only association
            log.warning("fast path: %s sent command 0x%04X; answered 0x%04X",
                        self.calling, field_, UNRECOGNIZED_OPERATION)  # fmt: skip
            rsp = D.encode_response(
                field_ | D.RESPONSE_BIT, command.message_id, command.sop_class_uid,
                UNRECOGNIZED_OPERATION,
                error_comment=error_comment(f"command 0x{field_:04X} is not served here"),
            )  # fmt: skip
        self.sock.sendall(P.encode_p_data(context, rsp, self.peer_max_pdu))

    def _find(self, command: Command, context: int, data: memoryview) -> None:
        """Answer a C-FIND (PS3.7 9.3.2): a pending response per match, then the final one."""
        ts = UID(self.accepted[context])
        implicit, little, deflated = ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated
        identifier = bytes(data)  # the buffer is reused by the next message
        sop_class = command.sop_class_uid or self.abstract[context]
        responses = find_responses(
            lambda: decode(BytesIO(identifier), implicit, little, deflated),
            self.find_levels[context], self.owner.archive, self.access,
            (self.calling, self.address), self.owner.settings.ae_title,
            Encoding(implicit, little, as_bytes=not deflated),
            lambda _i: self._cancel_requested(command.message_id),
        )  # fmt: skip
        send, peer_max = self.sock.sendall, self.peer_max_pdu
        pending = P.encode_p_data(context, D.encode_response(  # the same for every match
            D.C_FIND_RSP, command.message_id, sop_class, PENDING, data_set=True), peer_max)
        status: int | Dataset = SUCCESS
        for status, match in responses:
            if status != PENDING or match is None:
                break
            answer = match if isinstance(match, bytes) else encode(match, implicit, little,
                                                                   deflated)  # fmt: skip
            if answer is None:  # pynetdicom logged why; nothing the peer could read
                status = failure(RuntimeError("an answer could not be encoded"),
                                 f"C-FIND from {self.calling}")  # fmt: skip
                break
            send(pending + P.data_set_pdus(context, answer, peer_max))
        code, comment = _status_of(status)
        rsp = D.encode_response(D.C_FIND_RSP, command.message_id, sop_class, code,
                                error_comment=comment)  # fmt: skip
        send(P.encode_p_data(context, rsp, peer_max))

    def _retrieve(self, command: Command, context: int, data: memoryview,
                  levels: tuple[str, ...]) -> None:  # fmt: skip
        """Answer a C-GET (PS3.4 C.4.3) or C-MOVE (C.4.2): sub-operations, then the final one."""
        is_get = command.command_field == D.C_GET_RQ
        what = "C-GET" if is_get else "C-MOVE"
        ts = UID(self.accepted[context])
        identifier = bytes(data)  # the buffer is reused by the next message
        owner = self.owner
        respond = _Responder(self, command, context)
        detail = {} if is_get else {"destination": command.move_destination}
        if not is_get and (why := self.access.may_move_to(self.calling,
                                                          command.move_destination)):
            log.warning("C-MOVE from %s refused: %s", self.calling, why)  # never connect to it
            audit_refusal(audit.Event.BEGIN_TRANSFERRING, self.calling, self.address, why)
            respond.final(MOVE_DESTINATION_UNKNOWN, error_comment(why))
            return
        found = identify(
            lambda: decode(BytesIO(identifier), ts.is_implicit_VR, ts.is_little_endian,
                           ts.is_deflated),
            self.calling, self.address, self.access, levels, owner.archive, what,
            lazy=True, **detail,
        )  # fmt: skip
        if isinstance(found, Dataset):
            respond.final(*_status_of(found))
            return
        assert isinstance(found, Matches)  # lazy: the first match before the rest
        self.busy = f"a {what}"
        try:
            if is_get:
                status, tally = send_all(owner.archive, found, _RequestorLink(self, command),
                                         respond.pending)  # fmt: skip
            else:
                status, tally = self._move(command, found, respond)
        finally:
            self.busy = "a C-FIND"
        owner.sent += tally.completed + tally.warning
        owner.converted += tally.converted
        log.info("%s from %s: %d sent, %d failed, %d warnings, %d converted%s", what,
                 self.calling, tally.completed + tally.warning, tally.failed, tally.warning,
                 tally.converted, ", cancelled" if status == CANCEL else "")  # fmt: skip
        respond.final(status, tally=tally)

    def _move(self, command: Command, found: Matches, respond: _Responder) -> tuple[int, Tally]:
        """Send the matches to the Move Destination.

        With one association (``max_associations``, the default) it is opened
        for the first match's SOP Class and syntax as soon as that is found,
        and the matches stored alike go over it while the rest is resolved;
        the others, if any, go over a second association proposed for them.
        With several, the whole answer is resolved first and they share it.
        """
        remote = self.owner.settings.remotes[command.move_destination]
        try:
            first = found.first()
            every = list(found) if remote.max_associations > 1 else []
        except Exception as exc:  # noqa: BLE001 -- the index failed: A701 with the reason
            return unresolved(Tally(0), exc)
        if first is None:  # PS3.4 C.4.2.3.1: nothing to move, no association to open
            return SUCCESS, Tally(0)
        if every:
            return self._move_over(command, every, every, respond, respond.pending)
        fitting = Fitting(found, first)
        status, tally = self._move_over(command, fitting, [first], respond, respond.pending)
        if status in (CANCEL, OUT_OF_RESOURCES_MATCHES) or not (misfits := fitting.misfits()):
            return status, tally
        sent = tally  # PS3.4 C.4.2.1.5: the counts are the whole retrieve's, both rounds
        status, rest = self._move_over(command, misfits, misfits, respond,
                                       lambda code, later: respond.pending(code, sent.plus(later)))
        tally = sent.plus(rest)
        return (CANCEL if status == CANCEL else tally.final_status(False)), tally

    def _move_over(self, command: Command, matches: list[Match] | Fitting,
                   contexts_for: list[Match], respond: _Responder,
                   pending: Callable[[int, Tally], None]) -> tuple[int, Tally]:  # fmt: skip
        """Open associations to the Move Destination (``max_associations`` of its
        [remotes] table, at most one per match), proposing contexts for the instances of
        `contexts_for`, and send `matches` over them."""
        settings, name = self.owner.settings, command.move_destination
        remote = settings.remotes[name]
        assert remote.host is not None and remote.port is not None  # may_move_to checked
        contexts = [(str(cx.abstract_syntax), [str(t) for t in cx.transfer_syntax])
                    for cx in proposed_contexts(contexts_for)]  # fmt: skip
        target = Destination(remote.host, remote.port, settings.ae_title, name)
        tls = self.owner.client_tls if remote.tls else None
        cancelled = lambda: self._cancel_requested(command.message_id)  # noqa: E731
        originator = (self.calling, command.message_id)
        with contextlib.ExitStack() as stack:  # released at the end; aborted if sending raised
            links: list[DestinationLink] = []
            for _ in range(min(remote.max_associations, len(contexts_for))):
                try:
                    assoc = D.Association.open(target, contexts, tls=tls,
                                               timeout_s=settings.network_timeout_s)  # fmt: skip
                except (OSError, PeerClosed, ProtocolError, ValueError) as exc:
                    # refused, unreachable, rejected (DimseError), TLS failed, closed, an
                    # undecodable A-ASSOCIATE-AC: with none open the sub-operations fail
                    # (the requestor's association stays); with some, those do the work
                    log.warning("C-MOVE from %s: cannot associate with %s at %s:%d: %s",
                                self.calling, name, remote.host, remote.port, exc)  # fmt: skip
                    if links:
                        break
                    respond.comment = error_comment(f"cannot associate with {name}: {exc}")
                    return self._none_sent(matches)
                links.append(DestinationLink(stack.enter_context(assoc), cancelled))
            if len(links) == 1:
                return send_all(self.owner.archive, matches, links[0], pending,
                                originator=originator)  # fmt: skip
            assert isinstance(matches, list)  # several associations: resolved first
            return send_spread(self.owner.archive, matches, links, pending, cancelled,
                               originator=originator)  # fmt: skip
        raise AssertionError("unreachable")  # for mypy: the with block always returns

    @staticmethod
    def _none_sent(matches: list[Match] | Fitting) -> tuple[int, Tally]:
        """Every match failed: no association to the destination (PS3.4 C.4.2.1.5, A702)."""
        try:
            tally = Tally(len(matches))
            for m in matches:
                tally.record(m, OUT_OF_RESOURCES_SUBOPS)
        except Exception as exc:  # noqa: BLE001 -- resolving the rest failed
            return unresolved(Tally(0), exc)
        return OUT_OF_RESOURCES_SUBOPS, tally

    def next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def _cancel_requested(self, message_id: int) -> bool:
        """Whether a C-CANCEL-RQ for `message_id` has arrived (PS3.7 9.3.2.3); never waits.

        With one outstanding operation (PS3.7 D.3.3.3) a cancel, or an
        A-ABORT, is all the peer may send while a C-FIND is answered.
        """
        reader = self.reader
        if reader.end == reader.start and not _readable(self.sock):
            return False
        command = self._read_command()
        if command.command_field != D.C_CANCEL_RQ:
            what = f"command 0x{command.command_field:04X} while {self.busy} is answered"
            raise P.unexpected(what)
        return command.message_id == message_id

    def _read_command(self) -> Command:
        """The next whole command set, which may span PDUs; no data set may come now."""
        reader, parts = self.reader, bytearray()
        while True:
            if not self.pdu_left:
                kind, length = reader.pdu_header()
                if kind == P.A_ABORT:
                    raise PeerClosed(f"the peer aborted the association during {self.busy}")
                if kind != P.P_DATA_TF:
                    what = f"PDU type 0x{kind:02X} while {self.busy} is answered"
                    raise ProtocolError(P.ABORT_UNEXPECTED_PDU, what)
                if length > MAX_PDU_BYTES:
                    raise P.invalid(f"P-DATA-TF of {length} bytes, more than {MAX_PDU_BYTES}")
                self.pdu_left = length
            while self.pdu_left:
                if self.pdu_left < P.PDV_HEADER_BYTES:
                    raise P.invalid("PDU ends inside a PDV header")
                item_length, context, mch = reader.pdv_header()
                if item_length < 2 or item_length + 4 > self.pdu_left:
                    raise P.invalid("PDV length runs past the end of its PDU")
                self.pdu_left -= item_length + 4
                if context not in self.accepted:
                    raise P.invalid(f"PDV on presentation context {context}, not accepted")
                if not mch & P.MCH_COMMAND:
                    raise P.unexpected(f"a data set fragment while {self.busy} is answered")
                if len(parts) + item_length - 2 > D.COMMAND_MAX_BYTES:
                    raise P.invalid("command set too long")
                parts += reader.read(item_length - 2)
                if mch & P.MCH_LAST:
                    return D.parse_command(bytes(parts))

    def _store(self, command: Command, context: int, data: memoryview) -> tuple[int, str]:
        """Store the data set as received; (status, error comment) once it is durable."""
        uid = str(command.sop_instance_uid)
        if not self.may_store:
            log.warning("C-STORE from %s refused: not allowed to store", self.calling)
            audit_refusal(Event.INSTANCES_TRANSFERRED, self.calling, self.address, "may not store")
            return REFUSED_NOT_AUTHORISED, error_comment(f"{self.calling} may not store here")
        try:
            result = self.owner.archive.store(data, transfer_syntax=self.accepted[context],
                                              source_ae=self.calling)  # fmt: skip
            audit_store(self.calling, self.address, uid, result.study_instance_uid)
        except Exception as exc:  # noqa: BLE001 -- every failure must become a status (status.py)
            if not isinstance(exc, AuditError):
                with contextlib.suppress(AuditError):  # logged by the trail
                    audit_store(self.calling, self.address, uid, None, SERIOUS_FAILURE, str(exc))
            return failure_status(exc, f"C-STORE from {self.calling} of {uid}")
        self.stored += 1
        return SUCCESS, ""


class _Responder:
    """The pending and final C-GET-RSP / C-MOVE-RSP messages of one retrieve."""

    def __init__(self, assoc: FastAssociation, command: Command, context: int) -> None:
        self.assoc, self.command, self.context = assoc, command, context
        self.sop_class = command.sop_class_uid or assoc.abstract[context]
        self.field = command.command_field | D.RESPONSE_BIT
        self.comment = ""  # an Error Comment for the final response

    def pending(self, status: int, tally: Tally) -> None:
        rsp = D.encode_response(self.field, self.command.message_id, self.sop_class, status,
                                counts=tally.counts(remaining=True))  # fmt: skip
        self.assoc.sock.sendall(P.encode_p_data(self.context, rsp, self.assoc.peer_max_pdu))

    def final(self, status: int, comment: str = "", tally: Tally | None = None) -> None:
        """The final response; with a tally, its counts and Failed SOP Instance UID List."""
        identifier = None
        if tally is not None:
            identifier = failed_list(tally, self.assoc.accepted[self.context])
        counts = tally.counts(remaining=status == CANCEL) if tally is not None else None
        why = tally.error if tally is not None else ""
        rsp = D.encode_response(self.field, self.command.message_id, self.sop_class, status,
                                error_comment=comment or self.comment or why,
                                data_set=identifier is not None, counts=counts)  # fmt: skip
        peer_max = self.assoc.peer_max_pdu
        out = P.encode_p_data(self.context, rsp, peer_max)
        if identifier is not None:
            out += P.data_set_pdus(self.context, identifier, peer_max)
        self.assoc.sock.sendall(out)


class _RequestorLink:
    """A C-GET's sub-operations, on the requestor's own association (PS3.4 C.4.3.3)."""

    def __init__(self, assoc: FastAssociation, command: Command) -> None:
        self.assoc = assoc
        self.get_id = command.message_id
        self._cancel = False  # a C-CANCEL came while a C-STORE-RSP was awaited
        self._by_class = by_class(
            (cid, assoc.abstract[cid], assoc.accepted[cid]) for cid in assoc.sends
        )

    def accepted(self, sop_class: str) -> dict[str, int]:
        return self._by_class.get(sop_class, {})

    def next_message_id(self) -> int:
        return self.assoc.next_message_id()

    def cancelled(self) -> bool:
        return self._cancel or self.assoc._cancel_requested(self.get_id)

    def store(self, context_id: int, command: bytes, data: list[memoryview],
              meanwhile: Callable[[], None] = lambda: None) -> int:  # fmt: skip
        a = self.assoc
        sent_id = a._message_id
        P.send_buffers(a.sock, [P.encode_p_data(context_id, command, a.peer_max_pdu),
                                *P.data_set_buffers(context_id, data, a.peer_max_pdu)])  # fmt: skip
        meanwhile()
        while True:  # the C-STORE-RSP, or a C-CANCEL of the C-GET before it
            rsp = a._read_command()
            if rsp.command_field == D.C_CANCEL_RQ and rsp.message_id == self.get_id:
                self._cancel = True
                continue
            if rsp.command_field != D.C_STORE_RSP or rsp.message_id != sent_id:
                raise P.unexpected(f"command 0x{rsp.command_field:04X} (message "
                                   f"{rsp.message_id}) while C-STORE-RQ {sent_id} is answered")
            return rsp.status


def _status_of(status: int | Dataset) -> tuple[int, str]:
    """(status, Error Comment) of a final response: a code, or a failure status Dataset."""
    if isinstance(status, Dataset):
        return int(status.Status), str(status.get("ErrorComment", ""))
    return status, ""


def _decode_rq(rq: bytes) -> A_ASSOCIATE | None:
    """pynetdicom's decoding of an A-ASSOCIATE-RQ PDU; None for a protocol version not 1."""
    pdu = AssociateRqPDU()
    pdu.decode(rq)
    return pdu.to_primitive() if pdu.protocol_version == 1 else None


def _readable(sock: socket.socket) -> bool:
    """Whether a read on `sock` would not block: bytes in the kernel or in TLS's buffer."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _consume(sock: socket.socket, n: int) -> None:
    """Take the `n` bytes already peeked off the socket."""
    while n:
        got = len(sock.recv(n))
        if not got:
            raise PeerClosed("the peer closed the connection")
        n -= got
