"""The end-to-end ingest benchmark (benchmarks/e2e_ingest.py) runs, at a tiny size.

It must not rot between the runs that quote its figures: this sends 8 small
slices over 1 and 2 associations to ``pacs serve`` and DCMTK's ``storescp``
and checks every row of the JSON report. DCMTK is part of the test
environment (the README's test command installs it): a missing ``storescu``
fails here, it does not skip.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "e2e_ingest.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("e2e_ingest", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("e2e_ingest", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_tiny_run_reports_every_row_complete(tmp_path: Path) -> None:
    tool = _load()
    for binary in (tool.STORESCU, tool.STORESCP):
        assert os.access(binary, os.X_OK), f"{binary} missing: apt-get install dcmtk"
    report_path = tmp_path / "e2e.json"
    argv = ["--instances", "8", "--rows", "64", "--associations", "1,2",
            "--targets", "pacs,storescp", "--workers", "1", "--json", str(report_path),
            "--cache-dir", str(tmp_path / "cache"),
            "--work-dir", str(tmp_path / "work")]  # fmt: skip

    assert tool.main(argv) == 0

    report = orjson.loads(report_path.read_bytes())
    assert report["ok"] is True
    assert report["command"].startswith("python benchmarks/e2e_ingest.py --instances 8")
    assert report["machine"]["nproc"] >= 1 and "storescu" in report["machine"]["dcmtk"]
    rows = {(r["target"], r["associations"]): r for r in report["results"]}
    assert set(rows) == {("pacs", 1), ("storescp", 1), ("pacs", 2), ("storescp", 2)}
    for row in rows.values():
        assert row["failures"] == [] and row["ok"] is True
        assert row["sent"] == row["stored"] == 8
        # CPU comes in clock ticks (10 ms): a tiny storescp row may show none
        assert row["instances_per_s"] > 0 and row["server_cpu_s"] >= 0
        assert row["client_cpu_s"] >= 0 and row["wall_s"] > 0
    assert rows[("pacs", 1)]["durability"] == "fsync"
    assert rows[("storescp", 2)]["speedup_of_pacs"] > 0
    assert not list((tmp_path / "work").iterdir())  # the servers' output was removed


def test_folders_are_dealt_evenly_and_ratios_compare_like_with_like() -> None:
    tool = _load()
    folders = [Path(f"s{k}") for k in range(4)]
    assert tool.split(folders, 4) == [[f] for f in folders]
    assert tool.split(folders, 1) == [folders]
    assert sorted(f for part in tool.split(folders, 2) for f in part) == folders

    def row(target: str, n: int, wall_s: float) -> Any:
        return tool.Row(target, n, None, sent=100, nbytes=1, stored=100, wall_s=wall_s)

    rows = [row("pacs", 1, 1.0), row("storescp", 1, 2.0), row("pacs", 4, 1.0),
            row("pynetdicom", 4, 4.0), row("storescp", 2, 1.0)]  # fmt: skip
    tool.fill_ratios(rows)
    assert [r.speedup_of_pacs for r in rows] == [None, 2.0, None, 4.0, None]
    rows[1].failures.append("stored 99 of 100 instances sent")
    assert rows[1].as_json()["ok"] is False
