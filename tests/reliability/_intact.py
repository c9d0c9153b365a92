"""Good instances stored before the abuse, and the checks that they survived it.

A test stores a handful of real and generated instances first (DCMTK
storescu, through the running server), throws its malformed input, then
stops the server and checks, on the archive itself: every good instance is
still there bit-exact, and ``pacs verify`` (the CLI, in a subprocess) is
clean.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import engine
from engine.synthetic import ct_series, encode
from tests._helpers import ROOT
from tests.net._support import storescu
from tests.reliability._raw import fd_count, peak_rss_kib, rss_kib

CLI_TIMEOUT_S = 300.0


def env() -> dict[str, str]:
    """The environment for a `pacs` subprocess: this worktree's engine first."""
    return dict(os.environ, PYTHONPATH=str(ROOT), TCP_NODELAY="1", COLUMNS="1000")


def pacs(*args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def good_files(folder: Path, seed: int, count: int = 8) -> dict[str, bytes]:
    """`count` generated CT slices written to `folder`; SOP Instance UID -> Part 10 bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, ds in enumerate(ct_series(seed, count, rows=32, columns=32)):
        data = encode(ds)
        (folder / f"good-{i}.dcm").write_bytes(data)
        out[str(ds.SOPInstanceUID)] = data
    return out


def store_good(port: int, folder: Path, seed: int, count: int = 8) -> dict[str, bytes]:
    """Store good instances through the server with DCMTK storescu; what was sent."""
    good = good_files(folder, seed, count)
    r = storescu(port, sorted(folder.glob("good-*.dcm")))
    assert r.returncode == 0, r.stdout + r.stderr
    return good


def data_set_bytes(part10: bytes) -> bytes:
    """The bytes after the File Meta Information (whose group length says where it ends)."""
    assert part10[128:132] == b"DICM" and part10[132:136] == b"\x02\x00\x00\x00"
    return part10[144 + int.from_bytes(part10[140:144], "little") :]


def assert_intact(archive_path: Path, good: dict[str, bytes]) -> None:
    """Every good instance's data set bit-exact (a sender adds its AE title to the File
    Meta), and `pacs verify` clean; the server is stopped."""
    with engine.open_archive(archive_path) as archive:
        for uid, data in good.items():
            assert data_set_bytes(archive.get(uid)) == data_set_bytes(data), uid
    r = pacs("-A", str(archive_path), "verify")
    assert r.returncode == 0, r.stdout + r.stderr


def worker_figures(pids: list[int]) -> dict[str, int]:
    """Peak and current RSS (KiB) and open descriptors, summed over the workers."""
    return {
        "peak_rss_kib": max(peak_rss_kib(p) for p in pids),
        "rss_kib": sum(rss_kib(p) for p in pids),
        "fds": sum(fd_count(p) for p in pids),
    }
