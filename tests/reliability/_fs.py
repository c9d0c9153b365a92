"""A small tmpfs for disk-full tests: mounted for real, and a failure to mount fails the test."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (``"8m"``) at `where`; CI runs as root, so this must work."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, (
        f"cannot mount a tmpfs at {where} ({done.stderr.strip()}): the disk-full tests need "
        "root (CI runs scripts/test.sh as root)"
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(mount: Path, leave_bytes: int) -> Path:
    """Take all free space of `mount` but `leave_bytes`; unlink the file returned to free it."""
    filler = mount / "filler"
    st = os.statvfs(mount)
    with open(filler, "wb") as f:
        f.write(b"\x00" * max(0, st.f_bavail * st.f_frsize - leave_bytes))
    return filler
