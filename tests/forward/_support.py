"""What the forward tests share: waiting, ``pacs queue``, series written to files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pydicom

from engine.synthetic import ct_series, encode
from tests._helpers import ROOT
from tests.net._support import Server

WAIT_S = 90.0


def wait_for(what: str, done: Any, server: Server | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n" + (
            server.log()[-4000:] if server else ""
        )
        time.sleep(0.2)


def pacs(*args: str) -> subprocess.CompletedProcess[str]:
    """The `pacs` command of this checkout (never one that happens to be on PATH)."""
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip


def queue_state(server: Server, *args: str) -> Any:
    out = pacs("--config", str(server.config_path), "-A", str(server.archive), "queue", *args,
                "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def write_series(folder: Path, seed: int, n: int, *, implicit: bool = False) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, ds in enumerate(ct_series(seed, n, rows=32, columns=32, implicit=implicit)):
        files.append(folder / f"{seed}-{i}.dcm")
        files[-1].write_bytes(encode(ds))
    return files


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
