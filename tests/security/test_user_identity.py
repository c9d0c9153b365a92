"""DICOM User Identity Negotiation (PS3.7 D.3.3.7) against the users and roles of ``[auth]``.

The same users, passwords, roles and JWT keys as DICOMweb. Peers: DCMTK
``storescu --user/--password`` and ``--jwt``, and pynetdicom's user
identity item, on the fast path and on pynetdicom's (a Modality Worklist
context sends the association there). One server requires an identity,
one takes it when given and then holds the association to its user's roles.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from joserfc import jwt
from joserfc.jwk import RSAKey
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    ModalityWorklistInformationFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from engine.credentials import hash_password
from engine.part10 import IMPLEMENTATION_VERSION_NAME
from tests._helpers import ROOT, small_ct
from tests.net._support import NODELAY, Server, free_port, run_dcmtk
from tests.security.conftest import AUDIENCE, ISSUER, PASSWORDS, ROLES

PATHS = ["fast", "pynetdicom"]
REJECTED_USER = (0x01, 0x02, 0x01)  # permanent, service-provider (ACSE), no reason given


def _config(idp: dict[str, Any], required: bool) -> str:
    users = "".join(
        f'[auth.users.{u}]\npassword = "{hash_password(p)}"\nroles = {json.dumps(ROLES[u])}\n'
        for u, p in PASSWORDS.items()
    )
    return (f'[dicom]\nrequire_user_identity = {str(required).lower()}\n\n[auth]\n'
            f'jwt_key = "{idp["public_path"]}"\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\n'
            f"{users}")  # fmt: skip


@pytest.fixture(scope="module")
def required(tmp_path_factory: pytest.TempPathFactory, idp: dict[str, Any]) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("uid-required"), workers=1,
                    config=_config(idp, True))  # fmt: skip
    server.wait_ready = lambda: _wait_for_log(server)  # type: ignore[method-assign]
    server.start()
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def optional(tmp_path_factory: pytest.TempPathFactory, idp: dict[str, Any]) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("uid-optional"), workers=1,
                    config=_config(idp, False)).start()  # fmt: skip
    yield server
    assert server.stop() == 0, server.log()


def _wait_for_log(server: Server) -> None:
    """The readiness echo has no identity: a server requiring one refuses it; watch the log."""
    deadline = time.monotonic() + 90
    while "listening on" not in server.log():
        assert server.proc is not None and server.proc.poll() is None, server.log()
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)


def _token(idp: dict[str, Any], scope: str, **over: Any) -> str:
    now = int(time.time())
    claims = {"sub": "modality-3", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300,
              "scope": scope, **over}  # fmt: skip
    pem = idp["key"].private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return jwt.encode({"alg": "RS256"}, claims, RSAKey.import_key(pem))


def _identity(kind: int, primary: bytes, secondary: bytes = b"",
              response: bool = False) -> UserIdentityNegotiation:  # fmt: skip
    item = UserIdentityNegotiation()
    item.user_identity_type = kind
    item.primary_field = primary
    if kind == 2:
        item.secondary_field = secondary
    item.positive_response_requested = response
    return item


def _associate(port: int, path: str, item: UserIdentityNegotiation | None) -> Any:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    if path == "pynetdicom":
        ae.add_requested_context(ModalityWorklistInformationFind)
    return ae.associate("127.0.0.1", port, ae_title="PACS", evt_handlers=NODELAY,
                        ext_neg=[item] if item is not None else None)  # fmt: skip


def _check_path(assoc: Any, path: str) -> None:
    fast = assoc.acceptor.implementation_version_name == IMPLEMENTATION_VERSION_NAME
    assert fast == (path == "fast"), assoc.acceptor.implementation_version_name


def _rejection(assoc: Any) -> tuple[int, int, int]:
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    return int(rj.result), int(rj.result_source), int(rj.diagnostic)


def _storescu(port: int, tmp_path: Path, seed: int,
              *options: str) -> subprocess.CompletedProcess[str]:  # fmt: skip
    file = tmp_path / f"ct-{seed}.dcm"
    small_ct(seed).save_as(file, enforce_file_format=True)
    return run_dcmtk("storescu", "-aet", "STORESCU", "-aec", "PACS", *options, "127.0.0.1",
                     str(port), str(file))  # fmt: skip


def test_storescu_with_password_or_jwt_is_accepted_and_without_refused(
    required: Server, idp: dict[str, Any], tmp_path: Path
) -> None:
    good = _storescu(required.port, tmp_path, 1, "-usr", "writer", "-pwd", PASSWORDS["writer"],
                     "-rsp")  # fmt: skip
    assert good.returncode == 0, good.stdout + good.stderr
    token = tmp_path / "token.jwt"
    token.write_text(_token(idp, "read write"))
    jwt_sent = _storescu(required.port, tmp_path, 2, "--jwt", str(token))
    assert jwt_sent.returncode == 0, jwt_sent.stdout + jwt_sent.stderr
    for options in [(), ("-usr", "writer", "-pwd", "wrong"), ("-usr", "writer"),
                    ("-usr", "nobody", "-pwd", "x")]:  # fmt: skip
        r = _storescu(required.port, tmp_path, 3, *options)
        assert r.returncode != 0 and "Association Rejected" in r.stdout + r.stderr, options
    log = required.log()
    assert "no user identity, and require_user_identity is on" in log
    assert "wrong user name or password" in log
    assert "a user name alone does not authenticate" in log


@pytest.mark.parametrize("path", PATHS)
def test_pynetdicom_user_identity_is_checked(required: Server, idp: dict[str, Any],
                                             path: str) -> None:  # fmt: skip
    asked = _identity(2, b"reader", PASSWORDS["reader"].encode(), response=True)
    good = _associate(required.port, path, asked)
    assert good.is_established
    try:
        _check_path(good, path)
        assert good.acceptor.user_identity is not None  # the positive response asked for
        assert good.acceptor.user_identity.server_response == b""
    finally:
        good.release()
    token = _identity(5, _token(idp, "read").encode())
    by_token = _associate(required.port, path, token)
    assert by_token.is_established
    by_token.release()
    assert _rejection(_associate(required.port, path, None)) == REJECTED_USER
    wrong = _identity(2, b"reader", b"not-it")
    assert _rejection(_associate(required.port, path, wrong)) == REJECTED_USER
    expired = _identity(5, _token(idp, "read", exp=int(time.time()) - 3600).encode())
    assert _rejection(_associate(required.port, path, expired)) == REJECTED_USER
    stranger = _identity(5, jwt.encode({"alg": "RS256"}, {"sub": "x", "exp": 2**31},
                                       RSAKey.import_key(idp["other"].private_bytes(
                                           Encoding.PEM, PrivateFormat.PKCS8,
                                           NoEncryption()))).encode())  # fmt: skip
    assert _rejection(_associate(required.port, path, stranger)) == REJECTED_USER


@pytest.mark.parametrize("path", PATHS)
def test_a_users_roles_bound_what_the_association_may_do(optional: Server, path: str) -> None:
    reader = _associate(optional.port, path,
                        _identity(2, b"reader", PASSWORDS["reader"].encode()))  # fmt: skip
    assert reader.is_established
    try:
        _check_path(reader, path)
        status = reader.send_c_store(small_ct(10 + PATHS.index(path)))
        assert status.Status == 0x0124 and "may not store" in status.ErrorComment
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        answers = reader.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
        finals = [int(s.Status) for s, _ in answers]
        assert finals[-1] == 0x0000  # read: it may query
    finally:
        reader.release()
    writer = _associate(optional.port, path,
                        _identity(2, b"writer", PASSWORDS["writer"].encode()))  # fmt: skip
    assert writer.is_established
    try:
        assert writer.send_c_store(small_ct(20 + PATHS.index(path))).Status == 0x0000
    finally:
        writer.release()
    anonymous = _associate(optional.port, path, None)  # not required: the AE's rules alone
    assert anonymous.is_established
    try:
        assert anonymous.send_c_store(small_ct(30 + PATHS.index(path))).Status == 0x0000
    finally:
        anonymous.release()
    wrong = _identity(2, b"writer", b"guess")  # given and wrong: refused even when optional
    assert _rejection(_associate(optional.port, path, wrong)) == REJECTED_USER


def test_requiring_identity_without_users_does_not_start(tmp_path: Path) -> None:
    config = tmp_path / "pacs.toml"
    config.write_text("[dicom]\nrequire_user_identity = true\n")
    r = subprocess.run([sys.executable, "-m", "engine.cli", "--config", str(config), "serve",
                        str(tmp_path / "archive"), "--dicom-port", str(free_port()),
                        "--http-port", "0"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
    assert r.returncode != 0
    assert "require_user_identity needs" in r.stderr
