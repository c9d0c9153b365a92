"""Named crash points of the write path, installed in a server's processes from the environment.

``ENGINE_TEST_CRASH_POINT`` names the point, ``ENGINE_TEST_CRASH_AT`` the
hit (1-based, counted per process) at which the process kills itself.
The points inside the storage layer are those of :mod:`tests._helpers`;
``before_response`` is added here: the store returned (durable and
indexed) and the C-STORE response has not left yet.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from tests._helpers import CRASH_POINTS, _die, _install_crash_point

SERVER_CRASH_POINTS = (*CRASH_POINTS[1:], "before_response")
HOOK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_hook")


def _install_before_response(at: int) -> None:
    from engine.archive import Archive

    hits = [0]
    lock = threading.Lock()
    original = Archive.store

    def store(self: Any, *args: Any, **kw: Any) -> Any:
        result = original(self, *args, **kw)
        with lock:
            hits[0] += 1
            due = hits[0] == at
        if due:
            _die()
        return result

    Archive.store = store  # type: ignore[method-assign]


def install_fsync_eio(at: int) -> None:
    """Make the `at`-th fdatasync of this process fail with EIO (once)."""
    import errno

    from engine.storage import _io

    hits = [0]
    lock = threading.Lock()
    real = _io.fdatasync

    def fdatasync(fd: int) -> None:
        with lock:
            hits[0] += 1
            due = hits[0] == at
        if due:
            raise OSError(errno.EIO, "Input/output error (injected by the test)")
        real(fd)

    _io.fdatasync = fdatasync  # type: ignore[assignment]


def install_from_env() -> None:
    point = os.environ["ENGINE_TEST_CRASH_POINT"]
    at = int(os.environ.get("ENGINE_TEST_CRASH_AT", "1"))
    if point == "before_response":
        _install_before_response(at)
    else:
        _install_crash_point(point, at)


def crash_env(point: str, at: int) -> dict[str, str]:
    """Environment for a server whose workers die at `point`, the `at`-th time."""
    assert point in SERVER_CRASH_POINTS, point
    return {"ENGINE_TEST_CRASH_POINT": point, "ENGINE_TEST_CRASH_AT": str(at)}
