"""The HTTP status table: every engine error a DICOMweb client can meet, and what it becomes.

One table, :data:`STATUS_TABLE`, maps an exception class to its HTTP status,
its RFC 9457 problem title and, for STOW-RS, the Failure Reason (0008,1197)
of a refused part (PS3.18 10.5.3, with the C-STORE statuses of PS3.4 B.2.3:
A7xx out of resources, A9xx data set does not match SOP class, Cxxx cannot
understand, 0110 processing failure). The most specific class of an error's
MRO that the table names wins. :func:`problem` builds the body; every
translation is logged here, once.

The request errors below are the web layer's own (a bad Accept header is not
an archive error); they are :class:`~engine.errors.EngineError` subclasses so
that one hierarchy still holds.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import orjson
from starlette.responses import Response

from engine import errors as E

log = logging.getLogger("engine.web")


class WebRequestError(E.EngineError, ValueError):
    """A request the web layer cannot serve as asked; the subclass says which status."""


class BadRequestError(WebRequestError):
    """A malformed parameter, path, header or body (400)."""


class NotAcceptableError(WebRequestError):
    """No representation the client accepts can be produced (406)."""


class PayloadTooLargeError(WebRequestError):
    """A STOW-RS part or body larger than the configured limit (413)."""


class UnsupportedMediaTypeError(WebRequestError):
    """The request body's media type is not one this resource takes (415)."""


class StudyMismatchError(E.InvalidInstanceError):
    """A STOW-RS part whose Study Instance UID is not the study of the URL (PS3.18 10.5.1)."""


class Translation(NamedTuple):
    status: int
    title: str
    failure_reason: int  # STOW-RS FailureReason (0008,1197) for a refused part


# Most specific first is not needed: the MRO lookup finds the closest class.
STATUS_TABLE: dict[type[BaseException], Translation] = {
    BadRequestError: Translation(400, "Bad Request", 0xC000),
    NotAcceptableError: Translation(406, "Not Acceptable", 0x0110),
    PayloadTooLargeError: Translation(413, "Content Too Large", 0xA700),
    UnsupportedMediaTypeError: Translation(415, "Unsupported Media Type", 0xC000),
    StudyMismatchError: Translation(409, "Study mismatch", 0xA900),
    E.InvalidQueryError: Translation(400, "Invalid query", 0xC000),
    E.InvalidInstanceError: Translation(400, "Invalid instance", 0xC000),
    E.NotDicomError: Translation(415, "Not DICOM", 0xC000),
    E.MalformedDicomError: Translation(400, "Malformed DICOM", 0xC000),
    E.MissingAttributeError: Translation(400, "Missing attribute", 0xA900),
    E.InvalidUIDError: Translation(400, "Invalid UID", 0xA900),
    E.UnsupportedTransferSyntaxError: Translation(406, "Transfer syntax not supported", 0xC122),
    E.DuplicateInstanceError: Translation(409, "Duplicate instance", 0xA900),
    E.NotFoundError: Translation(404, "Not Found", 0x0110),
    E.ReadOnlyError: Translation(403, "Read-only replica", 0x0124),
    E.StorageFullError: Translation(507, "Insufficient Storage", 0xA700),
    E.StorageIOError: Translation(503, "Storage unavailable", 0xA700),
    E.IndexFailureError: Translation(503, "Index unavailable", 0xA700),
    E.ArchiveClosedError: Translation(503, "Archive closed", 0xA700),
    E.ArchiveLockedError: Translation(503, "Archive busy", 0xA700),
    E.CorruptRecordError: Translation(500, "Corrupt record", 0x0110),
    E.FormatVersionError: Translation(500, "Unreadable format version", 0x0110),
    E.EngineError: Translation(500, "Archive error", 0x0110),
}


def translate(exc: BaseException) -> Translation:
    """The table row for `exc`: the first class of its MRO the table names."""
    for cls in type(exc).__mro__:
        row = STATUS_TABLE.get(cls)
        if row is not None:
            return row
    return Translation(500, "Internal error", 0x0110)


def problem_body(status: int, title: str, detail: str, **extra: Any) -> bytes:
    """An RFC 9457 problem document, as bytes."""
    doc = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return orjson.dumps(doc)


def problem(exc: BaseException, where: str = "") -> Response:
    """The problem+json response for `exc`, logged (warning for 4xx, error for 5xx)."""
    row = translate(exc)
    detail = str(exc) or type(exc).__name__
    level = logging.ERROR if row.status >= 500 else logging.INFO
    log.log(level, "%s -> %d %s: %s", where or "request", row.status, type(exc).__name__, detail)
    return Response(
        problem_body(row.status, row.title, detail),
        status_code=row.status,
        media_type="application/problem+json",
    )


def failure_reason(exc: BaseException, where: str = "") -> int:
    """The STOW-RS FailureReason for a refused part, logged like :func:`problem`."""
    row = translate(exc)
    log.info("%s -> failure reason %04X %s: %s", where or "part", row.failure_reason,
             type(exc).__name__, exc)  # fmt: skip
    return row.failure_reason
