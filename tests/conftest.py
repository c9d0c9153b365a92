"""Shared fixtures: backends, the real-file corpus, hypothesis profiles."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=100, deadline=None)
settings.register_profile(
    "ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "expensive", max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def native_module() -> ModuleType | None:
    """engine._native, or None when it is not built.

    The README's test command sets ENGINE_REQUIRE_NATIVE=1: there a missing
    extension is a broken build, and fails instead of skipping.
    """
    if os.environ.get("ENGINE_PURE_PYTHON"):
        return None
    try:
        return importlib.import_module("engine._native")
    except ImportError:
        if os.environ.get("ENGINE_REQUIRE_NATIVE"):
            raise
        return None


@pytest.fixture(params=["native", "python"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend name in turn; native skips only when it is neither built nor required."""
    if request.param == "native" and native_module() is None:
        pytest.skip("engine._native is not built (or ENGINE_PURE_PYTHON is set)")
    return str(request.param)
