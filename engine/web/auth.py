"""DICOMweb authentication (bearer JWT, HTTP basic), authorisation by role, audit of requests.

Users, keys and their checks are :mod:`engine.credentials`' (shared with DICOM
User Identity Negotiation); this module reads them from HTTP headers.

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
STOW-RS (POST), ``delete`` for DELETE, ``replicate`` for a replica's requests
to ``/replication/`` (the whole log; refusals audited, successes not: a
replica polls many times a second), ``admin`` for ``/admin/`` (sending
studies to other nodes, :mod:`engine.web.admin`). No credentials and anonymous off: 401
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
import logging

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import audit
from engine.credentials import (
    ROLES,
    AuthSettings,
    BadCredentials,
    Identity,
    VerifiedLogins,
    check_password,
    check_token,
)
from engine.errors import AuditError
from engine.web.errors import problem_body

log = logging.getLogger("engine.web")
REALM = 'realm="pacs"'


# -- who is asking ------------------------------------------------------------------


class Refused(Exception):
    """Not authenticated (401) or not allowed (403); the message goes to the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class Authenticator:
    """Checks an Authorization header against the settings; remembers verified basic logins."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._verified = VerifiedLogins()

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
        try:
            return check_token(self.settings, token)
        except BadCredentials as exc:
            raise Refused(401, str(exc)) from exc

    async def _basic(self, credentials: str) -> Identity:
        known = self._verified.get(credentials.encode())
        if known is not None:
            return known
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (ValueError, binascii.Error) as exc:
            raise Refused(401, "malformed basic credentials") from exc
        name, sep, password = decoded.partition(":")
        try:
            identity = await run_in_threadpool(check_password, self.settings, name,
                                               password if sep else None)  # fmt: skip
        except BadCredentials as exc:
            raise Refused(401, str(exc)) from exc
        self._verified.add(credentials.encode(), identity)
        return identity


# -- the middleware ----------------------------------------------------------------


REPLICATION_PREFIX = "/replication/"
ADMIN_PREFIX = "/admin/"


def _required_role(method: str, path: str) -> str:
    if path.startswith(REPLICATION_PREFIX):
        return "replicate"  # the whole log, deleted records included: a role of its own
    if path.startswith(ADMIN_PREFIX):
        return "admin"  # sends images to other nodes: not what a viewer's "read" allows
    # any other method (PUT, PATCH...) needs write: nothing is reachable by an unlisted verb
    return {"GET": "read", "HEAD": "read", "POST": "write", "DELETE": "delete"}.get(method, "write")


def _event(method: str, path: str) -> audit.Event:
    if path.startswith(ADMIN_PREFIX) and method in ("GET", "HEAD"):
        return audit.Event.QUERY  # the queues, the replica's state: no instance is read
    if method == "POST":  # STOW-RS, and the admin API's sends
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
            role = _required_role(method, path)
            if role not in who.roles:
                raise Refused(403, f"{who.name} lacks the {role} role")
        except Refused as exc:
            kind = audit.Event.USER_AUTHENTICATION
            if exc.status == 403:
                kind = audit.Event.SECURITY_ALERT
            await self._refuse(send, exc, kind, address, path, method)
            return
        scope.setdefault("state", {})["audit_user"] = who.name  # per-instance records (STOW-RS)
        if path.startswith(REPLICATION_PREFIX):
            # a replica polls many times a second: its requests are audited when refused
            # (above), not each time they succeed, as a database's log shipping is not
            await self.app(scope, receive, send)
            return
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
