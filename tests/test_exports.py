"""The public API of ``import engine``: pinned, and light to import."""

from __future__ import annotations

import json
import subprocess
import sys

import engine
from tests._helpers import ROOT

EXPORTS = [
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


def test_all_is_pinned_and_sorted() -> None:
    assert engine.__all__ == EXPORTS
    assert engine.__all__ == sorted(engine.__all__)


def test_every_export_resolves() -> None:
    for name in engine.__all__:
        assert getattr(engine, name) is not None, name
    assert isinstance(engine.__version__, str)
    assert issubclass(engine.StorageFullError, engine.StorageIOError)
    assert issubclass(engine.NotDicomError, engine.InvalidInstanceError)
    for name in EXPORTS:
        obj = getattr(engine, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, engine.EngineError), name


def test_unknown_attribute_raises_attribute_error() -> None:
    try:
        engine.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("engine.no_such_name resolved")


def _modules_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nimport json\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, cwd=ROOT, check=True)
    loaded: list[str] = json.loads(done.stdout)
    return loaded


def test_import_engine_stays_light() -> None:
    loaded = _modules_after("import engine")
    for heavy in ("pynetdicom", "starlette", "engine._native", "lmdb", "pydicom", "engine.archive"):
        assert not any(m == heavy or m.startswith(heavy + ".") for m in loaded), heavy


def test_opening_the_archive_api_does_not_pull_in_the_network_layers() -> None:
    loaded = _modules_after("import engine\nengine.open_archive")
    assert "engine.archive" in loaded
    for heavy in ("pynetdicom", "starlette", "engine.net", "engine.web", "engine.cli"):
        assert not any(m == heavy or m.startswith(heavy + ".") for m in loaded), heavy
