"""The DICOMweb ASGI application: :func:`create_app` over one :class:`~engine.archive.Archive`.

Routes live under ``web.base_path`` (``/dicom-web``): QIDO-RS
(:mod:`engine.web.qido`), WADO-RS (:mod:`engine.web.wado`, rendered and
thumbnails in :mod:`engine.web.render`), STOW-RS (:mod:`engine.web.stow`), DELETE
(:mod:`engine.web.delete`); WADO-URI (:mod:`engine.web.uri`) answers at ``/wado`` as
well, the primary's replication endpoints at ``/replication/v1``
(:mod:`engine.web.replication`) and the admin endpoints at ``/admin/v1``
(:mod:`engine.web.admin`). Every error goes through
:mod:`engine.web.errors` and comes out as an RFC 9457 problem.

Middleware, outermost first: CORS when ``web.cors_origins`` is set (for a
viewer served from another origin), then authentication, authorisation and
the audit of every request (:mod:`engine.web.auth`, the ``[auth]`` table),
then gzip for JSON bodies of at least ``web.gzip_min_bytes`` (DICOM, frames
and images are never gzipped: they are binary or compressed already, and gzip
would cost more than it saves).

Starlette with uvicorn, JSON with orjson: the handlers spend their time in
the archive (LMDB lookups, positioned reads, DICOM JSON encoding), not in
the framework; starlette adds tens of microseconds a request.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.archive import Archive
from engine.credentials import AuthSettings, auth_settings
from engine.errors import EngineError
from engine.web import admin, delete, qido, render, replication, stow, uri, wado
from engine.web.auth import AuthMiddleware
from engine.web.context import WebContext
from engine.web.errors import problem, problem_body
from engine.web.limits import ConcurrencyLimit
from engine.web.settings import WebSettings

log = logging.getLogger("engine.web")
UNEXPECTED_DETAIL = "an unexpected error occurred; the server log has the details"
GZIP_LEVEL = 5  # JSON metadata: most of level 9's ratio at a third of its time
_NOT_GZIPPED = (*DEFAULT_EXCLUDED_CONTENT_TYPES, "multipart/*", "application/dicom",
                "application/octet-stream")  # fmt: skip


async def _engine_error(request: Request, exc: Exception) -> Response:
    return problem(exc, f"{request.method} {request.url.path}")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    titles = {404: "Not Found", 405: "Method Not Allowed"}
    detail = exc.detail if exc.status_code != 404 else f"no resource at {request.url.path}"
    log.info("%s %s -> %d", request.method, request.url.path, exc.status_code)
    return Response(problem_body(exc.status_code, titles.get(exc.status_code, "Error"), detail),
                    status_code=exc.status_code, media_type="application/problem+json",
                    headers=exc.headers)  # fmt: skip


async def _unexpected(request: Request, exc: Exception) -> Response:
    # the traceback goes to the log only: an unexpected error's text may show internals
    log.error("%s %s -> 500: unexpected %s", request.method, request.url.path,
              type(exc).__name__, exc_info=exc)  # fmt: skip
    return Response(problem_body(500, "Internal error", UNEXPECTED_DETAIL),
                    status_code=500, media_type="application/problem+json")  # fmt: skip


def _prefixed(prefix: str, routes: list[Route]) -> list[Route]:
    return [Route(prefix + r.path, r.endpoint, methods=list(r.methods or ())) for r in routes]


def create_app(
    archive: Archive, settings: WebSettings | None = None, auth: AuthSettings | None = None
) -> Starlette:
    """The DICOMweb application over `archive`.

    Parameters
    ----------
    archive
        The archive to serve; the caller opens and closes it.
    settings
        The web settings; default: the ``[web]`` table of ``archive.config.extra``.
    auth
        Who may do what; default: the ``[auth]`` table, checked as for loopback.

    Returns
    -------
    starlette.applications.Starlette
        An ASGI application (serve it with uvicorn, or test it with httpx).
    """
    if settings is None:
        settings = WebSettings.from_mapping(archive.config.extra.get("web"))
    base = settings.base_path.rstrip("/")
    # QIDO before STOW: GET and POST /studies share a path, the method picks the route
    api = [*qido.routes(), *stow.routes(), *wado.routes(), *render.routes(), *uri.routes(),
           *delete.routes()]
    middleware = []
    if settings.cors_origins:
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"], allow_headers=["*"],
            expose_headers=["Content-Location", "Warning", "Content-Type"], max_age=600,
        ))  # fmt: skip
    if auth is None:
        auth = auth_settings(archive.config.extra.get("auth"), "127.0.0.1")
    middleware.append(Middleware(AuthMiddleware, settings=auth))
    middleware.append(Middleware(GZipMiddleware, minimum_size=settings.gzip_min_bytes,
                                 compresslevel=GZIP_LEVEL,
                                 exclude_content_types=_NOT_GZIPPED))  # fmt: skip
    handlers: dict[Any, Any] = {EngineError: _engine_error, HTTPException: _http_error,
                                Exception: _unexpected}  # fmt: skip
    # outermost, so that a refused request costs nothing of the stack below
    middleware.insert(0, Middleware(ConcurrencyLimit, limit=settings.max_concurrent_requests))
    routes = [*_prefixed(base, api), *uri.routes(), *replication.routes(), *admin.routes()]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)
    app.state.ctx = WebContext(archive, settings)
    return app
