"""Who a user is: the ``[auth]`` table's users and token keys, checked for DICOMweb and DIMSE.

DICOMweb (:mod:`engine.web.auth`) and DICOM User Identity Negotiation
(PS3.7 D.3.3.7, :mod:`engine.net.identity`) share these users, roles and
JWT keys: a user name and password, or a bearer token (JWT), name an
:class:`Identity` whose roles are among :data:`ROLES`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, import_key

from engine.config import is_loopback

AUTH_KEYS = ("anonymous", "jwt_key", "jwks", "jwt_algorithms", "issuer", "audience",
             "roles_claim", "users")  # fmt: skip
ROLES = ("read", "write", "delete", "replicate", "admin")
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                         "ES256", "ES384", "ES512", "EdDSA")  # fmt: skip
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1  # 16 MiB, ~50 ms: costly to guess offline
SCRYPT_MAXMEM = 64 << 20
DEFAULT_ALGORITHMS = ("RS256", "ES256")
VERIFIED_LOGINS = 256  # logins remembered once verified (VerifiedLogins)


# -- passwords --------------------------------------------------------------------


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64) for the ``[auth.users.*] password`` key."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=SCRYPT_MAXMEM)  # fmt: skip
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches a :func:`hash_password` string (constant-time compare)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt, validate=True),
                             n=int(n), r=int(r), p=int(p), maxmem=SCRYPT_MAXMEM,
                             dklen=len(want))  # fmt: skip
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, want)


@functools.cache
def _decoy_hash() -> str:
    return hash_password(os.urandom(16).hex())


# -- settings ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class User:
    name: str
    password_hash: str = field(repr=False)  # never in a log line
    roles: frozenset[str]


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """The checked ``[auth]`` table; :attr:`keys` is None when bearer tokens are off."""

    anonymous: bool = True
    keys: Any = None  # a joserfc Key or KeySet
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    issuer: str | None = None
    audience: str | None = None
    roles_claim: str = "scope"
    users: Mapping[str, User] = field(default_factory=dict)


def _import_public_pem(data: bytes) -> Any:
    problems = []
    for kty in ("RSA", "EC", "OKP"):  # an explicit type: joserfc warns about guessing it
        try:
            return import_key(data, kty)
        except (JoseError, ValueError, TypeError) as exc:
            problems.append(f"{kty}: {exc}")
    raise ValueError("not an RSA, EC or OKP public key in PEM (" + "; ".join(problems) + ")")


def _load_keys(table: Mapping[str, Any]) -> Any:
    if table.get("jwt_key"):
        with open(table["jwt_key"], "rb") as f:
            key = _import_public_pem(f.read())
        if key.is_private:
            raise ValueError("auth.jwt_key must be a public key (the identity provider's)")
        return key
    if table.get("jwks"):
        with open(table["jwks"], "rb") as f:
            return KeySet.import_key_set(json.load(f))
    return None


def auth_settings(table: Mapping[str, Any] | None, host: str) -> AuthSettings:
    """Check the ``[auth]`` table for a server listening on `host`.

    Raises
    ------
    ValueError
        An unknown key, an unusable key file, a symmetric or "none" algorithm,
        a role that does not exist, or anonymous access left on by default
        while listening on an address other than loopback.
    """
    t = dict(table or {})
    unknown = set(t) - set(AUTH_KEYS)
    if unknown:
        raise ValueError(f"[auth]: unknown keys {sorted(unknown)}")
    algorithms = tuple(t.get("jwt_algorithms", DEFAULT_ALGORITHMS))
    bad = [a for a in algorithms if a not in ASYMMETRIC_ALGORITHMS]
    if bad:
        raise ValueError(f"auth.jwt_algorithms: {bad} not allowed; use {ASYMMETRIC_ALGORITHMS}")
    users = {}
    for name, u in dict(t.get("users", {})).items():
        if not isinstance(u, dict):
            raise ValueError(f"[auth.users.{name}] must be a table with password and roles")
        roles = frozenset(u.get("roles", ()))
        if not isinstance(u.get("password"), str) or not u["password"].startswith("scrypt$"):
            raise ValueError(f"[auth.users.{name}]: password must be a `pacs hash-password` hash")
        if roles - set(ROLES):
            raise ValueError(f"[auth.users.{name}]: roles must be among {ROLES}")
        users[name] = User(name, u["password"], roles)
    try:
        keys = _load_keys(t)
    except (OSError, ValueError, JoseError) as exc:
        raise ValueError(f"[auth]: cannot load the JWT key: {exc}") from exc
    configured = keys is not None or bool(users)
    anonymous = t.get("anonymous", not configured)
    if not isinstance(anonymous, bool):
        raise ValueError("auth.anonymous must be true or false")
    if anonymous and "anonymous" not in t and not is_loopback(host):
        raise ValueError(f"DICOMweb on {host} without authentication: configure [auth] "
                         "(users, jwt_key or jwks), or set auth.anonymous = true")  # fmt: skip
    return AuthSettings(anonymous, keys, algorithms, t.get("issuer"), t.get("audience"),
                        t.get("roles_claim", "scope"), users)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    roles: frozenset[str]


def _roles_of(value: Any) -> frozenset[str]:
    items = value.split() if isinstance(value, str) else value if isinstance(value, list) else []
    return frozenset(str(v) for v in items if str(v) in ROLES)


# -- checking credentials -----------------------------------------------------------


class BadCredentials(Exception):
    """A wrong password, an unknown user, an invalid token; the message may go to the peer."""


def check_token(settings: AuthSettings, token: str) -> Identity:
    """The identity a bearer JWT names, once its signature, expiry, issuer and audience hold.

    Raises
    ------
    BadCredentials
        Bearer tokens are off, or the token does not verify.
    """
    if settings.keys is None:
        raise BadCredentials("bearer tokens are not accepted here")
    try:
        decoded = jwt.decode(token, settings.keys, algorithms=list(settings.algorithms))
        claims: dict[str, Any] = {"exp": {"essential": True}}
        if settings.issuer:
            claims["iss"] = {"essential": True, "value": settings.issuer}
        if settings.audience:
            claims["aud"] = {"essential": True, "value": settings.audience}
        jwt.JWTClaimsRegistry(leeway=30, **claims).validate(decoded.claims)
    except (JoseError, ValueError, TypeError) as exc:
        raise BadCredentials(f"invalid bearer token: {type(exc).__name__}") from exc
    c = decoded.claims
    return Identity(str(c.get("sub", "token")), _roles_of(c.get(settings.roles_claim)))


class VerifiedLogins:
    """Logins verified lately, by a digest of what was presented (name and password): scrypt
    is slow on purpose, and a client sends the same login with every request or association.
    Shared by the threads of one server."""

    def __init__(self, size: int = VERIFIED_LOGINS) -> None:
        self._size = size
        self._known: OrderedDict[bytes, Identity] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, presented: bytes) -> Identity | None:
        with self._lock:
            return self._known.get(hashlib.sha256(presented).digest())

    def add(self, presented: bytes, identity: Identity) -> None:
        with self._lock:
            self._known[hashlib.sha256(presented).digest()] = identity
            if len(self._known) > self._size:
                self._known.popitem(last=False)


def check_password(settings: AuthSettings, name: str, password: str | None) -> Identity:
    """The user `name`, if `password` is theirs (None: a name alone, never enough).

    scrypt runs for an unknown name too: the time taken must not tell which
    names exist. Slow on purpose (about 50 ms): callers cache what verified.

    Raises
    ------
    BadCredentials
        Unknown user or wrong password.
    """
    user = settings.users.get(name)
    stored = user.password_hash if user else _decoy_hash()
    ok = verify_password(password or "", stored)
    if not (password is not None and user and ok):
        raise BadCredentials("wrong user name or password")
    return Identity(name, user.roles)
