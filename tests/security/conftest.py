"""One `pacs serve` with TLS (client certificates required), HTTPS, [auth] and access rules,
shared by the security tests of a module; the certificates and JWT keys it trusts."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from engine.credentials import hash_password
from tests._helpers import ROOT
from tests.net._support import START_TIMEOUT_S, Server, free_port
from tests.security._pki import Pki, make_pki

PASSWORDS = {"reader": "r3ad-only", "writer": "wr1te-too", "admin": "all-r0les"}
ROLES = {"reader": ["read"], "writer": ["read", "write"], "admin": ["read", "write", "delete"]}
ISSUER, AUDIENCE = "https://idp.test", "pacs"


class TlsServer(Server):
    """`pacs serve` whose DICOM port speaks TLS: readiness is a C-ECHO over TLS."""

    def __init__(self, tmp: Path, pki: Pki, *, flags: tuple[str, ...] = (), **kw: Any) -> None:
        super().__init__(tmp, **kw)
        self.pki, self.flags = pki, flags

    def start(self) -> TlsServer:
        """As Server.start, with `flags` (``--tls-cert`` ...) added to ``pacs serve``."""
        cmd = [sys.executable, "-m", "engine.cli", "--config", str(self.config_path), "serve",
               str(self.archive), "--dicom-port", str(self.port), "--workers", str(self.workers),
               "--http-port", str(self.http_port), *self.flags]  # fmt: skip
        self._log = open(self.log_path, "ab")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            if "listening on" in self.log() and tls_echo(self.port, self.pki) == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"server did not start:\n{self.log()}")

    def audit(self) -> list[dict[str, Any]]:
        """The records written so far; a line still being appended (no newline yet) waits."""
        path = self.archive / "audit.jsonl"
        text = path.read_text() if path.exists() else ""
        return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def client_context(pki: Pki, cert: Any = None, **versions: Any) -> ssl.SSLContext:
    """A client context trusting our CA, presenting `cert` (default: the good client's)."""
    ctx = ssl.create_default_context(cafile=pki.ca.path)
    ctx.check_hostname = False
    cert = pki.client if cert is None else cert
    if cert:
        ctx.load_cert_chain(cert.cert, cert.key)
    for k, v in versions.items():
        setattr(ctx, k, v)
    return ctx


def tls_echo(port: int, pki: Pki, ae_title: str = "ECHOSCU", **kw: Any) -> int | None:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS",
                         tls_args=(client_context(pki, **kw), None))
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def idp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The identity provider's RSA key (public half in the config), and a stranger's."""
    folder = tmp_path_factory.mktemp("idp")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem, spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    public = key.public_key().public_bytes(pem, spki)
    (folder / "idp.pub.pem").write_bytes(public)
    return {"key": key, "other": other, "public_pem": public, "public_path": folder / "idp.pub.pem"}


def security_config(pki: Pki, idp: dict[str, Any], storescp_port: int) -> str:
    users = "".join(
        f'[auth.users.{u}]\npassword = "{hash_password(p)}"\nroles = {json.dumps(ROLES[u])}\n'
        for u, p in PASSWORDS.items()
    )
    return f"""
[tls]
cert = "{pki.server.cert}"
key = "{pki.server.key}"
ca = "{pki.ca.path}"
require_client_cert = true

[auth]
jwt_key = "{idp["public_path"]}"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
{users}
[remotes.NOQUERY]
query = false
[remotes.NOSTORE]
store = false
[remotes.NORETRIEVE]
retrieve = false
[remotes.STORESCP]
host = "127.0.0.1"
port = {storescp_port}
tls = true
[remotes.NOTDEST]
host = "127.0.0.1"
port = {storescp_port}
move_destination = false
[remotes.LIMITED]
move_to = ["STORESCP"]
[remotes.OTHERDEST]
host = "127.0.0.1"
port = {storescp_port}

[access]
allowed_calling = ["ECHOSCU", "STORESCU", "FINDSCU", "MOVESCU", "PYSCU", "NOQUERY", "NOSTORE",
                   "NORETRIEVE", "LIMITED"]
"""


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki,
                  idp: dict[str, Any]) -> Iterator[TlsServer]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("secure")
    storescp_port = free_port()
    server = TlsServer(tmp, pki, workers=1, http=True,
                       config=security_config(pki, idp, storescp_port))  # fmt: skip
    server.storescp_port = storescp_port  # type: ignore[attr-defined]
    server.start()
    yield server
    assert server.stop() == 0, server.log()
