"""pacs-engine: a performance-first DICOM archive engine.

The public API is :func:`open_archive` and :class:`Archive` (see engine.archive)
plus the exceptions of :mod:`engine.errors`. ``import engine`` stays light:
the archive, and with it pydicom, LMDB and the native extension, load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.errors import (
    ArchiveClosedError,
    ArchiveLockedError,
    CorruptRecordError,
    DuplicateInstanceError,
    EngineError,
    FormatVersionError,
    IndexFailureError,
    InvalidInstanceError,
    InvalidQueryError,
    InvalidUIDError,
    MalformedDicomError,
    MissingAttributeError,
    NotDicomError,
    NotFoundError,
    StorageFullError,
    StorageIOError,
    UnsupportedTransferSyntaxError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from engine.archive import Archive, StoreResult, open_archive
    from engine.config import Config

__all__ = [
    "Archive",
    "ArchiveClosedError",
    "ArchiveLockedError",
    "Config",
    "CorruptRecordError",
    "DuplicateInstanceError",
    "EngineError",
    "FormatVersionError",
    "IndexFailureError",
    "InvalidInstanceError",
    "InvalidQueryError",
    "InvalidUIDError",
    "MalformedDicomError",
    "MissingAttributeError",
    "NotDicomError",
    "NotFoundError",
    "StorageFullError",
    "StorageIOError",
    "StoreResult",
    "UnsupportedTransferSyntaxError",
    "__version__",
    "open_archive",
]

_LAZY = {
    "Archive": "engine.archive",
    "StoreResult": "engine.archive",
    "open_archive": "engine.archive",
    "Config": "engine.config",
}


def __getattr__(name: str) -> Any:  # PEP 562: load the archive on first use
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
