"""Type stub for engine._native, the Cython extension built from ext/_native.pyx."""

from engine.scan.result import ScanResult

def scan(buffer: bytes | bytearray | memoryview, transfer_syntax: str | None = None) -> ScanResult:
    """Native twin of engine.scan._scan_py.scan: same results, same exceptions."""
