"""Sockets and association acceptance: SO_REUSEPORT, TCP_NODELAY, the fast path, calling AE checks.

pynetdicom's :class:`~pynetdicom.transport.AssociationServer` binds its own
socket; we subclass it so that every worker process can bind the same port
(``SO_REUSEPORT``: the kernel spreads incoming connections over the workers)
and so that every accepted socket has ``TCP_NODELAY`` (without it, a small
DIMSE response waits for the peer's delayed ACK, about 40 ms on Linux) and
large socket buffers (a CT slice is half a megabyte).

Each accepted connection first meets :class:`_RequestHandler.handle`: an
association that only stores, echoes and finds goes to the fast path
(:mod:`engine.net.fastpath`), everything else to pynetdicom, which still
finds the A-ASSOCIATE-RQ unread on the socket.

Access control happens in the ACSE negotiation (PS3.8 7.1.1.9): a called AE
title that is not ours gets an A-ASSOCIATE-RJ, rejected-permanent, source
service-user, reason 7 "called AE title not recognized" (unless
``[dicom] check_called_ae = false``); a calling AE title, or AE title and
host, that is not allowed gets reason 3 "calling AE title not recognized"
(PS3.8 9.3.4, Table 9-21). Every refusal is audited.

With ``[tls]`` configured, an accepted socket is wrapped in TLS without a
handshake; the handshake runs in the connection's thread, first thing in
:meth:`_RequestHandler.handle` (:mod:`engine.net.tls`), and a failed one is
audited as a Security Alert.
"""

from __future__ import annotations

import fcntl
import logging
import socket
import ssl
import struct
import termios
import time
import weakref
from typing import TYPE_CHECKING, Any

from pynetdicom import evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from engine import audit
from engine import pdu as P
from engine.net.contexts import unknown_storage_contexts
from engine.net.identity import REJECT_USER, User, UserCheck, UserRefused
from engine.net.pynetdicom_compat import (
    accepted_context_ids,
    restart_idle_timer,
    socket_connected,
    swap_class,
)
from engine.net.settings import Access, ServerSettings
from engine.net.tls import handshake, peer_identity
from engine.pdu import PDUTimeout, PeerClosed

if TYPE_CHECKING:  # fastpath imports this module
    from engine.net.fastpath import FastPath

log = logging.getLogger("engine.net")

LISTEN_BACKLOG = 128  # socketserver's default of 5 drops bursts of modality connections
# PS3.8 9.3.4: A-ASSOCIATE-RJ (result, source, reason)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service-user, calling AE title not recognized
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # permanent, service-user, called AE title not recognized
REJECT_LIMIT = (0x02, 0x03, 0x02)  # transient, provider (presentation), local limit exceeded
SOCKET_BUFFER_BYTES = 4 << 20  # SO_RCVBUF, when the kernel allows that much
RECEIVE_POLL_S = 0.2  # how often a waiting acceptor checks that its connection still stands
ASSOCIATE_PDU_MAX_BYTES = 1 << 20  # an A-ASSOCIATE-RQ is a few KiB; no PDU needs more than this


def set_nodelay(sock: socket.socket) -> None:
    """Switch Nagle's algorithm off: DIMSE messages are small and answered at once."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # not a TCP socket (a test's socketpair): nothing to tune
        log.debug("TCP_NODELAY not set: %s", exc)


def _buffer_limit(name: str) -> int:
    try:
        with open(f"/proc/sys/net/core/{name}") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


# Setting SO_RCVBUF turns the kernel's autotuning off for that socket: only do it when the
# system maximum lets us have at least SOCKET_BUFFER_BYTES. SO_SNDBUF stays autotuned: what
# we send is small responses, or C-FIND/C-GET streams that must notice a C-CANCEL in time
# (a large send buffer would let every match leave before the cancel is read).
_RCVBUF_OK = _buffer_limit("rmem_max") >= SOCKET_BUFFER_BYTES


def set_buffers(sock: socket.socket) -> None:
    """A large receive buffer: a whole CT slice in flight without the sender stalling."""
    if not _RCVBUF_OK:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
    except OSError as exc:
        log.debug("SO_RCVBUF not set: %s", exc)


def unacked_bytes(sock: socket.socket) -> int:
    """Bytes we sent that the peer has not acknowledged yet (SIOCOUTQ, tcp(7))."""
    out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", out)[0])


class DrainWatch:
    """At each network timeout, tells a peer still reading what we sent from an idle one.

    A peer that reads a long C-FIND answer slowly sends nothing until it has
    read the final response: it is busy, not idle, as long as the bytes we
    sent keep leaving our send queue. Called when a wait for the peer timed
    out: True (wait once more) while the queue changed since the last call,
    and once more after it emptied (the peer still reads what its own kernel holds).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.left = -1

    def __call__(self) -> bool:
        try:
            left = unacked_bytes(self.sock)
        except (OSError, ValueError):  # not a TCP socket, or closed: the timeout stands
            return False
        draining = left != self.left and max(left, self.left) > 0
        self.left = left
        return draining


def refusal(settings: ServerSettings, called: str, calling: str,
            address: str) -> tuple[tuple[int, int, int], str] | None:  # fmt: skip
    """Why an association calling `called` from `calling` at `address` is refused, or None.

    Returns
    -------
    tuple or None
        The A-ASSOCIATE-RJ (result, source, reason) and the reason in words.
    """
    if not settings.answers_to(called):
        return REJECT_CALLED_AE, f"called AE title {called.strip()!r} is not ours"
    if not settings.access.may_associate(calling, address):
        return REJECT_CALLING_AE, "calling AE title not allowed"
    return None


# The rules of each association pynetdicom serves: the access rules, with its user's roles
_ACCESS: weakref.WeakKeyDictionary[Association, Access] = weakref.WeakKeyDictionary()


def access_of(assoc: Association, default: Access) -> Access:
    """The access rules of `assoc` once its user identity was negotiated, else `default`."""
    return _ACCESS.get(assoc, default)


class _AccessACSE(ACSE):
    """ACSE refusing called AE titles not ours, calling ones the access list does not name,
    and user identities that do not verify (engine.net.identity)."""

    settings: ServerSettings
    fast: FastPath | None
    users: UserCheck
    user: User | None = None

    def _check_user_identity(self) -> tuple[bool, UserIdentityNegotiation | None]:
        # checked in _negotiate_as_acceptor already, before anything else was negotiated
        return True, self.user.response if self.user is not None else None

    def _reject(self, calling: str, reason: tuple[int, int, int], why: str) -> None:
        refused(calling, str(self.requestor.address), why)
        self.requestor.ae_title = calling
        self.send_reject(*reason)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()

    def _negotiate_as_acceptor(self) -> None:
        rq = self.requestor.primitive
        calling = str(rq.calling_ae_title) if rq is not None else ""
        called = str(rq.called_ae_title) if rq is not None else ""
        address = str(self.requestor.address)
        refused_why = refusal(self.settings, called, calling, address)
        if refused_why is not None:
            reason, why = refused_why
            log.warning("association from %r at %s refused: %s", calling, address, why)
            self._reject(calling, reason, why)
            return
        try:
            self.user = self.users.check(list(rq.user_information) if rq is not None else [])
        except UserRefused as exc:
            log.warning("association from %r at %s refused: %s", calling, address, exc)
            self._reject(calling, REJECT_USER, f"user identity: {exc}")
            return
        if self.user.identity is not None:
            log.info("association from %s at %s: user %s", calling, address,
                     self.user.identity.name)  # fmt: skip
            _ACCESS[self.assoc] = self.settings.access.for_user(self.user.roles)
        if self.settings.accept_unknown_sop_classes and rq is not None:  # private SOP classes
            proposed = (str(cx.abstract_syntax) for cx in rq.presentation_context_definition_list)
            extra = unknown_storage_contexts(proposed)
            if extra:
                self.acceptor.supported_contexts = [*self.acceptor.supported_contexts, *extra]
        if self.fast is not None:  # the limit counts the fast path's associations too
            ours = sum(1 for a in self.assoc.ae.active_associations if a.is_acceptor)
            if ours + self.fast.count() > self.assoc.ae.maximum_associations:
                log.warning("association from %s at %s refused: association limit %d",
                            calling, address, self.assoc.ae.maximum_associations)  # fmt: skip
                self._reject(calling, REJECT_LIMIT, "association limit reached")
                return
        super()._negotiate_as_acceptor()


def refused(calling: str, address: str, why: str) -> None:
    """Audit a refused association; an audit failure is logged by the trail, the refusal stands."""
    audit.emit_refusal(audit.Event.SECURITY_ALERT, user=calling, address=address,
                       description=f"association refused: {why}")  # fmt: skip


def _tls_handshake(sock: ssl.SSLSocket, address: Any) -> bool:
    try:
        handshake(sock)
    except (ssl.SSLError, OSError) as exc:  # old protocol, bad certificate, timeout, reset
        log.warning("TLS handshake with %s failed: %s", address, exc)
        audit.emit_refusal(audit.Event.SECURITY_ALERT, user=None, address=str(address[0]),
                           description=f"TLS handshake failed: {exc}")  # fmt: skip
        sock.close()
        return False
    log.info("TLS from %s: %s, client certificate %s", address[0], sock.version(),
             peer_identity(sock) or "none")  # fmt: skip
    return True


class RefusedPDUError(Exception):
    """A peer sent a PDU or a data set past our limits (or on a context we did not
    accept); its association is aborted."""


class _BoundedDUL(DULServiceProvider):
    """pynetdicom's upper layer with the limits the fast path enforces itself.

    pynetdicom reads a whole PDU of whatever length its header claims (up to
    4 GiB), collects a data set's fragments without bound, and waits for
    ever on a PDV of a context it did not accept. Here a PDU longer than the
    Maximum Length we announce (PS3.8 D.1), a data set past
    ``max_instance_bytes``, a PDU not whole within ``pdu_timeout_s``
    (:class:`_DeadlineSocket`) and such a PDV raise in the reader thread, where pynetdicom
    answers any exception with an A-ABORT (source: service provider) and ends
    the association. The class is swapped onto the DUL pynetdicom built, so
    its constructor and timers stay pynetdicom's.
    """

    max_pdu_bytes: int
    max_instance_bytes: int
    pdu_timeout_s: float
    data_set_bytes: int
    drain: DrainWatch

    def _send(self, pdu: Any) -> None:
        super()._send(pdu)
        # pynetdicom's idle timer counts from the last PDU received: an answer longer than
        # the network timeout was aborted as it ended, its final response dropped
        restart_idle_timer(self)

    def idle_timer_expired(self) -> bool:
        if not super().idle_timer_expired():
            return False
        if self.drain():  # the peer is still reading what we sent: busy, not idle
            restart_idle_timer(self)
            return False
        return True

    def _read_pdu_data(self) -> None:
        assert isinstance(self.socket, _DeadlineSocket) and self.socket.socket is not None
        # the DUL reads once the socket is readable: the PDU has begun, its deadline with it
        self.socket.deadline = time.monotonic() + self.pdu_timeout_s
        try:
            header = self.socket.socket.recv(P.PDU_HEADER_BYTES, socket.MSG_PEEK)
            if len(header) == P.PDU_HEADER_BYTES:
                kind, length = P.PDU_HEADER.unpack(header)
                if length > self.max_pdu_bytes:
                    self._refuse(f"PDU type 0x{kind:02X} of {length} bytes, "
                                 f"more than the {self.max_pdu_bytes} we accept")  # fmt: skip
            super()._read_pdu_data()
        finally:
            self.socket.deadline = None

    def _decode_pdu(self, bytestream: bytearray) -> Any:
        if bytestream[0] == P.P_DATA_TF:
            self._count_data_set(memoryview(bytestream)[P.PDU_HEADER_BYTES :])
        return super()._decode_pdu(bytestream)

    def _count_data_set(self, body: memoryview) -> None:
        at = 0
        while at + P.PDV_HEADER_BYTES <= len(body):
            item_length, context, mch = P.PDV_HEADER.unpack_from(body, at)
            at += 4 + item_length
            if context not in accepted_context_ids(self.assoc):  # pynetdicom would wait for ever
                self._refuse(f"a PDV on presentation context {context}, which is not accepted")
            if mch & P.MCH_COMMAND:
                continue
            self.data_set_bytes += max(0, item_length - 2)
            if self.data_set_bytes > self.max_instance_bytes:
                self.data_set_bytes = 0
                self._refuse(f"a data set past max_instance_bytes ({self.max_instance_bytes})")
            if mch & P.MCH_LAST:
                self.data_set_bytes = 0

    def receive_pdu(self, wait: bool = False, timeout: float | None = None) -> Any:
        """pynetdicom's, but a wait ends as soon as nothing can arrive any more.

        An acceptor waits ``acse_timeout`` for the A-ASSOCIATE-RQ; when the
        connection failed first (garbage, a refused PDU, the peer gone), the
        association would otherwise count against ``max_associations`` for
        that long, and a burst of bad connections would lock modalities out.
        """
        if not wait:
            return super().receive_pdu(False)
        deadline = None if timeout is None else time.monotonic() + timeout
        idle_polls = 0
        while True:
            step = RECEIVE_POLL_S
            if deadline is not None:
                step = min(step, deadline - time.monotonic())
            primitive = super().receive_pdu(True, max(0.0, step))
            if primitive is not None:
                return primitive
            sock = self.socket
            if not self.is_alive() or (sock is not None and not socket_connected(sock)):
                return super().receive_pdu(False)  # the reader ended or the socket closed
            # back at Sta1 (idle, PS3.8 9.2) with no event left; twice, so as not to
            # mistake the instant before the DUL takes its first event for the end
            idle = self.state_machine.current_state == "Sta1" and self.event_queue.empty()
            idle_polls = idle_polls + 1 if idle else 0
            if idle_polls >= 2:
                return super().receive_pdu(False)
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _refuse(self, what: str) -> None:
        log.warning("aborting the association from %s: %s", self.assoc.requestor.address, what)
        raise RefusedPDUError(what)


class _DeadlineSocket(AssociationSocket):
    """pynetdicom's socket wrapper, its reads bounded by the deadline of the PDU being read.

    pynetdicom reads a PDU with blocking ``recv`` calls, each allowed the
    whole network timeout: a peer sending a byte now and then held the
    association, and its slot, for ever.
    """

    deadline: float | None

    def recv(self, nr_bytes: int) -> bytearray:
        sock, deadline = self.socket, self.deadline
        if deadline is None or sock is None:
            return super().recv(nr_bytes)
        out = bytearray()
        before = sock.gettimeout()
        try:
            while len(out) < nr_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("aborting the association from %s: a PDU not whole within "
                                "pdu_timeout_s", self.assoc.requestor.address)  # fmt: skip
                    raise PDUTimeout("a PDU not whole within pdu_timeout_s")
                sock.settimeout(left)
                chunk = sock.recv(min(nr_bytes - len(out), SOCKET_BUFFER_BYTES))
                if not chunk:  # closed: pynetdicom sees a short read, as from its own recv
                    break
                out += chunk
        finally:
            sock.settimeout(before)
        return out


def bound_dul(assoc: Association, sock: socket.socket, settings: ServerSettings) -> None:
    """Give `assoc` (on `sock`) the limits, deadlines and idle rule of :class:`_BoundedDUL`."""
    dul = assoc.dul
    swap_class(dul, _BoundedDUL)
    assert isinstance(dul, _BoundedDUL)
    dul.drain = DrainWatch(sock)
    dul.max_pdu_bytes = max(assoc.ae.maximum_pdu_size, ASSOCIATE_PDU_MAX_BYTES)
    dul.max_instance_bytes = settings.max_instance_bytes
    dul.pdu_timeout_s = settings.pdu_timeout_s
    dul.data_set_bytes = 0
    assert dul.socket is not None  # the request handler made it
    swap_class(dul.socket, _DeadlineSocket)
    assert isinstance(dul.socket, _DeadlineSocket)
    dul.socket.deadline = None


class _RequestHandler(RequestHandler):
    """Store/echo/find associations to the fast path; the others to pynetdicom, with our ACSE."""

    server: AssociationServer

    def handle(self) -> None:
        sock = self.request
        assert isinstance(sock, socket.socket)  # a TCP server: never a datagram
        if isinstance(sock, ssl.SSLSocket) and not _tls_handshake(sock, self.client_address):
            return
        fast = self.server.fast
        if fast is None:
            super().handle()
            return
        try:
            rq = fast.peek(sock)
        except (TimeoutError, PeerClosed, OSError) as exc:
            log.info("connection from %s closed before an association: %s",
                     self.client_address, exc)  # fmt: skip
            sock.close()
            return
        primitive = fast.classify(rq) if rq is not None else None
        if rq is None or primitive is None:
            fast.handed_over += 1
            super().handle()  # the A-ASSOCIATE-RQ is still unread: pynetdicom sees it whole
            return
        fast.serve(sock, self.client_address, rq, primitive)

    def _create_association(self) -> Association:
        assoc: Association = super()._create_association()
        acse = _AccessACSE(assoc)
        acse.settings = self.server.settings
        acse.users = self.server.users
        acse.fast = self.server.fast
        assoc.acse = acse
        bound_dul(assoc, self.request, self.server.settings)
        # An accepted socket is blocking: a peer silent in the middle of a PDU would hold
        # pynetdicom's reader forever. With a timeout that read fails and the DUL closes.
        self.request.settimeout(self.server.ae.network_timeout)
        return assoc


class AssociationServer(ThreadedAssociationServer):
    """A threaded association server that shares its port with the other workers.

    Parameters
    ----------
    *args
        As for :class:`pynetdicom.transport.AssociationServer`.
    settings
        Our AE titles and who may associate (checked during association
        negotiation), the largest data set pynetdicom's associations may receive.
    users
        Checks the user identity of each association (PS3.7 D.3.3.7).
    tls
        The server SSL context (:func:`engine.net.tls.server_context`), or None for plain TCP.
    fast
        The fast path, or None to give every association to pynetdicom.
    **kwargs
        As for :class:`pynetdicom.transport.AssociationServer`.
    """

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True

    def __init__(self, *args: Any, settings: ServerSettings, users: UserCheck,
                 fast: FastPath | None = None, tls: ssl.SSLContext | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        self.settings = settings
        self.users = users
        self.tls = tls
        self.fast = fast
        kwargs["request_handler"] = _RequestHandler
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        # SO_REUSEPORT before bind: every worker binds the same (host, port),
        # and the kernel balances new connections between their listen queues.
        assert self.socket is not None  # socketserver creates it before binding
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = super().get_request()
        set_nodelay(client)
        set_buffers(client)
        if self.tls is not None:  # the handshake waits for the connection's own thread
            client = self.tls.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address


def port_is_free(host: str, port: int) -> str | None:
    """None if (host, port) can be bound, else why not; without SO_REUSEPORT.

    Without SO_REUSEPORT a bind fails when anything listens there already,
    so a stranger's listener is found before our workers share its port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None
