"""libFuzzer target (atheris): the native scanner against the Python one on any bytes.

Run by tests/scan/test_scan_fuzz.py as ``python _fuzz_target.py CORPUS_DIR -max_total_time=N``.
atheris cannot instrument the Cython extension (that would need it built with
``-fsanitize=fuzzer``), so coverage comes from the instrumented Python twin
and from engine.scan._common: inputs that reach new branches of the reference
walk are kept, and each is run through the native scanner too. A crash is an
exception that is not an engine error, the two backends disagreeing, or a
signal (segfault) in the extension.
"""

from __future__ import annotations

import sys

SYNTAXES = (
    None,
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
)


def fuzz_case(data: bytes) -> tuple[bytes, str | None]:
    """The (buffer, transfer_syntax) a fuzzer input stands for: the first byte picks the syntax."""
    if not data:
        return b"", None
    return data[1:], SYNTAXES[data[0] % len(SYNTAXES)]


def check(data: bytes) -> None:
    """Raise unless both backends give the same result or the same engine error."""
    from engine import _native
    from engine.errors import EngineError
    from engine.scan import _scan_py

    buffer, syntax = fuzz_case(data)
    outcomes = []
    for scan in (_native.scan, _scan_py.scan):
        try:
            outcomes.append(("ok", repr(scan(buffer, syntax))))
        except EngineError as exc:
            outcomes.append((type(exc).__name__, str(exc)))
    if outcomes[0] != outcomes[1]:
        raise AssertionError(f"backends disagree: {outcomes[0]!r} != {outcomes[1]!r}")


def main() -> None:
    import atheris

    with atheris.instrument_imports(include=["engine"]):
        import engine.scan._common
        import engine.scan._scan_py  # noqa: F401

    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
