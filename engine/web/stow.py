"""STOW-RS (PS3.18 10.5): store instances sent as multipart/related application/dicom.

``POST /studies`` and ``POST /studies/{study}``. The body is parsed as it
arrives, one part at a time (:class:`~engine.web.multipart.MultipartReader`;
one part is held in memory, never the body). Each part is scanned for its
UIDs, checked against the study of the URL, and appended with
:meth:`Archive.submit`; appends are waited for in groups, and every one of
them is durable (group commit) before the response goes out.

Every stored instance gets its own audit record, as a C-STORE does (DICOM
Instances Transferred, with its SOP Instance UID); one that cannot be
recorded is answered as failed (0xA700), though it stays stored.

Response (PS3.18 10.5.3, Table 10.5.3-1): ``application/dicom+json`` with
RetrieveURL (0008,1190) of the study when there is one, ReferencedSOPSequence
(0008,1199) of the stored instances (class, instance, RetrieveURL) and
FailedSOPSequence (0008,1198) of the refused parts with their FailureReason
(0008,1197) from :data:`engine.web.errors.STATUS_TABLE`. Status: 200 when
every part is stored, 202 when some are, 409 when none is. A body that is
not multipart/related of application/dicom is a 415 before anything is read;
a malformed multipart body is a 400 (parts before the damage stay stored and
acknowledged in the problem's ``stored`` member).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine import audit
from engine.archive import Archive
from engine.errors import AuditError, EngineError
from engine.scan import scan
from engine.web.context import WebContext, instance_url, path_uid, study_url
from engine.web.errors import (
    BadRequestError,
    StudyMismatchError,
    UnsupportedMediaTypeError,
    WebRequestError,
    failure_reason,
    problem,
    problem_body,
    translate,
)
from engine.web.multipart import MultipartReader, Part, parse_media_type

log = logging.getLogger("engine.web")
WAIT_EVERY = 64  # parts appended before waiting for their group commit
DICOM = "application/dicom"
PROCESSING_FAILURE = 0x0110  # PS3.7 C.5: FailureReason of a part we failed on unexpectedly


class StowResult:
    """The referenced and failed instances of one STOW-RS request."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.stored: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        self.studies: set[str] = set()

    def ok(self, sop_class: str, sop: str, study: str, series: str) -> None:
        self.studies.add(study)
        self.stored.append({
            "00081150": {"vr": "UI", "Value": [sop_class]},
            "00081155": {"vr": "UI", "Value": [sop]},
            "00081190": {"vr": "UR", "Value": [instance_url(self.base, study, series, sop)]},
        })  # fmt: skip

    def fail(self, sop_class: str, sop: str, reason: int) -> None:
        item: dict[str, Any] = {
            "00081150": {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"},
            "00081155": {"vr": "UI", "Value": [sop]} if sop else {"vr": "UI"},
            "00081197": {"vr": "US", "Value": [reason]},
        }
        self.failed.append(item)

    def body(self, study: str | None) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        only = study or (next(iter(self.studies)) if len(self.studies) == 1 else None)
        if only:
            doc["00081190"] = {"vr": "UR", "Value": [study_url(self.base, only)]}
        if self.failed:
            doc["00081198"] = {"vr": "SQ", "Value": self.failed}
        if self.stored:
            doc["00081199"] = {"vr": "SQ", "Value": self.stored}
        return doc

    @property
    def status(self) -> int:
        if not self.failed:
            return 200
        return 202 if self.stored else 409


UID_KEYS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID")
Who = tuple[str, str | None]  # the audited user and address of the request


def _uids(body: bytes) -> dict[str, str]:
    r = scan(body)
    return {k: str(r.attributes.get(k, "")) for k in UID_KEYS}


def _audit_part(who: Who, uids: dict[str, str], outcome: int = audit.SUCCESS,
                why: str = "") -> None:  # fmt: skip
    """The audit record of one part: what a C-STORE of it would have written."""
    audit.emit(audit.Event.INSTANCES_TRANSFERRED, outcome, user=who[0], address=who[1],
               patient=uids["PatientID"] or None, study=uids["StudyInstanceUID"] or None,
               description=why, sop_instance_uid=uids["SOPInstanceUID"],
               service="STOW-RS")  # fmt: skip


def _failed(result: StowResult, who: Who, uids: dict[str, str], exc: Exception) -> None:
    """Fail one part: its FailureReason in the answer, its audit record (best effort)."""
    if isinstance(exc, EngineError):
        result.fail(uids["SOPClassUID"], uids["SOPInstanceUID"], failure_reason(exc, "STOW-RS"))
    else:  # not the engine's: a bug must fail one part, not the parts stored
        _unexpected(result, uids, exc)
    if not isinstance(exc, AuditError):
        with contextlib.suppress(AuditError):  # logged by the trail
            _audit_part(who, uids, audit.SERIOUS_FAILURE, str(exc))


def _submit_part(archive: Archive, part: Part, study: str | None) -> tuple[dict[str, str], Any]:
    """Scan, check and append one part; raise InvalidInstanceError if it is refused."""
    media = part.content_type.type
    if media != DICOM:
        raise UnsupportedMediaTypeError(f"a part of type {media}: only {DICOM} parts are stored")
    uids = _uids(part.body)
    if study is not None and uids["StudyInstanceUID"] != study:
        raise StudyMismatchError(f"StudyInstanceUID {uids['StudyInstanceUID'] or '(none)'} is not "
                             f"the study of the URL ({study})")  # fmt: skip
    return uids, archive.submit(part.body)


def _wait_all(archive: Archive, pending: list[tuple[dict[str, str], Any]],
              result: StowResult, who: Who) -> None:  # fmt: skip
    for uids, p in pending:
        try:
            archive.wait(p)
            _audit_part(who, uids)  # an AuditError: stored, but not acknowledged
        except Exception as exc:  # noqa: BLE001 -- one part fails, not the request
            _failed(result, who, uids, exc)
        else:
            result.ok(uids["SOPClassUID"], uids["SOPInstanceUID"], uids["StudyInstanceUID"],
                      uids["SeriesInstanceUID"])  # fmt: skip
    pending.clear()


async def store(request: Request) -> Response:
    """POST /studies[/{study}]: store every part, durable before the response (10.5)."""
    ctx: WebContext = request.app.state.ctx
    study = path_uid(request, "study") if "study" in request.path_params else None
    ctype = parse_media_type(request.headers.get("content-type", ""))
    inner = ctype.params.get("type", DICOM).lower()
    if ctype.type != "multipart/related" or inner != DICOM:
        raise UnsupportedMediaTypeError(
            f'STOW-RS takes multipart/related; type="{DICOM}", not {ctype.type}'
            + (f" of {inner}" if ctype.type == "multipart/related" else "")
        )
    reader = MultipartReader(ctype.params.get("boundary", ""), ctx.settings.max_part_bytes)
    result = StowResult(ctx.base_url(request))
    who = (getattr(request.state, "audit_user", "unknown"),
           request.client.host if request.client else None)  # fmt: skip
    pending: list[tuple[dict[str, str], Any]] = []
    parts = 0
    try:
        async for part in reader.parts(request.stream()):
            parts += 1
            try:
                pending.append(await ctx.call(_submit_part, ctx.archive, part, study))
            except Exception as exc:  # noqa: BLE001 -- a 500 would drop the parts stored already
                _failed(result, who, _safe_uids(part.body), exc)
            if len(pending) >= WAIT_EVERY:
                await ctx.call(_wait_all, ctx.archive, pending, result, who)
    except WebRequestError as exc:
        await ctx.call(_wait_all, ctx.archive, pending, result, who)  # stored is durable
        resp = problem(exc, "STOW-RS body")
        row = translate(exc)
        stored = [item["00081155"]["Value"][0] for item in result.stored]
        resp.body = problem_body(row.status, row.title, str(exc), stored=stored)
        resp.headers["content-length"] = str(len(resp.body))
        return resp
    await ctx.call(_wait_all, ctx.archive, pending, result, who)
    if parts == 0:
        raise BadRequestError("the multipart body holds no part")
    return Response(orjson.dumps(result.body(study)), status_code=result.status,
                    media_type="application/dicom+json")  # fmt: skip


def _unexpected(result: StowResult, uids: dict[str, str], exc: Exception) -> None:
    """Fail one part on an error that is not the engine's: 0110, traceback to the log."""
    log.error("STOW-RS: part %s failed unexpectedly -> failure reason %04X",
              uids["SOPInstanceUID"] or "(no UID)", PROCESSING_FAILURE, exc_info=exc)  # fmt: skip
    result.fail(uids["SOPClassUID"], uids["SOPInstanceUID"], PROCESSING_FAILURE)


def _safe_uids(body: bytes) -> dict[str, str]:
    try:
        return _uids(body)
    except Exception:  # noqa: BLE001 -- only for the failure report: no UIDs is an answer
        return dict.fromkeys(UID_KEYS, "")


def routes() -> list[Route]:
    """The STOW-RS routes, relative to the DICOMweb base path."""
    return [
        Route("/studies", store, methods=["POST"]),
        Route("/studies/{study}", store, methods=["POST"]),
    ]
