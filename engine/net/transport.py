"""Sockets and association acceptance: SO_REUSEPORT, TCP_NODELAY, calling AE checks.

pynetdicom's :class:`~pynetdicom.transport.AssociationServer` binds its own
socket; we subclass it so that every worker process can bind the same port
(``SO_REUSEPORT``: the kernel spreads incoming connections over the workers)
and so that every accepted socket has ``TCP_NODELAY`` (without it, a small
DIMSE response waits for the peer's delayed ACK, about 40 ms on Linux).

Access control happens in the ACSE negotiation (PS3.8 7.1.1.9): a calling AE
title, or AE title and host, that is not allowed gets an A-ASSOCIATE-RJ,
rejected-permanent, source service-user, reason 3 "calling AE title not
recognized" (PS3.8 9.3.4, Table 9-21).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from pynetdicom import evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from engine.net.settings import Access

log = logging.getLogger("engine.net")

LISTEN_BACKLOG = 128  # socketserver's default of 5 drops bursts of modality connections
# PS3.8 9.3.4: A-ASSOCIATE-RJ (result, source, reason)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service-user, calling AE title not recognized


def set_nodelay(sock: socket.socket) -> None:
    """Switch Nagle's algorithm off: DIMSE messages are small and answered at once."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # not a TCP socket (a test's socketpair): nothing to tune
        log.debug("TCP_NODELAY not set: %s", exc)


class _AccessACSE(ACSE):
    """ACSE that refuses calling AE titles (and hosts) the access list does not name."""

    access: Access

    def _negotiate_as_acceptor(self) -> None:
        rq = self.requestor.primitive
        calling = str(rq.calling_ae_title) if rq is not None else ""
        address = str(self.requestor.address)
        if not self.access.may_associate(calling, address):
            log.warning("association from %r at %s refused: calling AE title not allowed",
                        calling, address)  # fmt: skip
            self.requestor.ae_title = calling
            self.send_reject(*REJECT_CALLING_AE)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        super()._negotiate_as_acceptor()


class _RequestHandler(RequestHandler):
    """pynetdicom's handler, with our ACSE swapped in before the association starts."""

    server: AssociationServer

    def _create_association(self) -> Association:
        assoc: Association = super()._create_association()
        acse = _AccessACSE(assoc)
        acse.access = self.server.access
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
    **kwargs
        As for :class:`pynetdicom.transport.AssociationServer`.
    """

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True

    def __init__(self, *args: Any, access: Access, **kwargs: Any) -> None:
        self.access = access
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
