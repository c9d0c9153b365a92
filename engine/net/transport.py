"""Sockets and association acceptance: SO_REUSEPORT, TCP_NODELAY, the fast path, calling AE checks.

pynetdicom's :class:`~pynetdicom.transport.AssociationServer` binds its own
socket; we subclass it so that every worker process can bind the same port
(``SO_REUSEPORT``: the kernel spreads incoming connections over the workers)
and so that every accepted socket has ``TCP_NODELAY`` (without it, a small
DIMSE response waits for the peer's delayed ACK, about 40 ms on Linux) and
large socket buffers (a CT slice is half a megabyte).

Each accepted connection first meets :class:`_RequestHandler.handle`: an
association that only stores and echoes goes to the storage fast path
(:mod:`engine.net.fastpath`), everything else to pynetdicom, which still
finds the A-ASSOCIATE-RQ unread on the socket.

Access control happens in the ACSE negotiation (PS3.8 7.1.1.9): a calling AE
title, or AE title and host, that is not allowed gets an A-ASSOCIATE-RJ,
rejected-permanent, source service-user, reason 3 "calling AE title not
recognized" (PS3.8 9.3.4, Table 9-21). Every refusal is audited.

With ``[tls]`` configured, an accepted socket is wrapped in TLS without a
handshake; the handshake runs in the connection's thread, first thing in
:meth:`_RequestHandler.handle` (:mod:`engine.net.tls`), and a failed one is
audited as a Security Alert.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any

from pynetdicom import evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from engine import audit
from engine.net.pdu import PeerClosed
from engine.net.settings import Access
from engine.net.tls import handshake, peer_identity

if TYPE_CHECKING:  # fastpath imports this module
    from engine.net.fastpath import StorageFastPath

log = logging.getLogger("engine.net")

LISTEN_BACKLOG = 128  # socketserver's default of 5 drops bursts of modality connections
# PS3.8 9.3.4: A-ASSOCIATE-RJ (result, source, reason)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service-user, calling AE title not recognized
REJECT_LIMIT = (0x02, 0x03, 0x02)  # transient, provider (presentation), local limit exceeded
SOCKET_BUFFER_BYTES = 4 << 20  # SO_RCVBUF, when the kernel allows that much


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


class _AccessACSE(ACSE):
    """ACSE that refuses calling AE titles (and hosts) the access list does not name."""

    access: Access
    fast: StorageFastPath | None

    def _reject(self, calling: str, reason: tuple[int, int, int], why: str) -> None:
        refused(calling, str(self.requestor.address), why)
        self.requestor.ae_title = calling
        self.send_reject(*reason)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()

    def _negotiate_as_acceptor(self) -> None:
        rq = self.requestor.primitive
        calling = str(rq.calling_ae_title) if rq is not None else ""
        address = str(self.requestor.address)
        if not self.access.may_associate(calling, address):
            log.warning("association from %r at %s refused: calling AE title not allowed",
                        calling, address)  # fmt: skip
            self._reject(calling, REJECT_CALLING_AE, "calling AE title not allowed")
            return
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


class _RequestHandler(RequestHandler):
    """Storage-only associations to the fast path; the others to pynetdicom, with our ACSE."""

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
        fast.serve(sock, self.client_address, len(rq), primitive)

    def _create_association(self) -> Association:
        assoc: Association = super()._create_association()
        acse = _AccessACSE(assoc)
        acse.access = self.server.access
        acse.fast = self.server.fast
        assoc.acse = acse
        return assoc


class AssociationServer(ThreadedAssociationServer):
    """A threaded association server that shares its port with the other workers.

    Parameters
    ----------
    *args
        As for :class:`pynetdicom.transport.AssociationServer`.
    access
        Who may associate (checked during association negotiation).
    tls
        The server SSL context (:func:`engine.net.tls.server_context`), or None for plain TCP.
    fast
        The storage fast path, or None to give every association to pynetdicom.
    **kwargs
        As for :class:`pynetdicom.transport.AssociationServer`.
    """

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True

    def __init__(self, *args: Any, access: Access, fast: StorageFastPath | None = None,
                 tls: ssl.SSLContext | None = None, **kwargs: Any) -> None:  # fmt: skip
        self.access = access
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
