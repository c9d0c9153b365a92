"""The reliability suite: every test reports its figures at the end of the run.

``figure("acked-lost", 0)`` records one figure for the calling test; the
terminal summary prints them all, so a CI log shows what each test measured
(kills, crash states explored, peak memory, ...). Larger counts run with
``ENGINE_LONG_TESTS=1``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

LONG = bool(os.environ.get("ENGINE_LONG_TESTS"))
_FIGURES: list[tuple[str, str, Any]] = []


def scaled(short: int, long: int) -> int:
    """`short` in the test command, `long` under ENGINE_LONG_TESTS=1."""
    return long if LONG else short


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str, Any], None]:
    """Record a named figure of this test for the run's summary."""

    def record(name: str, value: Any) -> None:
        _FIGURES.append((request.node.nodeid, name, value))
        request.node.user_properties.append((name, value))

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("reliability figures")
    for nodeid, name, value in _FIGURES:
        terminalreporter.write_line(f"{nodeid}: {name} = {value}")
