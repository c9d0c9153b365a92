"""The ``[auth]`` table is checked at start-up, and a JWKS file picks keys by "kid".

In-process (httpx over ASGI): the rules themselves are exercised over real HTTPS in
test_web_auth.py; here, what a configuration may and may not say.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from joserfc import jwt
from joserfc.jwk import ECKey

from engine import open_archive
from engine.credentials import auth_settings, hash_password
from engine.web.app import create_app
from engine.web.settings import WebSettings
from tests.web.conftest import Client


def _ec_key(kid: str) -> ECKey:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                               NoEncryption())  # fmt: skip
    return ECKey.import_key(pem, {"kid": kid})


def _token(key: ECKey, kid: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "ai-pipeline", "exp": now + 60, "scope": "read write", **claims}
    return jwt.encode({"alg": "ES256", "kid": kid}, body, key)


@pytest.fixture
def jwks_client(tmp_path: Path) -> Any:
    k1, k2 = _ec_key("k1"), _ec_key("k2")
    jwks = {"keys": [k1.as_dict(private=False), k2.as_dict(private=False)]}
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    auth = auth_settings({"jwks": str(tmp_path / "jwks.json"), "jwt_algorithms": ["ES256"]},
                         "127.0.0.1")  # fmt: skip
    archive = open_archive(tmp_path / "archive", durability="none")
    yield Client(create_app(archive, WebSettings(), auth)), k1, k2
    archive.close()


def test_jwks_keys_are_picked_by_kid(jwks_client: Any) -> None:
    client, k1, k2 = jwks_client
    for key, kid in ((k1, "k1"), (k2, "k2")):
        bearer = {"Authorization": f"Bearer {_token(key, kid)}"}
        r = client.get("/dicom-web/studies", headers=bearer)
        assert r.status_code in (200, 204), r.text
    swapped = _token(k1, "k2")  # signed by k1, claiming to be k2
    r = client.get("/dicom-web/studies", headers={"Authorization": f"Bearer {swapped}"})
    assert r.status_code == 401
    unknown = _token(_ec_key("k9"), "k9")
    r = client.get("/dicom-web/studies", headers={"Authorization": f"Bearer {unknown}"})
    assert r.status_code == 401


def test_loopback_without_auth_is_anonymous_but_other_hosts_must_say_so() -> None:
    assert auth_settings(None, "127.0.0.1").anonymous
    assert auth_settings(None, "::1").anonymous
    with pytest.raises(ValueError, match="without authentication"):
        auth_settings(None, "0.0.0.0")
    with pytest.raises(ValueError, match="without authentication"):
        auth_settings({}, "10.1.2.3")
    assert auth_settings({"anonymous": True}, "0.0.0.0").anonymous
    users = {"users": {"u": {"password": hash_password("p"), "roles": ["read"]}}}
    assert not auth_settings(users, "0.0.0.0").anonymous  # configured: anonymous off


@pytest.mark.parametrize("table, message", [
    ({"jwt_algorithms": ["HS256"]}, "not allowed"),
    ({"jwt_algorithms": ["none"]}, "not allowed"),
    ({"users": {"u": {"password": "plain-text", "roles": ["read"]}}}, "hash-password"),
    ({"users": {"u": {"password": "scrypt$1", "roles": ["superuser"]}}}, "roles must be"),
    ({"anonymus": True}, "unknown keys"),
    ({"jwt_key": "/nonexistent.pem"}, "cannot load"),
])  # fmt: skip
def test_bad_auth_tables_are_refused(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        auth_settings(table, "127.0.0.1")


def test_a_private_key_is_not_a_verification_key(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    private = tmp_path / "private.pem"
    private.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    with pytest.raises(ValueError, match="public key"):
        auth_settings({"jwt_key": str(private)}, "127.0.0.1")
    public = tmp_path / "public.pem"
    spki = PublicFormat.SubjectPublicKeyInfo
    public.write_bytes(key.public_key().public_bytes(Encoding.PEM, spki))
    assert auth_settings({"jwt_key": str(public), "jwt_algorithms": ["ES256"]},
                         "127.0.0.1").keys is not None  # fmt: skip
