"""Every exception the engine raises on purpose, in one hierarchy.

The network and web layers translate these into DIMSE statuses and HTTP
problems through one table each; nothing else should reach a peer.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class for every error the engine raises on purpose."""


# -- the input is bad ---------------------------------------------------------


class InvalidInstanceError(EngineError, ValueError):
    """The instance cannot be stored as given; nothing was written."""


class NotDicomError(InvalidInstanceError):
    """No DICOM header: neither a Part 10 file nor a dataset with a known transfer syntax."""


class MalformedDicomError(InvalidInstanceError):
    """The encoded bytes break PS3.5 framing at a known offset."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"malformed DICOM at byte {offset}: {reason}")
        self.offset, self.reason = offset, reason


class MissingAttributeError(InvalidInstanceError):
    """A Type 1 attribute the archive needs (a UID of the hierarchy) is absent or empty."""

    def __init__(self, keyword: str) -> None:
        super().__init__(f"required attribute {keyword} is missing or empty")
        self.keyword = keyword


class InvalidUIDError(InvalidInstanceError):
    """A UID breaks PS3.5 9.1: only digits and dots, no leading zeros, at most 64 characters."""

    def __init__(self, keyword: str, value: str, reason: str) -> None:
        super().__init__(f"{keyword} {value[:80]!r} is not a valid UID: {reason}")
        self.keyword, self.value, self.reason = keyword, value, reason


class UnsupportedTransferSyntaxError(InvalidInstanceError):
    """The transfer syntax is unknown, or cannot be decoded or converted here."""

    def __init__(self, uid: str, reason: str = "not supported") -> None:
        super().__init__(f"transfer syntax {uid!r}: {reason}")
        self.uid, self.reason = uid, reason


class DuplicateInstanceError(InvalidInstanceError):
    """The SOP Instance UID is stored already and the duplicate policy is ``reject``."""


class InvalidQueryError(EngineError, ValueError):
    """A query names an unknown level or attribute, or a value that cannot be matched."""


# -- the stored bytes are bad -------------------------------------------------


class CorruptRecordError(EngineError):
    """A record fails its checksum or framing; the bytes, not the disk, are bad."""

    def __init__(self, segment: str, offset: int, reason: str) -> None:
        super().__init__(f"{segment} @ {offset}: {reason}")
        self.segment, self.offset, self.reason = segment, offset, reason


class FormatVersionError(EngineError):
    """A segment or index was written by a format version this build cannot read."""


# -- the machine failed -------------------------------------------------------


class StorageIOError(EngineError, OSError):
    """A read, write or fsync failed; the instance was not acknowledged."""


class StorageFullError(StorageIOError):
    """The disk (or the index map) is full; free space and retry."""


class IndexFailureError(EngineError):
    """The LMDB index failed in a way that is not the caller's fault."""


# -- lookups ------------------------------------------------------------------


class NotFoundError(EngineError, KeyError):
    """No instance, series, study or patient with that identifier is stored."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the message
        return str(self.args[0]) if self.args else "not found"


class ArchiveClosedError(EngineError, RuntimeError):
    """The archive was closed; open it again to use it."""


class ArchiveLockedError(EngineError, RuntimeError):
    """Another process holds an exclusive lock that this operation needs."""


class ReadOnlyError(EngineError, PermissionError):
    """This archive is a read-only replica: stores and deletions go to its primary."""


class ReplicaRoleError(EngineError, ValueError):
    """This archive cannot (or can no longer) follow the primary it was given."""


class AuditError(StorageIOError):
    """The audit trail cannot be written; the request it would record is refused.

    Check that the ``[audit] file`` is writable and its disk not full.
    """
