#!/usr/bin/env bash
# Install everything the tests need (system packages included) and run the
# whole suite: lint, types, tests with the native extension, then the tests
# of every module with a native twin again in pure Python.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    # dcmtk: the real DICOM peers (storescu, findscu, getscu, movescu) of the network tests;
    # orthanc, orthanc-dicomweb: the archive benchmarks/ measure us against (bench_web,
    # compare.py, web_compare.py)
    $SUDO apt-get install -y -qq --no-install-recommends dcmtk orthanc orthanc-dicomweb \
        python3-venv >/dev/null
    # Debian starts Orthanc as a service (ports 4242, 8042); the benchmarks start their own
    if command -v systemctl >/dev/null 2>&1; then
        $SUDO systemctl disable --now orthanc >/dev/null 2>&1 || true
    fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# A missing extension is a broken build here, not a reason to skip.
.venv/bin/python -c "import engine._native" || { echo "engine._native did not build" >&2; exit 1; }

.venv/bin/ruff check engine tests benchmarks
.venv/bin/mypy engine

export TCP_NODELAY=1  # Debian's DCMTK waits 40 ms per message without it
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"
ENGINE_REQUIRE_NATIVE=1 .venv/bin/python -m pytest -q -p no:cacheprovider
# Every benchmark once, as a test of its own checks (timings are not asserted).
ENGINE_REQUIRE_NATIVE=1 .venv/bin/python -m pytest -q -p no:cacheprovider benchmarks --benchmark-disable
# The modules with a native twin (engine.scan), and the store path that uses
# them, once more with the extension switched off.
ENGINE_PURE_PYTHON=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/scan tests/test_archive.py tests/storage tests/test_frames.py
