"""TLS for DIMSE and DICOMweb: the ``[tls]`` table and the BCP 195 SSL contexts.

PS3.15 Annex B.9 (the BCP 195 TLS profile): TLS 1.2 or newer, forward-secret
AEAD ciphersuites only (ECDHE/DHE with AES-GCM or ChaCha20-Poly1305), no
compression, no renegotiation. When ``[tls]`` is configured the DICOM port
*is* a TLS port (there is no second, plain port: an archive that speaks TLS
should not also speak clear text), and the DICOMweb port is HTTPS with the
same certificate::

    [tls]
    cert = "/etc/pacs/server.pem"     # the server's certificate chain (PEM)
    key = "/etc/pacs/server.key"      # its private key (PEM, unencrypted)
    ca = "/etc/pacs/clients-ca.pem"   # optional: CA that signs client certificates
    require_client_cert = true        # default: true when `ca` is given

C-MOVE to a remote marked ``tls = true`` opens a TLS connection that checks
the remote's certificate against ``ca`` (or the system's CAs without one)
and presents our own certificate.

The TLS handshake of an accepted connection runs in the connection's own
thread (:func:`handshake`), never in the accept loop: a peer that opens a
TCP connection and says nothing must not stop the others from connecting.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TLS_KEYS = ("cert", "key", "ca", "require_client_cert")
HANDSHAKE_TIMEOUT_S = 30.0  # as the ARTIM timer: a TLS peer has this long to finish the handshake
# BCP 195 (RFC 9325 4.2): ephemeral key exchange, AEAD ciphers. TLS 1.3 suites are all AEAD.
BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Where the certificate, key and client CA are; whether a client certificate is required."""

    cert: str
    key: str
    ca: str | None = None
    require_client_cert: bool = False

    def __post_init__(self) -> None:
        for name in ("cert", "key", "ca"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"tls.{name}: no such file {path!r}")
        if self.require_client_cert and self.ca is None:
            raise ValueError("tls.require_client_cert needs tls.ca (the CA that signs clients)")


def tls_settings(table: Mapping[str, Any] | None, **flags: Any) -> TlsSettings | None:
    """The ``[tls]`` table with the ``--tls-*`` flags over it; None when TLS is off.

    Raises
    ------
    ValueError
        An unknown key, a missing file, or a key without a certificate.
    """
    values = dict(table or {})
    unknown = set(values) - set(TLS_KEYS)
    if unknown:
        raise ValueError(f"[tls]: unknown keys {sorted(unknown)}")
    values.update({k: v for k, v in flags.items() if v is not None})
    if not values.get("cert") and not values.get("key"):
        return None
    if not values.get("cert") or not values.get("key"):
        raise ValueError("TLS needs both tls.cert and tls.key (--tls-cert and --tls-key)")
    if "require_client_cert" not in values:
        values["require_client_cert"] = bool(values.get("ca"))
    if not isinstance(values["require_client_cert"], bool):
        raise ValueError("tls.require_client_cert must be true or false")
    return TlsSettings(**values)


def _harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """The server side: our certificate, BCP 195, client certificates checked against ``ca``.

    The context's sockets are :class:`PeekableSSLSocket`, so the storage fast
    path can look at the A-ASSOCIATE-RQ and still leave it for pynetdicom.
    """
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.load_cert_chain(tls.cert, tls.key)
    if tls.ca is not None:
        ctx.load_verify_locations(cafile=tls.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    ctx.sslsocket_class = PeekableSSLSocket
    return ctx


def client_context(tls: TlsSettings | None) -> ssl.SSLContext:
    """The client side, for C-MOVE to a TLS remote: verify it, and show our certificate."""
    ctx = _harden(ssl.create_default_context(cafile=tls.ca if tls else None))
    ctx.check_hostname = False  # remotes are configured by address; the CA vouches for them
    if tls is not None:
        ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


def handshake(sock: ssl.SSLSocket, timeout_s: float = HANDSHAKE_TIMEOUT_S) -> None:
    """Finish the TLS handshake of an accepted connection within `timeout_s`.

    Raises
    ------
    ssl.SSLError, OSError
        The peer offered an old protocol or weak ciphers, its certificate did
        not verify, it sent none when one is required, or it timed out.
    """
    old = sock.gettimeout()
    sock.settimeout(timeout_s)
    try:
        sock.do_handshake()
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(old)


def peer_identity(sock: Any) -> str | None:
    """The subject common name of a verified client certificate, for the log."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    cert = sock.getpeercert()
    for rdn in (cert or {}).get("subject", ()):
        for pair in rdn:
            if pair[0] == "commonName":
                return str(pair[1])
    return None


class PeekableSSLSocket(ssl.SSLSocket):
    """An SSL socket whose ``recv(n, MSG_PEEK)`` works: TLS records cannot be peeked in
    the kernel, so peeked plaintext is kept here and handed out by the next reads."""

    _pushback: bytes = b""

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if flags & socket.MSG_PEEK:
            if len(self._pushback) < buflen:
                more = super().recv(buflen - len(self._pushback))
                self._pushback += more
            return self._pushback[:buflen]
        if self._pushback:
            out, self._pushback = self._pushback[:buflen], self._pushback[buflen:]
            return out
        return super().recv(buflen, flags)

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        if self._pushback:
            view = memoryview(buffer).cast("B")
            n = min(len(self._pushback), nbytes or len(view), len(view))
            view[:n] = self._pushback[:n]
            self._pushback = self._pushback[n:]
            return n
        return super().recv_into(buffer, nbytes, flags)

    def pending(self) -> int:
        # pynetdicom asks pending() as well as select(): peeked bytes are ready to read
        return len(self._pushback) + super().pending()
