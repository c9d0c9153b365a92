"""The DIMSE status table: which status each engine error becomes."""

from __future__ import annotations

import pytest

from engine import errors as E
from engine.net.status import OUT_OF_RESOURCES, PROCESSING_FAILURE, UNEXPECTED, status_for


@pytest.mark.parametrize(("exc", "status", "reason"), [
    (E.CorruptRecordError("000001.seg", 4096, "bad checksum"), PROCESSING_FAILURE,
     "stored instance is corrupt"),
    (E.ArchiveLockedError("locked by pid 7"), OUT_OF_RESOURCES, "archive busy, retry"),
    (E.FormatVersionError("version 9"), PROCESSING_FAILURE, "unreadable archive format version"),
])  # fmt: skip
def test_status_for_corrupt_locked_and_format_version_errors(
    exc: BaseException, status: int, reason: str
) -> None:
    assert status_for(exc) == (status, reason)


def test_status_for_a_non_engine_error_is_unexpected() -> None:
    assert status_for(RuntimeError("x"))[0] == UNEXPECTED
