"""What the side-by-side scripts share: the machine, percentiles, ratio cells, BENCHMARKS.md.

``compare.py``, ``web_compare.py`` and ``scale.py`` each own one section of
``BENCHMARKS.md`` between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``
markers; a run replaces its own section and leaves the others alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peers import REPO, TARGETS, version_of
from rich.table import Table

BENCHMARKS_MD = REPO / "BENCHMARKS.md"
HEADER = """# Side-by-side benchmarks

Our archive against Orthanc, DCMTK and pynetdicom on the same machine, in the
same run, on the same instances. Each section below is written by the script
it names (`benchmarks/compare.py`, `benchmarks/web_compare.py`,
`benchmarks/scale.py`), with the date, the machine and the command. Quote
ratios, not absolute figures: a ratio compares two servers measured minutes
apart on the same machine; the absolute figures move with whatever else runs.
"""


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """--workers, --json and --update-benchmarks-md, alike in every comparison script."""
    p.add_argument("--workers", type=int, default=2, help="pacs serve worker processes")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--update-benchmarks-md", action="store_true",
                   help="write table, date, machine, command into BENCHMARKS.md")  # fmt: skip


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command as typed, for the record in BENCHMARKS.md and the JSON."""
    return shlex.join(["python", f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])


def work_dir(parent: Path | None, prefix: str) -> Path:
    """A fresh folder for one run's corpus and servers, under `parent` if given."""
    if parent:
        parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def now_utc() -> str:
    """The current time, ISO 8601 in UTC, to the second."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100) of `values`, nearest rank; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def ratio_to_us(ours: float | None, theirs: float | None, *,
                higher_is_better: bool) -> float | None:  # fmt: skip
    """How many times better we are than them (above 1: we win); None without both."""
    if not ours or not theirs:
        return None
    return ours / theirs if higher_is_better else theirs / ours


def fmt_value(value: float | None) -> str:
    """A figure with the precision that matters at its size."""
    if value is None:
        return ""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else ""


def _meminfo_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    return 0.0


def _disk(path: Path) -> str:
    res = subprocess.run(["findmnt", "-no", "SOURCE,FSTYPE", "-T", str(path)],
                         capture_output=True, text=True, check=False)  # fmt: skip
    usage = shutil.disk_usage(path)
    return f"{res.stdout.strip() or 'unknown'} ({usage.free / 1e9:.0f} GB free)"


def machine_info(work: Path, targets: Sequence[str] = TARGETS) -> dict[str, Any]:
    """Cores, CPU, RAM, disk, kernel, load and the versions of every target."""
    model = ""
    with open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    log = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h"],
                         capture_output=True, text=True, check=False)  # fmt: skip
    versions: dict[str, str] = {}
    for t in ("pacs", *targets):
        key = t.split("-")[0] if t.startswith(("pacs", "orthanc", "pynetdicom")) else t
        versions.setdefault(key, version_of(t))
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "ram_gb": round(_meminfo_gb(), 1),
        "disk": _disk(work),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git_commit": log.stdout.strip() or "unknown",
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


def machine_line(info: dict[str, Any]) -> str:
    """One Markdown paragraph saying where the figures come from."""
    versions = "; ".join(info["versions"].values())
    return (f"{info['cores']} cores ({info['cpu_model']}), {info['ram_gb']} GB RAM, disk "
            f"{info['disk']}, Linux {info['kernel']}, Python {info['python']}, commit "
            f"`{info['git_commit']}`, load average at start {info['loadavg_at_start']}. "
            f"Versions: {versions}.")  # fmt: skip


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def update_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the ``name`` section of BENCHMARKS.md with `body`."""
    text = path.read_text() if path.exists() else HEADER
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def rich_table(header: Sequence[str], cells: Sequence[Sequence[str]], title: str) -> Table:
    """A terminal table: the first column left-aligned, the figures right-aligned."""
    t = Table(title=title)
    for i, name in enumerate(header):
        t.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
    for line in cells:
        t.add_row(*line)
    return t
