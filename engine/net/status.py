"""The one table from engine errors to DIMSE statuses, and the translation that logs.

Every exception that reaches a peer goes through :func:`failure`: it picks
the status of the first matching class in :data:`STATUS_TABLE` (most
specific first), puts the reason in an Error Comment, and logs it. Anything
not in the table is a bug of ours: it becomes :data:`UNEXPECTED` with a
generic comment, and its traceback goes to the log, never to the peer.

Status values are those of PS3.4 Annex B.2.3 (Storage), C.4.1.1.4 (C-FIND),
C.4.2.1.5 (C-MOVE), C.4.3.1.4 (C-GET) and the general statuses of PS3.7
Annex C.
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset

from engine.errors import (
    ArchiveClosedError,
    ArchiveLockedError,
    AuditError,
    CorruptRecordError,
    DuplicateInstanceError,
    FormatVersionError,
    IndexFailureError,
    InvalidInstanceError,
    InvalidQueryError,
    InvalidUIDError,
    MalformedDicomError,
    MissingAttributeError,
    NotDicomError,
    NotFoundError,
    ReadOnlyError,
    StorageFullError,
    StorageIOError,
    UnsupportedTransferSyntaxError,
)

log = logging.getLogger("engine.net")

SUCCESS = 0x0000
PENDING = 0xFF00  # PS3.4 C.4.1.1.4: a match follows
CANCEL = 0xFE00  # PS3.4 C.4.1.1.4 / C.4.2.1.5 / C.4.3.1.4: matching or sub-operations stopped
SUB_OPERATIONS_WARNING = 0xB000  # PS3.4 C.4.2.1.5: one or more sub-operations failed
REFUSED_NOT_AUTHORISED = 0x0124  # PS3.7 C.5: the peer may not use this service
OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3: Refused, out of resources
OUT_OF_RESOURCES_MATCHES = 0xA701  # PS3.4 C.4.2.1.5: unable to calculate number of matches
OUT_OF_RESOURCES_SUBOPS = 0xA702  # PS3.4 C.4.2.1.5: unable to perform sub-operations
MOVE_DESTINATION_UNKNOWN = 0xA801  # PS3.4 C.4.2.1.5
DOES_NOT_MATCH_SOP_CLASS = 0xA900  # PS3.4 B.2.3 data set / C.4.1.1.4 identifier
CANNOT_UNDERSTAND = 0xC000  # PS3.4 B.2.3: Error, cannot understand
UNEXPECTED = 0xC001  # Cxxx, implementation-defined (PS3.4 B.2.3): our bug, see the log
PROCESSING_FAILURE = 0x0110  # PS3.7 C.5: the SCP failed while doing the work
DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C.5: with duplicate_policy = "reject"
UNRECOGNIZED_OPERATION = 0x0211  # PS3.7 C.5.5: a command this association does not serve

ERROR_COMMENT_MAX_CHARS = 64  # PS3.7 E.1: Error Comment (0000,0902) is LO

# Most specific first: the first class the exception is an instance of wins.
STATUS_TABLE: tuple[tuple[type[BaseException], int, str], ...] = (
    (StorageFullError, OUT_OF_RESOURCES, "storage full"),
    (AuditError, OUT_OF_RESOURCES, "audit trail unavailable"),  # refused: retry once it is fixed
    (StorageIOError, PROCESSING_FAILURE, "storage I/O error"),
    (IndexFailureError, PROCESSING_FAILURE, "index failure"),
    (ArchiveClosedError, OUT_OF_RESOURCES, "archive shutting down, retry"),
    (ArchiveLockedError, OUT_OF_RESOURCES, "archive busy, retry"),
    (CorruptRecordError, PROCESSING_FAILURE, "stored instance is corrupt"),
    (FormatVersionError, PROCESSING_FAILURE, "unreadable archive format version"),
    (DuplicateInstanceError, DUPLICATE_SOP_INSTANCE, "duplicate SOP instance"),
    (ReadOnlyError, REFUSED_NOT_AUTHORISED, "read-only replica"),
    (MissingAttributeError, DOES_NOT_MATCH_SOP_CLASS, "missing attribute"),
    (InvalidUIDError, DOES_NOT_MATCH_SOP_CLASS, "invalid UID"),
    (UnsupportedTransferSyntaxError, CANNOT_UNDERSTAND, "unsupported transfer syntax"),
    (MalformedDicomError, CANNOT_UNDERSTAND, "malformed dataset"),
    (NotDicomError, CANNOT_UNDERSTAND, "not DICOM"),
    (InvalidInstanceError, CANNOT_UNDERSTAND, "invalid instance"),
    (InvalidQueryError, DOES_NOT_MATCH_SOP_CLASS, "invalid identifier"),
    (NotFoundError, PROCESSING_FAILURE, "not found"),
)


def status_for(exc: BaseException) -> tuple[int, str]:
    """The (status, short reason) the table gives `exc`; (UNEXPECTED, ...) if none."""
    for cls, status, reason in STATUS_TABLE:
        if isinstance(exc, cls):
            return status, reason
    return UNEXPECTED, "internal error, see the server log"


def error_comment(text: str) -> str:
    """`text` as an Error Comment: LO, at most 64 characters, no backslash or control characters."""
    return " ".join(text.replace("\\", "/").split())[:ERROR_COMMENT_MAX_CHARS]


def status_dataset(status: int, comment: str | None = None) -> Dataset:
    """A status Dataset pynetdicom sends as is: Status, plus an Error Comment if given."""
    ds = Dataset()
    ds.Status = status
    if comment:
        ds.ErrorComment = error_comment(comment)
    return ds


def failure_status(exc: BaseException, what: str) -> tuple[int, str]:
    """Translate `exc`, raised while doing `what`, into (status, Error Comment), and log it.

    Parameters
    ----------
    exc
        The exception; engine errors map through :data:`STATUS_TABLE`.
    what
        What was being done, for the log (``"C-STORE from CT1 of 1.2.3"``).

    Returns
    -------
    tuple of (int, str)
        The status and its comment (at most 64 characters, never a traceback).
    """
    status, reason = status_for(exc)
    if status == UNEXPECTED:
        log.error("%s failed unexpectedly (0x%04X)", what, status, exc_info=exc)
        return status, error_comment(reason)
    log.warning("%s failed: 0x%04X %s: %s", what, status, type(exc).__name__, exc)
    return status, error_comment(str(exc) or reason)


def failure(exc: BaseException, what: str) -> Dataset:
    """Translate `exc`, raised while doing `what`, into a status Dataset, and log it.

    Parameters
    ----------
    exc
        The exception; engine errors map through :data:`STATUS_TABLE`.
    what
        What was being done, for the log (``"C-STORE from CT1 of 1.2.3"``).

    Returns
    -------
    pydicom.dataset.Dataset
        Status and Error Comment, ready to be returned by a pynetdicom handler.
    """
    return status_dataset(*failure_status(exc, what))
