"""DELETE of a study, series or instance over DICOMweb.

PS3.18 defines no delete transaction; archives that offer one (dcm4chee-arc,
Orthanc's REST API) use the WADO-RS resource paths, and so do we::

    DELETE /studies/{study}
    DELETE /studies/{study}/series/{series}
    DELETE /studies/{study}/series/{series}/instances/{instance}

The target is resolved exactly as a WADO-RS retrieve resolves it (404 when
nothing is there, so a series UID under the wrong study deletes nothing);
then every instance under it gets a durable tombstone before the response
(:meth:`engine.archive.Archive.delete`). The ``delete`` role guards it
(:mod:`engine.web.auth`). The answer is 200 with the number deleted.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.archive import Archive
from engine.web.context import WebContext
from engine.web.wado import _target, resolve


def _delete(archive: Archive, study: str, series: str | None, sop: str | None) -> int:
    resolve(archive, study, series, sop)  # 404 unless the path names stored instances
    if sop:
        return archive.delete(sop_instance_uid=sop)
    if series:
        return archive.delete(series_instance_uid=series)
    return archive.delete(study_instance_uid=study)


async def delete(request: Request) -> Response:
    ctx: WebContext = request.app.state.ctx
    study, series, sop = _target(request)
    deleted = await ctx.call(_delete, ctx.archive, study, series, sop)
    body: dict[str, object] = {"deleted": deleted, "StudyInstanceUID": study}
    if series:
        body["SeriesInstanceUID"] = series
    if sop:
        body["SOPInstanceUID"] = sop
    return Response(orjson.dumps(body), media_type="application/json")


def routes() -> list[Route]:
    """The DELETE routes, relative to the DICOMweb base path."""
    paths = ("/studies/{study}", "/studies/{study}/series/{series}",
             "/studies/{study}/series/{series}/instances/{instance}")  # fmt: skip
    return [Route(path, delete, methods=["DELETE"]) for path in paths]
