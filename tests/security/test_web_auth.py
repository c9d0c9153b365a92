"""HTTPS for DICOMweb with the DICOM port's certificate, and who may do what over it.

Real peers: httpx and dicomweb-client (requests) over TLS against `pacs serve`.
Bearer JWTs made with joserfc (the identity provider's key) must pass; the classic
forgeries must not (alg=none, HS256 keyed with the RSA public key, another signer,
expired, not yet valid, wrong audience or issuer, no expiry). HTTP basic users have
roles; 401 carries WWW-Authenticate, 403 means a valid identity without the role,
both as problem+json, both audited.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import ssl
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from dicomweb_client.api import DICOMwebClient
from joserfc import jwt
from joserfc.jwk import RSAKey
from pydicom.uid import generate_uid

from engine.credentials import hash_password, verify_password
from tests._helpers import ROOT, small_ct
from tests.security._pki import Pki
from tests.security.conftest import AUDIENCE, ISSUER, PASSWORDS, TlsServer, client_context


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": "viewer-7", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now - 5,
              "exp": now + 300, "scope": "read"}  # fmt: skip
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _token(key: Any, **over: Any) -> str:
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return jwt.encode({"alg": "RS256"}, _claims(**over), RSAKey.import_key(pem))


def _unsigned(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    sig = hmac.new(secret, signing.encode(), hashlib.sha256).digest() if secret else b""
    return f"{signing}.{_b64(sig)}"


@pytest.fixture(scope="module")
def https(secure_server: TlsServer, pki: Pki) -> Any:
    with httpx.Client(base_url=f"https://127.0.0.1:{secure_server.http_port}/dicom-web",
                      verify=client_context(pki), timeout=60) as client:  # fmt: skip
        yield client


def _basic(user: str) -> tuple[str, str]:
    return (user, PASSWORDS[user])


def test_https_with_basic_reader_queries(https: httpx.Client, secure_server: TlsServer) -> None:
    r = https.get("/studies", auth=_basic("reader"))
    assert r.status_code in (200, 204), r.text
    assert r.url.scheme == "https"
    record = [a for a in secure_server.audit() if a["event"] == "Query"][-1]
    assert record["user"] == "reader" and record["outcome"] == 0


def test_plain_http_and_tls_1_1_are_refused_on_the_https_port(secure_server: TlsServer,
                                                              pki: Pki) -> None:  # fmt: skip
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{secure_server.http_port}/dicom-web/studies", timeout=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = client_context(pki, maximum_version=ssl.TLSVersion.TLSv1_1,
                             minimum_version=ssl.TLSVersion.TLSv1)  # fmt: skip
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"https://127.0.0.1:{secure_server.http_port}/dicom-web/studies", verify=old,
                  auth=_basic("reader"), timeout=20)  # fmt: skip


def test_no_credentials_is_401_with_challenges(https: httpx.Client,
                                               secure_server: TlsServer) -> None:  # fmt: skip
    before = len(secure_server.audit())
    r = https.get("/studies")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 401
    challenges = r.headers.get_list("www-authenticate")
    assert {c.split()[0] for c in challenges} == {"Bearer", "Basic"}
    audited = secure_server.audit()[before:]
    assert audited[-1]["event"] == "User Authentication" and audited[-1]["outcome"] != 0


@pytest.mark.parametrize("user, password", [("reader", "Wr0ng-pw"), ("nobody", "x-pw-7"),
                                            ("reader", PASSWORDS["writer"])])  # fmt: skip
def test_wrong_basic_credentials_are_401(https: httpx.Client, user: str, password: str) -> None:
    r = https.get("/studies", auth=(user, password))
    assert r.status_code == 401, r.text
    assert password not in r.text


def test_roles_read_write_delete_are_separate(https: httpx.Client, secure_server: TlsServer,
                                              pki: Pki) -> None:  # fmt: skip
    ds = small_ct(811)
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    boundary = "sec-boundary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buf.getvalue()
            + f"\r\n--{boundary}--\r\n".encode())  # fmt: skip
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
    before = len(secure_server.audit())
    refused = https.post("/studies", content=body, headers=headers, auth=_basic("reader"))
    assert refused.status_code == 403 and refused.json()["status"] == 403
    assert "www-authenticate" not in refused.headers
    assert secure_server.audit()[before]["event"] == "Security Alert"
    stored = https.post("/studies", content=body, headers=headers, auth=_basic("writer"))
    assert stored.status_code == 200, stored.text
    got = https.get(f"/studies/{ds.StudyInstanceUID}/metadata", auth=_basic("reader"))
    assert got.status_code == 200 and got.json()[0]["00080018"]["Value"] == [ds.SOPInstanceUID]
    assert https.delete(f"/studies/{ds.StudyInstanceUID}", auth=_basic("writer")).status_code == 403
    deleted = https.delete(f"/studies/{ds.StudyInstanceUID}", auth=_basic("admin"))
    assert deleted.status_code == 200 and deleted.json()["deleted"] == 1
    gone = https.get(f"/studies/{ds.StudyInstanceUID}/metadata", auth=_basic("reader"))
    assert gone.status_code == 404
    records = secure_server.audit()[before:]
    events = [a["event"] for a in records]
    assert "DICOM Instances Transferred" in events and "DICOM Instances Accessed" in events
    assert any(a["event"] == "DICOM Instances Accessed" and a["action"] == "D" for a in records)


def test_valid_bearer_token_reads(https: httpx.Client, idp: dict[str, Any],
                                  secure_server: TlsServer) -> None:  # fmt: skip
    token = _token(idp["key"])
    r = https.get("/studies", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code in (200, 204), r.text
    assert [a for a in secure_server.audit() if a["event"] == "Query"][-1]["user"] == "viewer-7"
    write = https.post("/studies", content=b"x", headers={"Authorization": f"Bearer {token}",
                       "Content-Type": "multipart/related; boundary=x"})  # fmt: skip
    assert write.status_code == 403  # scope "read" only


FORGERIES = {
    "expired": lambda idp: _token(idp["key"], exp=int(time.time()) - 3600, iat=0, nbf=0),
    "not_yet_valid": lambda idp: _token(idp["key"], nbf=int(time.time()) + 3600),
    "wrong_audience": lambda idp: _token(idp["key"], aud="someone-else"),
    "wrong_issuer": lambda idp: _token(idp["key"], iss="https://evil.test"),
    "no_expiry": lambda idp: _token(idp["key"], exp=None),
    "other_signer": lambda idp: _token(idp["other"]),
    "alg_none": lambda idp: _unsigned({"alg": "none", "typ": "JWT"}, _claims(), None),
    # algorithm confusion: HMAC keyed with the public key the server holds
    "hs256_with_public_key": lambda idp: _unsigned({"alg": "HS256", "typ": "JWT"}, _claims(),
                                                   idp["public_pem"]),
    "tampered_payload": lambda idp: _tamper(_token(idp["key"])),
    "garbage": lambda idp: "not.a.jwt",
}


def _tamper(token: str) -> str:
    head, _, sig = token.split(".")
    return f"{head}.{_b64(json.dumps(_claims(scope='read write delete')).encode())}.{sig}"


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_tokens_are_401(https: httpx.Client, idp: dict[str, Any], forgery: str) -> None:
    token = FORGERIES[forgery](idp)
    r = https.get("/studies", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401, (forgery, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    assert token not in r.text


def test_dicomweb_client_over_https_with_basic_auth(secure_server: TlsServer, pki: Pki) -> None:
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE overrides session.verify (requests#3829)
    session.verify = pki.ca.path
    session.cert = (pki.client.cert, pki.client.key)
    session.auth = _basic("writer")
    # one request per connection: a kept-alive TLS connection the client never closes would hold
    # the server's graceful stop for asyncio's SSL shutdown timeout (30 s)
    session.headers["Connection"] = "close"
    url = f"https://127.0.0.1:{secure_server.http_port}/dicom-web"
    client = DICOMwebClient(url, session=session)
    ds, other = small_ct(907), small_ct(908)
    ds.SeriesInstanceUID = generate_uid()
    before = len(secure_server.audit())
    client.store_instances([ds, other])
    found = client.search_for_instances(ds.StudyInstanceUID)
    assert [f["00080018"]["Value"][0] for f in found] == [ds.SOPInstanceUID]
    # one record per stored instance, as for a C-STORE, beside the one of the request
    per_instance = [a for a in secure_server.audit()[before:]
                    if a["detail"].get("service") == "STOW-RS"]  # fmt: skip
    assert sorted((a["detail"]["sop_instance_uid"], a["patient"]) for a in per_instance) == sorted(
        (d.SOPInstanceUID, d.PatientID) for d in (ds, other))
    assert {(a["event"], a["user"], a["outcome"]) for a in per_instance} == {
        ("DICOM Instances Transferred", "writer", 0)}
    session.auth = None
    with pytest.raises(requests.HTTPError) as info:
        client.search_for_studies()
    assert info.value.response.status_code == 401
    session.close()


def test_password_hash_round_trip_and_salt() -> None:
    a, b = hash_password("s3cret"), hash_password("s3cret")
    assert a != b and a.startswith("scrypt$")  # a fresh salt each time
    assert verify_password("s3cret", a) and not verify_password("s3cret!", a)
    assert not verify_password("s3cret", "plain-text") and not verify_password("", "scrypt$x")


def test_secrets_never_reach_the_log(https: httpx.Client, secure_server: TlsServer,
                                     idp: dict[str, Any]) -> None:  # fmt: skip
    token = _token(idp["key"], scope="read")
    forged = _token(idp["other"])
    https.get("/studies", auth=_basic("writer"))
    https.get("/studies", auth=("writer", "Not-The-Passw0rd"))
    https.get("/studies", headers={"Authorization": f"Bearer {token}"})
    https.get("/studies", headers={"Authorization": f"Bearer {forged}"})
    https.post("/studies", content=b"--x--", auth=_basic("reader"),
               headers={"Content-Type": "multipart/related; boundary=x"})  # fmt: skip
    text = secure_server.log() + (secure_server.archive / "audit.jsonl").read_text()
    assert "401" in text or "authentication" in text  # the refusals were logged...
    for secret in [*PASSWORDS.values(), "Not-The-Passw0rd", token, forged,
                   token.split(".")[2], base64.b64encode(b"writer:wr1te-too").decode()]:
        assert secret not in text  # ...without what was presented
    key_pem = Path(secure_server.pki.server.key).read_text().splitlines()[1]
    assert key_pem not in text


def test_pacs_hash_password_reads_stdin_not_argv() -> None:
    r = subprocess.run([sys.executable, "-m", "engine.cli", "hash-password"], input="Ch0sen pw\n",
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    assert r.returncode == 0, r.stderr
    stored = r.stdout.strip()
    assert verify_password("Ch0sen pw", stored) and not verify_password("Ch0sen", stored)
    empty = subprocess.run([sys.executable, "-m", "engine.cli", "hash-password"], input="\n",
                           capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    assert empty.returncode != 0
