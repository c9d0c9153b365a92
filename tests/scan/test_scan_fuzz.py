"""A bounded atheris run over the native scanner, and replays of what fuzzing found.

ENGINE_FUZZ_SECONDS sets the run time (default 20). A crash input is copied to
tests/scan/regressions/ so that it is replayed by every later run, in both
backends, once the bug is fixed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import native_module
from tests.corpus import real_files
from tests.scan import _fuzz_target
from tests.scan._support import ScanFn, outcome, scan_function

HERE = Path(__file__).parent
REGRESSIONS = HERE / "regressions"
ROOT = HERE.parent.parent


def _regressions() -> list[Path]:
    return sorted(p for p in REGRESSIONS.iterdir() if p.is_file() and p.suffix != ".md")


def _seed(directory: Path) -> None:
    directory.mkdir()
    small = [p for p in real_files() if p.stat().st_size <= 4096][:12]
    for i, path in enumerate(small):
        (directory / f"seed-{i}").write_bytes(b"\0" + path.read_bytes())
    for path in _regressions():
        shutil.copy(path, directory / path.name)


@pytest.mark.slow
def test_fuzzing_the_native_scanner_finds_no_crash(tmp_path: Path) -> None:
    if native_module() is None:
        pytest.skip("engine._native is not built (or ENGINE_PURE_PYTHON is set)")
    import atheris  # noqa: F401  -- part of the test install: missing is a failure, not a skip
    seconds = int(os.environ.get("ENGINE_FUZZ_SECONDS", "20"))
    corpus, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    _seed(corpus)
    artifacts.mkdir()
    command = [
        sys.executable,
        str(HERE / "_fuzz_target.py"),
        str(corpus),
        f"-max_total_time={seconds}",
        "-max_len=8192",
        "-timeout=10",
        "-rss_limit_mb=4096",
        f"-artifact_prefix={artifacts}/",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 300)
    found = sorted(artifacts.iterdir())
    for crash in found:
        digest = hashlib.sha1(crash.read_bytes()).hexdigest()[:16]
        shutil.copy(crash, REGRESSIONS / f"fuzz-{digest}")
    assert proc.returncode == 0 and not found, f"kept in {REGRESSIONS}:\n{proc.stderr[-4000:]}"
    assert "Done" in proc.stderr, proc.stderr[-4000:]


@pytest.mark.parametrize("path", _regressions(), ids=lambda p: p.name)
def test_regression_input_replays_cleanly(backend: str, path: Path) -> None:
    buffer, syntax = _fuzz_target.fuzz_case(path.read_bytes())
    scan: ScanFn = scan_function(backend)
    result = outcome(scan, buffer, syntax)  # an exception other than an engine error fails
    if backend == "native":
        assert result == outcome(scan_function("python"), buffer, syntax)
