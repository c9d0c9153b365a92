"""A bound on the HTTP requests one worker serves at once: the excess gets 503 and Retry-After.

Each request in flight holds memory (a STOW-RS part, a rendered frame) and a
thread of the archive's pool; past ``max_concurrent_requests`` a client is
better told to come back (RFC 9110 15.6.4, 10.2.3) than queued without
bound, the way a DICOM peer past ``max_associations`` gets an
A-ASSOCIATE-RJ "transient, local limit exceeded". The count is per worker
process, like the association limit.
"""

from __future__ import annotations

import logging
from typing import Any

from engine.web.errors import problem_body

log = logging.getLogger("engine.web")

RETRY_AFTER_S = 1  # what a refused client is told to wait before it tries again


class ConcurrencyLimit:
    """ASGI middleware: at most `limit` HTTP requests in flight; 503 problem+json beyond.

    Parameters
    ----------
    app
        The application it guards.
    limit
        Requests served at once (a response counts until its last byte is sent).
    """

    def __init__(self, app: Any, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"web.max_concurrent_requests must be at least 1, not {limit!r}")
        self.app = app
        self.limit = limit
        self.active = 0
        self.refused = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:  # one event loop: no lock needed around the count
            await self._refuse(scope, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1

    async def _refuse(self, scope: Any, send: Any) -> None:
        self.refused += 1
        if self.refused == 1 or self.refused % 100 == 0:
            log.warning("%s %s -> 503: %d requests in flight, limit %d (%d refused so far)",
                        scope.get("method"), scope.get("path"), self.active, self.limit,
                        self.refused)  # fmt: skip
        detail = (f"{self.active} requests in flight, the limit of this server; "
                  f"retry after {RETRY_AFTER_S} s")  # fmt: skip
        body = problem_body(503, "Service Unavailable", detail)
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(RETRY_AFTER_S).encode()),
        ]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
