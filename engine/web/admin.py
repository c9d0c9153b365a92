"""The admin endpoints beside DICOMweb (the ``admin`` role guards them): sends, queues, replica.

::

    POST /admin/v1/send   {"uid": UID, "to": AE_TITLE, "parallel": 1}
        Send a patient (its PatientID), a study, a series or an instance to a
        [remotes] entry now, each instance in its stored transfer syntax:
        what ``pacs send`` does. Answered once the send is over: 200 with
        {"to", "requested", "sent", "refused": [{"uid", "reason"}],
        "unsent", "seconds"} when the destination took every instance; 502
        problem+json with the same members when it refused some or could not
        be reached (``error`` says why); 404 when nothing is stored under the
        UID; 400 for a bad body or a destination that is not a [remotes]
        entry with host and port. Unlike the command line, it takes no ad hoc
        ``AET@host:port`` or STOW-RS URL: only the destinations the site
        configured can be reached through the HTTP port.
    GET /admin/v1/queues
        Each [[forward]] rule's queue, as ``pacs queue --json``: behind, lag,
        rate, retrying, dead, sent, refused, awaiting commitment, last error.
    GET /admin/v1/queues/{rule}/dead
        Its dead letters (``pacs queue RULE --dead --json``).
    POST /admin/v1/queues/{rule}/retry, POST /admin/v1/queues/{rule}/purge
        Send its dead letters again, or forget them: {"rule", "count"}.
    GET /admin/v1/replica
        A replica's primary and lag (as ``pacs stats``); 404 on a primary.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine import audit
from engine.errors import NotFoundError
from engine.forward import manual
from engine.forward.queue import ForwardQueue
from engine.forward.status import dead_rows, forward_states, queue_rows
from engine.index import replica as role
from engine.net.settings import server_settings
from engine.web.context import WebContext
from engine.web.errors import BadRequestError, problem_body

PREFIX = "/admin/v1"
PARALLEL_MAX = 8  # associations one request may open


def _body(raw: bytes) -> tuple[str, str, int]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"the body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequestError('the body must be a JSON object: {"uid": ..., "to": ...}')
    unknown = set(doc) - {"uid", "to", "parallel"}
    if unknown:
        raise BadRequestError(f"unknown members {sorted(unknown)}; known: uid, to, parallel")
    uid, to, parallel = doc.get("uid"), doc.get("to"), doc.get("parallel", 1)
    if not isinstance(uid, str) or not uid:
        raise BadRequestError("uid: a Study, Series or SOP Instance UID, or a PatientID")
    if not isinstance(to, str) or not to:
        raise BadRequestError("to: the AE title of a [remotes] entry")
    if not isinstance(parallel, int) or isinstance(parallel, bool) or not (
        1 <= parallel <= PARALLEL_MAX
    ):
        raise BadRequestError(f"parallel: a whole number from 1 to {PARALLEL_MAX}")
    return uid, to, parallel


def _send_now(ctx: WebContext, uid: str, to: str, parallel: int) -> dict[str, Any]:
    archive = ctx.archive
    try:
        sender = manual.sender(archive, server_settings(archive.config), to, parallel,
                               ad_hoc=False)  # fmt: skip
    except manual.SendTargetError as exc:
        raise BadRequestError(str(exc)) from None
    try:
        plan = manual.plan(archive, uid)
        t0 = time.perf_counter()
        d = manual.send(sender, plan)
    finally:
        sender.close()
    return {"to": to, "requested": len(plan.matches), "sent": len(d.sent),
            "refused": [{"uid": u, "reason": why} for u, why in d.refused],
            "unsent": len(d.unsent), "error": d.error or None,
            "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip


async def send(request: Request) -> Response:
    ctx: WebContext = request.app.state.ctx
    uid, to, parallel = _body(await request.body())
    result = await ctx.call(_send_now, ctx, uid, to, parallel)
    # beside the request's own record: what went where (the body is not in the path)
    outcome = audit.SUCCESS if result["sent"] == result["requested"] else audit.MINOR_FAILURE
    audit.emit(audit.Event.INSTANCES_TRANSFERRED, outcome,
               user=request.scope.get("state", {}).get("audit_user"),
               address=request.client.host if request.client else None,
               description=f"sent to {to}", selector=uid, instances=result["sent"])  # fmt: skip
    if result["sent"] == result["requested"]:
        return _json(result)
    detail = (f"{to} took {result['sent']} of {result['requested']} instances: "
              f"{len(result['refused'])} refused, {result['unsent']} not sent"
              + (f" ({result['error']})" if result["error"] else ""))  # fmt: skip
    return Response(problem_body(502, "Send incomplete", detail, **result), status_code=502,
                    media_type="application/problem+json")  # fmt: skip


def _json(doc: Any) -> Response:
    return Response(orjson.dumps(doc), media_type="application/json")


def _rule_queue(ctx: WebContext, name: str) -> ForwardQueue:
    names = [r.name for r, _ in forward_states(ctx.archive)]
    if name not in names:
        raise NotFoundError(f"no [[forward]] rule named {name!r}; the rules: {names}")
    return ForwardQueue(ctx.archive.env, name)


async def queues(request: Request) -> Response:
    ctx: WebContext = request.app.state.ctx
    return _json(queue_rows(await ctx.call(forward_states, ctx.archive)))


async def dead(request: Request) -> Response:
    ctx: WebContext = request.app.state.ctx
    queue = await ctx.call(_rule_queue, ctx, request.path_params["rule"])
    return _json(dead_rows(await ctx.call(queue.dead_letters)))


async def retry(request: Request) -> Response:
    ctx: WebContext = request.app.state.ctx
    queue = await ctx.call(_rule_queue, ctx, request.path_params["rule"])
    return _json({"rule": queue.name, "count": await ctx.call(queue.retry_dead)})


async def purge(request: Request) -> Response:
    ctx: WebContext = request.app.state.ctx
    queue = await ctx.call(_rule_queue, ctx, request.path_params["rule"])
    return _json({"rule": queue.name, "count": await ctx.call(queue.purge_dead)})


async def replica(request: Request) -> Response:
    ctx: WebContext = request.app.state.ctx

    def read() -> dict[str, Any] | None:
        with ctx.archive.env.read() as txn:
            return role.summary(txn, ctx.archive.env.db)

    doc = await ctx.call(read)
    if doc is None:
        raise NotFoundError("this archive is a primary: it follows no one")
    return _json(doc)


def routes() -> list[Route]:
    return [Route(f"{PREFIX}/send", send, methods=["POST"]),
            Route(f"{PREFIX}/queues", queues, methods=["GET"]),
            Route(f"{PREFIX}/queues/{{rule}}/dead", dead, methods=["GET"]),
            Route(f"{PREFIX}/queues/{{rule}}/retry", retry, methods=["POST"]),
            Route(f"{PREFIX}/queues/{{rule}}/purge", purge, methods=["POST"]),
            Route(f"{PREFIX}/replica", replica, methods=["GET"])]  # fmt: skip
