"""Benchmark results: the JSON schema, the printed table, the comparison of two runs.

A result file (schema :data:`RESULT_SCHEMA`)::

    {"schema": "pacs-bench-result/1", "tool": "pacs bench", "version": "0.1.0",
     "mode": "ingest" | "query" | "retrieve",
     "date": "2026-11-28T19:30:00+00:00",
     "machine": {"hostname": ..., "platform": ..., "python": ..., "cpus": 2,
                 "cpu_model": ..., "memory_bytes": ...},
     "command": "pacs bench ingest --target PACS@127.0.0.1:11112 corpus/",
     "target": {"ae_title": "PACS", "host": "127.0.0.1", "port": 11112, "http": null},
     "metrics": {"instances_per_s": {"value": 812.4, "unit": "instances/s",
                                     "better": "higher"}, ...},
     "details": {...}}

Metric names are flat and dotted (``find.study_by_date.p50_ms``) so that two
results compare key by key; ``better`` says which direction wins.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import shlex
import socket
import sys
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

RESULT_SCHEMA = "pacs-bench-result/1"

out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False)


def progress() -> Progress:
    """A progress bar on stderr (the table and JSON go to stdout)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


def percentile(values: list[float], q: float) -> float:
    """The `q`-th percentile by nearest rank: always one of the samples, never interpolated."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def metric(value: float, unit: str, better: str = "higher") -> dict[str, Any]:
    return {"value": round(value, 6), "unit": unit, "better": better}


def machine() -> dict[str, Any]:
    """Where the run happened: enough to tell two machines apart."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        memory = 0
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_bytes": memory,
    }


def result(
    mode: str,
    target: dict[str, Any],
    metrics: dict[str, dict[str, Any]],
    details: dict[str, Any],
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """A result in the documented schema."""
    from engine import __version__

    return {
        "schema": RESULT_SCHEMA,
        "tool": "pacs bench",
        "version": __version__,
        "mode": mode,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": "pacs " + shlex.join(sys.argv[1:] if argv is None else argv),
        "target": target,
        "metrics": metrics,
        "details": details,
    }


def write_json(data: dict[str, Any], path: str | None) -> None:
    if path:
        Path(path).write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")


def load(path: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(Path(path).read_bytes())
    if data.get("schema") != RESULT_SCHEMA:
        raise ValueError(f"{path}: not a {RESULT_SCHEMA} result file")
    return data


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.3g}"


def print_result(data: dict[str, Any]) -> None:
    """The metrics of one result as a table."""
    t = data["target"]
    table = Table(
        "metric",
        "value",
        "unit",
        title=f"pacs bench {data['mode']}: {t.get('ae_title')}@{t.get('host')}:"
        f"{t.get('port')}  ({data['date']})",
    )
    for name, m in data["metrics"].items():
        table.add_row(name, _fmt(m["value"]), m["unit"])
    out.print(table)


def compare(a: dict[str, Any], b: dict[str, Any]) -> Table:
    """Both results metric by metric, with B/A and whether B is better."""
    table = Table(
        "metric",
        "A",
        "B",
        "B/A",
        "unit",
        title=f"A: {a['command']} ({a['date']})\nB: {b['command']} ({b['date']})",
    )
    for name in dict.fromkeys([*a["metrics"], *b["metrics"]]):
        ma, mb = a["metrics"].get(name), b["metrics"].get(name)
        va = ma["value"] if ma else None
        vb = mb["value"] if mb else None
        ratio = vb / va if va and vb is not None else None
        better = (ma or mb or {}).get("better", "higher")
        mark = ""
        if ratio is not None and ratio != 1:
            wins = ratio > 1 if better == "higher" else ratio < 1
            mark = " [green]B better[/]" if wins else " [red]B worse[/]"
        table.add_row(
            name,
            _fmt(va),
            _fmt(vb),
            (f"{ratio:.2f}x" if ratio else "-") + mark,
            (ma or mb or {}).get("unit", ""),
        )
    return table
