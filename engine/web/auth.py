"""DICOMweb authentication (bearer JWT, HTTP basic), authorisation by role, audit of requests.

The ``[auth]`` table::

    [auth]
    anonymous = false                     # see below
    jwt_key = "/etc/pacs/idp-public.pem"  # a PEM public key; or
    jwks = "/etc/pacs/idp-jwks.json"      # a JWKS file (keys picked by "kid")
    jwt_algorithms = ["RS256", "ES256"]   # the only algorithms accepted (never "none", never HS*)
    issuer = "https://idp.example.org"    # "iss" must be this
    audience = "pacs"                     # "aud" must contain this
    roles_claim = "scope"                 # space-separated string or list: read, write, delete

    [auth.users.alice]                    # HTTP basic
    password = "scrypt$16384$8$1$..."     # from `pacs hash-password`
    roles = ["read", "write"]

Roles: ``read`` for QIDO-RS, WADO-RS and WADO-URI (GET), ``write`` for
STOW-RS (POST), ``delete`` for DELETE. No credentials and anonymous off: 401
with a ``WWW-Authenticate`` challenge per configured scheme; bad credentials:
401; a valid identity without the role: 403; all as problem+json, and all
audited (User Authentication, Security Alert).

Anonymous access (every role) is the default only when no method is
configured *and* the server listens on loopback; listening on any other
address without a method refuses to start unless ``anonymous = true`` says so.

Algorithm confusion (an HS256 token "signed" with the RSA public key) and
``alg=none`` fail because only the configured asymmetric algorithms are
accepted and the keys are public keys: joserfc refuses to use them for HMAC.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, import_key
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import audit
from engine.errors import AuditError
from engine.net.settings import is_loopback
from engine.web.errors import problem_body

log = logging.getLogger("engine.web")
AUTH_KEYS = ("anonymous", "jwt_key", "jwks", "jwt_algorithms", "issuer", "audience",
             "roles_claim", "users")  # fmt: skip
ROLES = ("read", "write", "delete")
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                         "ES256", "ES384", "ES512", "EdDSA")  # fmt: skip
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1  # 16 MiB, ~50 ms: costly to guess offline
SCRYPT_MAXMEM = 64 << 20
VERIFIED_CACHE_SIZE = 256  # basic credentials verified lately (scrypt is slow on purpose)
REALM = 'realm="pacs"'
DEFAULT_ALGORITHMS = ("RS256", "ES256")


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


# -- who is asking ------------------------------------------------------------------


class Refused(Exception):
    """Not authenticated (401) or not allowed (403); the message goes to the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    roles: frozenset[str]


def _roles_of(value: Any) -> frozenset[str]:
    items = value.split() if isinstance(value, str) else value if isinstance(value, list) else []
    return frozenset(str(v) for v in items if str(v) in ROLES)


class Authenticator:
    """Checks an Authorization header against the settings; remembers verified basic logins."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._verified: OrderedDict[bytes, Identity] = OrderedDict()

    def challenges(self) -> list[str]:
        s = self.settings
        out = [f"Bearer {REALM}"] if s.keys is not None else []
        return [*out, f"Basic {REALM}"] if s.users else out

    async def identify(self, header: str | None) -> Identity:
        if not header:
            if self.settings.anonymous:
                return Identity("anonymous", frozenset(ROLES))
            raise Refused(401, "authentication required")
        scheme, _, credentials = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and self.settings.keys is not None:
            return self._bearer(credentials.strip())
        if scheme == "basic" and self.settings.users:
            return await self._basic(credentials.strip())
        raise Refused(401, f"the {scheme or 'empty'} authentication scheme is not accepted here")

    def _bearer(self, token: str) -> Identity:
        s = self.settings
        try:
            decoded = jwt.decode(token, s.keys, algorithms=list(s.algorithms))
            claims: dict[str, Any] = {"exp": {"essential": True}}
            if s.issuer:
                claims["iss"] = {"essential": True, "value": s.issuer}
            if s.audience:
                claims["aud"] = {"essential": True, "value": s.audience}
            jwt.JWTClaimsRegistry(leeway=30, **claims).validate(decoded.claims)
        except (JoseError, ValueError, TypeError) as exc:
            raise Refused(401, f"invalid bearer token: {type(exc).__name__}") from exc
        c = decoded.claims
        return Identity(str(c.get("sub", "token")), _roles_of(c.get(s.roles_claim)))

    async def _basic(self, credentials: str) -> Identity:
        key = hashlib.sha256(credentials.encode()).digest()
        known = self._verified.get(key)
        if known is not None:
            return known
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (ValueError, binascii.Error) as exc:
            raise Refused(401, "malformed basic credentials") from exc
        name, sep, password = decoded.partition(":")
        user = self.settings.users.get(name)
        # scrypt also for an unknown user: the answer's timing must not tell which names exist
        stored = user.password_hash if user else _decoy_hash()
        ok = await run_in_threadpool(verify_password, password, stored)
        if not (sep and user and ok):
            raise Refused(401, "wrong user name or password")
        identity = Identity(name, user.roles)
        self._verified[key] = identity
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return identity


# -- the middleware ----------------------------------------------------------------


def _required_role(method: str) -> str:
    # any other method (PUT, PATCH...) needs write: nothing is reachable by an unlisted verb
    return {"GET": "read", "HEAD": "read", "POST": "write", "DELETE": "delete"}.get(method, "write")


def _event(method: str, path: str) -> audit.Event:
    if method == "POST":
        return audit.Event.INSTANCES_TRANSFERRED
    if method == "DELETE":
        return audit.Event.INSTANCES_DELETED
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if last in ("studies", "series", "instances") and "/wado" not in path:
        return audit.Event.QUERY  # QIDO-RS: a collection
    return audit.Event.INSTANCES_ACCESSED


def _study_of(path: str, query: bytes) -> str | None:
    parts = path.split("/")
    if "studies" in parts and parts.index("studies") + 1 < len(parts):
        return parts[parts.index("studies") + 1] or None
    for pair in query.decode("latin-1").split("&"):
        key, _, value = pair.partition("=")
        if key in ("studyUID", "StudyInstanceUID"):
            return value or None
    return None


class AuthMiddleware:
    """Authenticates and authorises each request, then audits it with its outcome.

    An audit record that cannot be written turns the response into a 503:
    nothing is answered that the trail did not record.
    """

    def __init__(self, app: ASGIApp, settings: AuthSettings) -> None:
        self.app = app
        self.auth = Authenticator(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":  # CORS preflight
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        client = scope.get("client")
        address = client[0] if client else None
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        event = _event(method, path)
        study = _study_of(path, scope.get("query_string", b""))
        try:
            who = await self.auth.identify(header)
            role = _required_role(method)
            if role not in who.roles:
                raise Refused(403, f"{who.name} lacks the {role} role")
        except Refused as exc:
            kind = audit.Event.USER_AUTHENTICATION
            if exc.status == 403:
                kind = audit.Event.SECURITY_ALERT
            await self._refuse(send, exc, kind, address, path, method)
            return
        scope.setdefault("state", {})["audit_user"] = who.name  # per-instance records (STOW-RS)
        audited = _AuditedSend(send, event, who.name, address, study, method, path)
        try:
            await self.app(scope, receive, audited)
        except Exception:  # an unexpected error: the 500 goes out further up, audit it here
            if not audited.started:
                with contextlib.suppress(AuditError):  # logged by the trail
                    audit.emit(event, audit.SERIOUS_FAILURE, user=who.name, address=address,
                               study=study, method=method, path=path, status=500)  # fmt: skip
            raise

    async def _refuse(self, send: Send, exc: Refused, kind: audit.Event, address: str | None,
                      path: str, method: str) -> None:  # fmt: skip
        log.warning("%s %s from %s -> %d: %s", method, path, address, exc.status, exc.detail)
        audit.emit_refusal(kind, user=None, address=address, description=exc.detail,
                           method=method, path=path)  # fmt: skip
        headers = [(b"www-authenticate", c.encode()) for c in self.auth.challenges()]
        title = "Unauthorized" if exc.status == 401 else "Forbidden"
        await _send_problem(send, exc.status, title, exc.detail,
                            headers if exc.status == 401 else [])  # fmt: skip


class _AuditedSend:
    """The ASGI send of one request: audits it when its status is known (response start)."""

    def __init__(self, send: Send, event: audit.Event, user: str, address: str | None,
                 study: str | None, method: str, path: str) -> None:  # fmt: skip
        self.send, self.event, self.user, self.address = send, event, user, address
        self.study, self.method, self.path = study, method, path
        self.started = self.failed = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            status = int(message["status"])
            outcome = audit.SUCCESS if status < 400 else audit.MINOR_FAILURE
            try:
                audit.emit(self.event, outcome, user=self.user, address=self.address,
                           study=self.study, method=self.method, path=self.path,
                           status=status)  # fmt: skip
            except AuditError as exc:
                self.failed = True  # nothing goes out that the trail did not record
                await _send_problem(self.send, 503, "Audit trail unavailable", str(exc), [])
                return
        if not self.failed:
            await self.send(message)


async def _send_problem(send: Send, status: int, title: str, detail: str,
                        headers: list[tuple[bytes, bytes]]) -> None:  # fmt: skip
    body = problem_body(status, title, detail)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()), *headers]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
