"""DICOM upper-layer PDUs (PS3.8): the buffered reader and the framing of what we send.

Written against the
standard rather than through pynetdicom's objects (one Python object per
PDU and per PDV is what made pynetdicom's receive path cost milliseconds):

- PDU framing (PS3.8 9.3.1): a 6-byte header, type (1), reserved (1),
  big-endian length of what follows (4);
- P-DATA-TF items (PS3.8 9.3.5, Annex E.2): item length (4, big-endian,
  counting the context ID and control header), presentation context ID
  (1), message control header (1: bit 0 command, bit 1 last fragment),
  then the fragment;
- A-ASSOCIATE-RJ, A-RELEASE-RP and A-ABORT (PS3.8 9.3.4, 9.3.7, 9.3.8).

Association negotiation itself (the A-ASSOCIATE-RQ and -AC) goes through
pynetdicom's PDU classes, in :mod:`engine.net.fastpath` and
:mod:`engine.dimse`; command sets are :mod:`engine.dimse`'s.

It sits beside Archive rather than in net/ because both ends use it: the
server (:mod:`engine.net`) and the benchmark client (:mod:`engine.bench`).
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Callable

# PS3.8 9.3.1: PDU types
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

# PS3.8 9.3.8, Table 9-26: A-ABORT source 2 (service provider) reasons
ABORT_NOT_SPECIFIED = 0x00
ABORT_UNRECOGNIZED_PDU = 0x01
ABORT_UNEXPECTED_PDU = 0x02
ABORT_UNRECOGNIZED_PARAMETER = 0x04
ABORT_UNEXPECTED_PARAMETER = 0x05
ABORT_INVALID_PARAMETER = 0x06

# PS3.8 E.2: message control header bits
MCH_COMMAND = 0x01
MCH_LAST = 0x02

PDU_HEADER = struct.Struct(">BxI")  # type, reserved, length
PDV_HEADER = struct.Struct(">IBB")  # item length, context ID, message control header

PDU_HEADER_BYTES = 6
PDV_HEADER_BYTES = 6
READ_BUFFER_BYTES = 256 << 10
DIRECT_READ_MIN_BYTES = 64 << 10  # fragments at least this long bypass the read buffer


class ProtocolError(Exception):
    """The peer broke PS3.8 framing; the association ends with an A-ABORT carrying `reason`."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def invalid(message: str) -> ProtocolError:
    """A ProtocolError for an invalid PDU parameter value (A-ABORT reason 6)."""
    return ProtocolError(ABORT_INVALID_PARAMETER, message)


def unexpected(message: str) -> ProtocolError:
    """A ProtocolError for an unexpected PDU parameter (A-ABORT reason 5)."""
    return ProtocolError(ABORT_UNEXPECTED_PARAMETER, message)


class PeerClosed(Exception):
    """The peer closed the connection (or it reset) in the middle of the protocol."""


class PDUTimeout(TimeoutError):
    """A PDU begun was not whole within the PDU deadline: a stalled or drip-feeding peer."""


class MessageBuffer:
    """One growing buffer that holds a data set while its fragments arrive.

    It is reused from message to message, so a steady stream of instances
    of the same size allocates nothing. When it grows, a new bytearray
    replaces it; views handed out earlier keep the old one alive.

    Parameters
    ----------
    capacity
        Bytes allocated up front.
    limit_bytes
        The largest data set it takes (``[server] max_instance_bytes``): a
        peer that sends fragments without the last bit must not grow it
        until the worker runs out of memory.
    """

    __slots__ = ("buf", "length", "limit_bytes", "view")

    def __init__(self, capacity: int = 1 << 20, limit_bytes: int | None = None) -> None:
        self.buf = bytearray(capacity if limit_bytes is None else min(capacity, limit_bytes))
        self.view = memoryview(self.buf)
        self.length = 0
        self.limit_bytes = limit_bytes

    def reserve(self, extra: int) -> memoryview:
        """Make room for `extra` more bytes; return the writable view of that room.

        Raises
        ------
        ProtocolError
            The data set would pass `limit_bytes` (A-ABORT, reason not specified).
        """
        need = self.length + extra
        if need > len(self.buf):
            if self.limit_bytes is not None and need > self.limit_bytes:
                raise ProtocolError(
                    ABORT_NOT_SPECIFIED,
                    f"data set longer than {self.limit_bytes} bytes "
                    "(server.max_instance_bytes); nothing of it stored",
                )
            size = max(need, 2 * len(self.buf))
            if self.limit_bytes is not None:  # never past the limit: then need <= len(buf) is safe
                size = min(size, self.limit_bytes)
            grown = bytearray(size)
            grown[: self.length] = self.view[: self.length]
            self.buf, self.view = grown, memoryview(grown)
        return self.view[self.length : need]

    def data(self) -> memoryview:
        """The bytes collected so far (a view: valid until the buffer is reused)."""
        return self.view[: self.length]


class PDUReader:
    """Reads PDU and PDV headers from a socket through one reusable buffer.

    Fragment payloads are copied once, from the buffer or straight from the
    socket, into a :class:`MessageBuffer`; no object is made per PDU.

    Parameters
    ----------
    sock
        A connected, blocking socket (a receive timeout may be set on it).
    patience
        Asked when the wait for a PDU timed out: True to wait once more (the
        peer is still busy reading what we sent), False to let the timeout stand.
    pdu_timeout_s
        A PDU whose first byte has arrived must be whole within this (PS3.8
        leaves it to the implementation): a peer sending one byte at a time
        raises :class:`PDUTimeout`. None: no such deadline.
    idle_timeout_s
        How long to wait for the first byte of the next PDU; the socket's
        receive timeout must not be longer (it is how often the deadlines
        are looked at). None: one socket timeout.
    """

    def __init__(self, sock: socket.socket, size: int = READ_BUFFER_BYTES,
                 patience: Callable[[], bool] | None = None,
                 pdu_timeout_s: float | None = None,
                 idle_timeout_s: float | None = None) -> None:  # fmt: skip
        self.sock = sock
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0
        self.patience = patience
        self.pdu_timeout_s = pdu_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.deadline: float | None = None  # of the PDU being read; None between PDUs
        self.idle_since = 0.0

    def _received(self) -> None:
        """Bytes arrived: the PDU's deadline starts with its first, and holds for the rest."""
        if self.pdu_timeout_s is None:
            return
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.pdu_timeout_s
        elif now > self.deadline:
            raise self._late()

    def _late(self) -> PDUTimeout:
        return PDUTimeout(f"a PDU not whole within pdu_timeout_s ({self.pdu_timeout_s:g} s)")

    def _wait_on(self) -> bool:
        """A read timed out: whether to read again, or let the timeout stand.

        Inside a PDU, never: the socket timeout is the shorter of the two, so
        the peer was silent past the PDU deadline or the idle timeout. Between
        PDUs, until the idle timeout, then as long as :attr:`patience` says
        the peer is busy.
        """
        now = time.monotonic()
        if self.deadline is not None:
            if now > self.deadline:
                raise self._late()
            return False
        if self.idle_timeout_s is not None and now - self.idle_since < self.idle_timeout_s:
            return True
        if self.patience is not None and self.patience():
            self.idle_since = now
            return True
        return False

    def _fill(self, need: int) -> None:
        """Block until at least `need` bytes are buffered (`need` <= the buffer size)."""
        if self.start == self.end:
            self.start = self.end = 0
        elif self.start + need > len(self.buf):  # not enough room at the tail: move to the front
            n = self.end - self.start
            self.buf[:n] = self.view[self.start : self.end]
            self.start, self.end = 0, n
        recv_into, view = self.sock.recv_into, self.view
        while self.end - self.start < need:
            try:
                got = recv_into(view[self.end :])
            except (TimeoutError, BlockingIOError):  # SO_RCVTIMEO: EAGAIN
                if self._wait_on():
                    continue
                raise
            if not got:
                raise PeerClosed("the peer closed the connection")
            self.end += got
            self._received()

    def pdu_header(self) -> tuple[int, int]:
        """(PDU type, length) of the next PDU (PS3.8 9.3.1); its deadline starts here."""
        self.deadline = None
        if self.end == self.start:
            self.idle_since = time.monotonic() if self.idle_timeout_s is not None else 0.0
        else:
            self._received()  # the PDU has begun: its first bytes are in the buffer
        if self.end - self.start < PDU_HEADER_BYTES:
            self._fill(PDU_HEADER_BYTES)
        kind, length = PDU_HEADER.unpack_from(self.buf, self.start)
        self.start += PDU_HEADER_BYTES
        return kind, length

    def pdv_header(self) -> tuple[int, int, int]:
        """(item length, presentation context ID, control header) of the next PDV item."""
        if self.end - self.start < PDV_HEADER_BYTES:
            self._fill(PDV_HEADER_BYTES)
        header = PDV_HEADER.unpack_from(self.buf, self.start)
        self.start += PDV_HEADER_BYTES
        return header

    def read(self, n: int) -> bytes:
        """The next `n` bytes as bytes (small fields: `n` <= the buffer size)."""
        if self.end - self.start < n:
            self._fill(n)
        out = bytes(self.view[self.start : self.start + n])
        self.start += n
        return out

    def skip(self, n: int) -> None:
        """Discard the next `n` bytes."""
        while n:
            if self.end == self.start:
                self._fill(1)
            step = min(n, self.end - self.start)
            self.start += step
            n -= step

    def read_into(self, dest: MessageBuffer, n: int) -> None:
        """Append the next `n` bytes to `dest`: buffered bytes first, the rest from the socket."""
        room = dest.reserve(n)
        have = min(n, self.end - self.start)
        if have:
            room[:have] = self.view[self.start : self.start + have]
            self.start += have
        pos = have
        recv_into = self.sock.recv_into
        while pos < n:
            left = n - pos
            if left >= DIRECT_READ_MIN_BYTES:  # large: straight into the message, no second copy
                try:
                    got = recv_into(room[pos:], left)
                except (TimeoutError, BlockingIOError):
                    if self._wait_on():
                        continue
                    raise
                if not got:
                    raise PeerClosed("the peer closed the connection inside a fragment")
                pos += got
                self._received()
            else:  # small tail: read ahead into the buffer, so the next headers come with it
                self._fill(1)
                step = min(left, self.end - self.start)
                room[pos : pos + step] = self.view[self.start : self.start + step]
                self.start += step
                pos += step
        room.release()
        dest.length += n


def fragment_limit(peer_max_pdu: int) -> int:
    """The longest fragment a PDU within `peer_max_pdu` carries: even, as DCMTK insists
    (it fails "Odd Fragment Length" otherwise), at least 2."""
    return max(2, (peer_max_pdu - PDV_HEADER_BYTES) & ~1)


def encode_p_data(context_id: int, command: bytes, peer_max_pdu: int) -> bytes:
    """One or more P-DATA-TF PDUs carrying a whole command set (PS3.8 9.3.5).

    `peer_max_pdu` is the peer's Maximum Length Received (0: no limit); a
    command longer than that is split into fragments, the last one flagged.
    """
    limit = len(command) if peer_max_pdu == 0 else fragment_limit(peer_max_pdu)
    out = []
    for pos in range(0, max(1, len(command)), limit):
        chunk = command[pos : pos + limit]
        last = pos + limit >= len(command)
        mch = MCH_COMMAND | (MCH_LAST if last else 0)
        item = PDV_HEADER.pack(len(chunk) + 2, context_id, mch) + chunk
        out.append(PDU_HEADER.pack(P_DATA_TF, len(item)) + item)
    return b"".join(out)


def data_set_pdus(context_id: int, data: bytes, peer_max_pdu: int) -> bytes:
    """P-DATA-TF PDUs carrying a data set, each within the peer's Maximum Length (0: none)."""
    limit = max(1, len(data)) if peer_max_pdu == 0 else fragment_limit(peer_max_pdu)
    view, out = memoryview(data), list[bytes | memoryview]()
    for pos in range(0, max(1, len(data)), limit):
        chunk = view[pos : pos + limit]
        mch = MCH_LAST if pos + limit >= len(data) else 0
        out.append(PDU_HEADER.pack(P_DATA_TF, len(chunk) + PDV_HEADER_BYTES))
        out.append(PDV_HEADER.pack(len(chunk) + 2, context_id, mch))
        out.append(chunk)
    return b"".join(out)


def data_set_buffers(
    context_id: int, parts: list[memoryview], peer_max_pdu: int
) -> list[memoryview | bytes]:
    """P-DATA-TF PDUs carrying the data set that `parts` make up, as a list of buffers.

    The same PDUs as :func:`data_set_pdus` of the joined parts, without joining
    them: headers and slices of the parts, for :func:`send_buffers`.
    """
    total = sum(len(p) for p in parts)
    limit = total if peer_max_pdu == 0 else fragment_limit(peer_max_pdu)
    out: list[memoryview | bytes] = []
    sent, i, at = 0, 0, 0  # bytes framed so far; the part and the offset in it
    while True:
        n = min(limit, total - sent)
        sent += n
        mch = MCH_LAST if sent >= total else 0
        out.append(PDU_HEADER.pack(P_DATA_TF, n + PDV_HEADER_BYTES)
                   + PDV_HEADER.pack(n + 2, context_id, mch))  # fmt: skip
        while n:
            part = parts[i]
            step = min(n, len(part) - at)
            if step:
                out.append(part[at : at + step])
            at += step
            n -= step
            if at == len(part):
                i, at = i + 1, 0
        if mch:
            return out


IOV_MAX = 1024  # Linux: the most buffers one sendmsg() takes


def send_buffers(sock: socket.socket, buffers: list[memoryview | bytes]) -> None:
    """Send `buffers` in order with scatter/gather writes: nothing is joined or copied.

    A TLS socket has no sendmsg(): its buffers are joined and sent at once.
    """
    if isinstance(sock, ssl.SSLSocket):
        sock.sendall(b"".join(buffers))
        return
    views = [memoryview(b) for b in buffers]
    i = 0
    while i < len(views):
        sent = sock.sendmsg(views[i : i + IOV_MAX])
        while sent and i < len(views):  # a short write: skip what went, resume mid-buffer
            n = len(views[i])
            if sent >= n:
                sent -= n
                i += 1
            else:
                views[i] = views[i][sent:]
                sent = 0


def encode_reject(result: int, source: int, reason: int) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4): reserved, result, source, reason/diagnostic."""
    return PDU_HEADER.pack(A_ASSOCIATE_RJ, 4) + bytes((0, result, source, reason))


def encode_abort(reason: int, source: int = 0x02) -> bytes:
    """A-ABORT (PS3.8 9.3.8); source 2: the service provider (we), 0: the service user."""
    return PDU_HEADER.pack(A_ABORT, 4) + bytes((0, 0, source, reason))


RELEASE_RP = PDU_HEADER.pack(A_RELEASE_RP, 4) + b"\0\0\0\0"  # PS3.8 9.3.7
