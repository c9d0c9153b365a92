"""What every DICOMweb handler shares: the archive, the settings, URLs and path checks.

URLs handed out (PS3.18 8.6: RetrieveURL, BulkDataURI, Content-Location)
are absolute, built by :meth:`WebContext.base_url` in this order:

1. ``web.public_base_url`` when configured: the right answer behind a
   reverse proxy, whatever Host the proxy forwards;
2. ``X-Forwarded-Proto`` / ``X-Forwarded-Host`` / ``X-Forwarded-Prefix``,
   only when ``web.trust_forwarded`` is on (a client must not be able to
   make us hand out URLs pointing elsewhere);
3. the request's scheme and Host. A Host without a port (some clients send
   one for any port) gets the port this server listens on, unless that is
   the scheme's default: a client that reached us directly did so on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from engine.archive import Archive
from engine.ingest import validate_uid
from engine.web.errors import BadRequestError
from engine.web.settings import WebSettings

T = TypeVar("T")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class WebContext:
    """The archive and settings one application serves."""

    archive: Archive
    settings: WebSettings

    def base_url(self, request: Request) -> str:
        """Absolute URL of the DICOMweb root for this request (see the module docstring)."""
        s = self.settings
        if s.public_base_url:
            return s.public_base_url
        headers = request.headers
        scheme = request.url.scheme
        host = headers.get("host", "")
        prefix = request.scope.get("root_path", "")
        if s.trust_forwarded:
            scheme = headers.get("x-forwarded-proto", scheme).split(",")[0].strip() or scheme
            host = headers.get("x-forwarded-host", host).split(",")[0].strip() or host
            prefix = headers.get("x-forwarded-prefix", "").rstrip("/") + prefix
        elif host and not _has_port(host):
            server = request.scope.get("server")
            if server and server[1] and server[1] != _DEFAULT_PORTS.get(scheme):
                host = f"{host}:{server[1]}"
        if not host:
            server = request.scope.get("server") or ("localhost", None)
            host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
        return f"{scheme}://{host}{prefix}{s.base_path}"

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking archive call (LMDB, pread, fsync) off the event loop."""
        return await run_in_threadpool(fn, *args, **kwargs)


def _has_port(host: str) -> bool:
    if host.startswith("["):  # IPv6 literal: "[::1]:8042"
        return "]:" in host
    return ":" in host


def non_negative(name: str, text: str) -> int:
    """A query parameter that must be a whole number of at least 0 (limit, offset, start)."""
    if not text.isdigit():
        raise BadRequestError(f"{name}={text!r}: expected a non-negative integer")
    return int(text)


def path_uid(request: Request, name: str) -> str:
    """A UID from the URL path, validated (PS3.5 9.1) before it reaches the index."""
    value = str(request.path_params[name])
    try:
        return validate_uid(name, value)
    except ValueError as exc:
        raise BadRequestError(f"{name} in the URL: {exc}") from exc


def study_url(base: str, study: str) -> str:
    return f"{base}/studies/{study}"


def series_url(base: str, study: str, series: str) -> str:
    return f"{base}/studies/{study}/series/{series}"


def instance_url(base: str, study: str, series: str, sop: str) -> str:
    return f"{base}/studies/{study}/series/{series}/instances/{sop}"
