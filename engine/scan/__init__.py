"""Find the indexed attributes in an encoded header without building a Dataset.

``scan(buffer, transfer_syntax=None)`` walks the top-level elements once and
returns a :class:`ScanResult`. ``BACKEND`` names the implementation in use:
the Cython one in ``engine._native`` when it is built, else the pure-Python
reference in ``_scan_py``. Set ``ENGINE_PURE_PYTHON=1`` to force the latter.
"""

import os

from engine.scan.result import PixelSpan, ScanResult, Value

if os.environ.get("ENGINE_PURE_PYTHON"):
    from engine.scan._scan_py import scan

    BACKEND = "python"
else:
    try:
        from engine._native import scan

        BACKEND = "native"
    except ImportError:
        from engine.scan._scan_py import scan

        BACKEND = "python"

__all__ = ["BACKEND", "PixelSpan", "ScanResult", "Value", "scan"]
