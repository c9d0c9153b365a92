"""Fixtures of the scanner tests: the scan function of each backend."""

from __future__ import annotations

import pytest

from tests.conftest import native_module
from tests.scan._support import ScanFn, scan_function


@pytest.fixture
def scan(backend: str) -> ScanFn:
    """The scan function of the backend under test (imported explicitly, not via BACKEND)."""
    return scan_function(backend)


@pytest.fixture
def native_scan() -> ScanFn:
    """engine._native.scan; skips when the extension is not built (or ENGINE_PURE_PYTHON)."""
    if native_module() is None:
        pytest.skip("engine._native is not built (or ENGINE_PURE_PYTHON is set)")
    return scan_function("native")
