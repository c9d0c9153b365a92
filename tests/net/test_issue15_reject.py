"""Issue 15: an unlisted calling AE got no A-ASSOCIATE-RJ on some machines.

The fast path closed the socket right after its RJ. A close with bytes still unread
(a TLS record, a PDU the peer pipelined) makes the kernel send a TCP RST, and a peer
that had not read the RJ yet saw a reset instead: an abort, not a rejection, depending
on timing. PS3.8 9.2 (AE-8, Sta13) has the acceptor wait for the requestor to close.
"""

from __future__ import annotations

import socket
import time

from engine import pdu as P
from tests.net._support import Server
from tests.reliability._raw import associate_rq


def test_reject_reaches_a_peer_that_pipelined_and_reads_late(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        # a store-only RQ (the fast path's) from an unlisted title, then a stray PDU at once
        sock.sendall(associate_rq(via_pynetdicom=False, calling="INTRUDER") + P.encode_abort(0))
        time.sleep(0.5)  # the server has answered and closed (or is waiting) by now
        header = sock.recv(P.PDU_HEADER_BYTES, socket.MSG_WAITALL)
    assert header[:1] == bytes([P.A_ASSOCIATE_RJ]), header
