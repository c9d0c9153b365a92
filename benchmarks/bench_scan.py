"""Scanning an instance: native vs pure Python vs pydicom.dcmread reading the same attributes.

Run: ``pytest benchmarks/bench_scan.py --benchmark-group-by=param:payload``.
The pydicom baseline parses the header with ``stop_before_pixels=True`` and then
reads every SCANNED attribute (its values are converted lazily).
"""

from __future__ import annotations

import importlib
import io
import os
from collections.abc import Callable
from typing import Any

import pydicom
import pytest

from engine.attributes import SCANNED
from engine.scan.result import ScanResult

KEYWORDS = [a.keyword for a in SCANNED]
BACKENDS = ["native", "python", "pydicom"]
PAYLOADS = ["ct_slice", "multiframe", "encapsulated_multiframe"]


def _pydicom_scan(buffer: bytes) -> dict[str, Any]:
    ds = pydicom.dcmread(io.BytesIO(buffer), stop_before_pixels=True)
    return {k: ds[k].value for k in KEYWORDS if k in ds}


def _scanner(name: str) -> Callable[[bytes], Any]:
    if name == "pydicom":
        return _pydicom_scan
    if name == "native":
        if os.environ.get("ENGINE_PURE_PYTHON"):
            pytest.skip("ENGINE_PURE_PYTHON is set")
        try:
            return importlib.import_module("engine._native").scan  # type: ignore[no-any-return]
        except ImportError:
            pytest.skip("engine._native is not built")
    from engine.scan._scan_py import scan

    return scan


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_scan(
    benchmark: Any, request: pytest.FixtureRequest, speedups: Any, backend: str, payload: str
) -> None:
    buffer: bytes = request.getfixturevalue(payload)
    scan = _scanner(backend)
    result = benchmark(scan, buffer)
    if isinstance(result, ScanResult):
        attributes: dict[str, Any] = result.attributes
        assert result.pixel is not None
        assert result.pixel.end == len(buffer)
        assert len(result.pixel.frames) == (500 if payload == "encapsulated_multiframe" else 0)
    else:
        attributes = result
    assert str(attributes["PatientName"]) == "Doe^Jane"
    assert attributes["Rows"] == (128 if payload == "multiframe" else 512)
    assert str(attributes["SOPInstanceUID"]).endswith(".1.1.42")
    if benchmark.stats is None:  # --benchmark-disable: ran once, nothing timed
        return
    mean = benchmark.stats.stats.mean
    role = {"native": "ours", "python": "engine pure-Python scan", "pydicom": "pydicom dcmread"}
    speedups.record(f"scan {payload} (native)", role[backend], benchmark.stats.stats.median)
    benchmark.extra_info.update(
        instances_per_s=round(1 / mean),
        MB_per_s=round(len(buffer) / mean / 1e6, 1),
        size_bytes=len(buffer),
        backend=backend,
    )
