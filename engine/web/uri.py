"""WADO-URI (PS3.18 9): ``GET /wado?requestType=WADO&studyUID=&seriesUID=&objectUID=``.

Parameters (PS3.18 9.1.2 / 9.1.3):

- ``requestType=WADO``, ``studyUID``, ``seriesUID``, ``objectUID``: required;
  the three UIDs must name one stored instance (404 otherwise);
- ``contentType``: ``application/dicom`` (the instance, in
  ``transferSyntax`` if given: as stored, or Explicit/Implicit VR Little
  Endian by conversion), ``image/jpeg`` (the default, PS3.18 9.1.3.3.2) or
  ``image/png``: a rendered frame;
- ``frameNumber``, ``windowCenter``/``windowWidth``, ``rows``/``columns``
  and ``imageQuality`` for rendered images.

The route is served at ``/wado`` and under the DICOMweb base path.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.ingest import validate_uid
from engine.web.context import WebContext
from engine.web.errors import BadRequestError, NotAcceptableError
from engine.web.render import RENDER_TYPES, RenderOptions, _render
from engine.web.wado import UNCOMPRESSED_TARGETS, resolve, transcode

DICOM = "application/dicom"


def _uid(params: dict[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise BadRequestError(f"WADO-URI needs {name} (PS3.18 9.1.2)")
    try:
        return validate_uid(name, value)
    except ValueError as exc:
        raise BadRequestError(str(exc)) from exc


async def wado(request: Request) -> Response:
    """One instance by its three UIDs, as DICOM or as a rendered image (PS3.18 9)."""
    ctx: WebContext = request.app.state.ctx
    params = dict(request.query_params)
    if params.get("requestType") != "WADO":
        raise BadRequestError("requestType must be WADO (PS3.18 9.1.2.1)")
    study, series, sop = (_uid(params, n) for n in ("studyUID", "seriesUID", "objectUID"))
    content_types = [
        c.strip().split(";")[0] for c in params.get("contentType", "image/jpeg").split(",")
    ]
    found = await ctx.call(resolve, ctx.archive, study, series, sop)
    for content_type in content_types:
        if content_type == DICOM:
            stored = str(found[0].get("TransferSyntaxUID", ""))
            target = params.get("transferSyntax", stored)
            if target not in (stored, *UNCOMPRESSED_TARGETS):
                raise NotAcceptableError(
                    f"transferSyntax {target}: this instance is stored as {stored}; "
                    "ask for it or an uncompressed syntax"
                )
            data = await ctx.call(ctx.archive.get, sop)
            if target != stored:
                data = await ctx.call(transcode, data, target)
            return Response(data, media_type=DICOM)
        if content_type in RENDER_TYPES:
            render_params = {"contentType": content_type}
            if "windowCenter" in params or "windowWidth" in params:
                render_params["window"] = (
                    f"{params.get('windowCenter', '')},{params.get('windowWidth', '')}"
                )
            if "rows" in params or "columns" in params:
                rows = params.get("rows") or params.get("columns") or ""
                render_params["viewport"] = f"{rows},{params.get('columns') or rows}"
            if "imageQuality" in params:
                render_params["quality"] = params["imageQuality"]
            opts = RenderOptions(render_params, None, thumbnail=False)
            number_text = params.get("frameNumber", "1")
            if not number_text.isdigit() or int(number_text) < 1:
                raise BadRequestError(f"frameNumber={number_text!r}: frames are numbered from 1")
            body = await ctx.call(_render, ctx.archive, sop, int(number_text), opts)
            return Response(body, media_type=content_type)
    raise NotAcceptableError(f"contentType {params.get('contentType')}: WADO-URI serves "
                             f"{DICOM}, {', '.join(RENDER_TYPES)}")  # fmt: skip


def routes() -> list[Route]:
    """The WADO-URI route (mounted at the root and under the base path)."""
    return [Route("/wado", wado, methods=["GET"])]
