"""The primary's replication endpoints, beside DICOMweb (the ``replicate`` role guards them).

::

    GET /replication/v1/log?after=HEAD&wait=SECONDS
        {"now_ns", "head", "segments": [[id, end, sealed], ...]} (engine.replica.source);
        with `after`, answered once the change log moves past HEAD or after
        `wait` seconds (at most 30): a long poll, so an idle replica costs
        nothing and a busy one hears of a commit within POLL_S.
    GET /replication/v1/segments/{id}?start=OFFSET&length=BYTES
        application/octet-stream: the committed bytes of that span (fewer at
        the segment's committed end, none past it); 404 once compacted away.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.replica import source
from engine.web.context import WebContext, non_negative
from engine.web.errors import BadRequestError

PREFIX = "/replication/v1"
POLL_S = 0.01  # how often a waiting request looks at the change log's head
WAIT_MAX_S = 30.0


def _number(request: Request, name: str, default: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        if default is None:
            raise BadRequestError(f"the query parameter {name} is required")
        return default
    return non_negative(name, raw)


async def log(request: Request) -> Response:
    ctx: WebContext = request.app.state.ctx
    after = request.query_params.get("after")
    if after is not None:
        seen = _number(request, "after")
        deadline = time.monotonic() + min(float(_number(request, "wait", 10)), WAIT_MAX_S)
        while source.change_head(ctx.archive) <= seen and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
    state = await ctx.call(source.log_state, ctx.archive)
    return Response(orjson.dumps(state), media_type="application/json")


async def segment(request: Request) -> Response:
    ctx: WebContext = request.app.state.ctx
    try:
        seg_id = int(request.path_params["segment"])
    except ValueError:
        raise BadRequestError("a segment is named by its number") from None
    start = _number(request, "start")
    length = _number(request, "length", source.SPAN_MAX_BYTES)
    data = await ctx.call(source.read_span, ctx.archive, seg_id, start, length)
    return Response(data, media_type="application/octet-stream")


def routes() -> list[Route]:
    return [Route(f"{PREFIX}/log", log, methods=["GET"]),
            Route(f"{PREFIX}/segments/{{segment}}", segment, methods=["GET"])]  # fmt: skip
