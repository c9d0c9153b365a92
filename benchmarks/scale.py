"""Scale: ingest until the archive holds a million small instances, query at 10k, 100k, 1M.

Usage (from the repository root)::

    # the issue's run: resumable, in chunks of 10,000 (hours on 2 cores)
    python benchmarks/scale.py --state-dir ~/pacs-scale --target-count 1000000 \\
        --json scale.json --update-benchmarks-md

    # a short run
    python benchmarks/scale.py --target-count 20000 --checkpoints 10000,20000

Targets run one after the other (``--targets``, default ``pacs,orthanc``).
The first target ingests up to ``--target-count``; every later one gets the
same wall time the first one took (ingest plus queries) and goes as far as it
gets in it. Instances are small 8x8 CT slices in studies of ``--per-study``
(benchmarks/loader.py), generated chunk by chunk (the same bytes for every
target and every resumption) and sent by ``--processes`` concurrent DCMTK
``storescu``; generation is not timed.

At each checkpoint (default 10,000, 100,000 and 1,000,000, cut at the
target count) the script times the QIDO-RS ``/studies`` query mix of
``web_compare.py`` (``--repeat`` times each) and reports p50/p99 per query,
and the ingest rate since the previous checkpoint.

Resumable: with ``--state-dir`` the archives, the chunk being sent and
``progress.json`` stay there; run the same command again after an
interruption and it starts each target on its archive as it was and goes on
from the last complete chunk (a chunk cut short is sent again whole; both
servers keep one copy of a re-sent instance).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loader import send, small_study_plan, write_small
from peers import Peer, missing_message, start_peer
from report import (
    add_run_arguments,
    command_line,
    fmt_ratio,
    fmt_value,
    machine_info,
    machine_line,
    markdown_table,
    now_utc,
    ratio_to_us,
    update_section,
)
from web_compare import WEB_TARGETS, WebResult, measure_qido, query_mix

DEFAULT_CHECKPOINTS = (10_000, 100_000, 1_000_000)

err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def first_study_keys(seed: int) -> dict[str, str]:
    """The query keys of study 0, which every checkpoint holds."""
    plan = small_study_plan(seed, 0)
    return {"PatientID": plan.patient_id, "StudyDate": plan.study_date,
            "AccessionNumber": plan.accession}  # fmt: skip


class Progress:
    """``progress.json``: per target, instances stored, seconds spent, checkpoint figures."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = orjson.loads(path.read_bytes()) if path.exists() else {}

    def target(self, name: str) -> dict[str, Any]:
        return self.data.setdefault(name, {"stored": 0, "ingest_s": 0.0, "elapsed_s": 0.0,
                                           "checkpoints": {}, "errors": []})  # fmt: skip

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.data, option=orjson.OPT_INDENT_2))
        tmp.replace(self.path)  # a crash leaves the old file or the new one, never half


def run_target(name: str, args: argparse.Namespace, state: Path, progress: Progress,
               budget_s: float | None) -> None:  # fmt: skip
    """Ingest into `name` chunk by chunk up to the target count (or the time budget)."""
    record = progress.target(name)
    if record["stored"] >= args.target_count:
        err.print(f"{name}: already holds {record['stored']:,} (from {progress.path})")
        return
    if budget_s is not None and record["elapsed_s"] >= budget_s:  # no server start for nothing
        err.print(f"{name}: out of time at {record['stored']:,} instances (from {progress.path})")
        return
    peer = start_peer(name, state, workers=args.workers, keep_data=True)
    try:
        _ingest(peer, args, state, progress, record, budget_s)
    finally:
        peer.stop()


def _ingest(peer: Peer, args: argparse.Namespace, state: Path, progress: Progress,
            record: dict[str, Any], budget_s: float | None) -> None:  # fmt: skip
    keys = first_study_keys(args.seed)
    checkpoints = [c for c in args.checkpoints if c > record["stored"]]
    # where the current interval started: kept in the record, so a resumed run's rate counts it
    record.setdefault("interval_start", [record["stored"], record["ingest_s"]])
    for point in checkpoints:
        while record["stored"] < point:
            if budget_s is not None and record["elapsed_s"] >= budget_s:
                err.print(f"{peer.name}: out of time at {record['stored']:,} instances")
                return
            count = min(args.chunk, point - record["stored"])
            studies = count // args.per_study
            chunk = state / "chunk"
            shutil.rmtree(chunk, ignore_errors=True)
            folders, _ = write_small(chunk, seed=args.seed,
                                     first_study=record["stored"] // args.per_study,
                                     studies=studies, per_study=args.per_study,
                                     folders=args.processes)  # fmt: skip
            wall, failures = send(peer, folders, processes=args.processes, log_dir=state)
            if failures:
                record["errors"] += failures
                progress.save()
                raise RuntimeError(f"{peer.name}: {failures[0]}")
            record["stored"] += studies * args.per_study
            record["ingest_s"] += wall
            record["elapsed_s"] += wall
            progress.save()
            err.print(f"{peer.name}: {record['stored']:,} instances, "
                      f"{studies * args.per_study / wall:,.0f} inst/s in this chunk")  # fmt: skip
        t0 = time.perf_counter()
        result = WebResult(peer.name)
        measure_qido(peer, result, query_mix(keys), args.repeat)
        record["elapsed_s"] += time.perf_counter() - t0
        first, spent0 = record["interval_start"]
        done, spent = record["stored"] - first, record["ingest_s"] - spent0
        record["checkpoints"][str(point)] = {
            "ingest_instances_per_s": done / spent if spent else 0.0,
            "qido": result.metrics, "matches": result.matches,
            "server_disk_bytes": _disk_bytes(peer.work / "data"),
        }  # fmt: skip
        record["interval_start"] = [record["stored"], record["ingest_s"]]
        progress.save()


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def rows(progress: Progress, targets: Sequence[str],
         checkpoints: Sequence[int]) -> tuple[list[str], list[list[str]]]:  # fmt: skip
    """One row per (checkpoint, metric); per target its value and ratio to the first."""
    ours = progress.data.get(targets[0], {}).get("checkpoints", {})
    cells = []
    for point in checkpoints:
        names = ["ingest instances/s since the previous checkpoint", "archive size on disk MB",
                 *ours.get(str(point), {}).get("qido", {})]  # fmt: skip
        for metric in names:
            line = [f"{point:,}: {metric}"]
            for t in targets:
                cp = progress.data.get(t, {}).get("checkpoints", {}).get(str(point))
                value = _metric(cp, metric)
                cell = fmt_value(value)
                if t != targets[0] and value is not None:
                    better = "instances/s" in metric
                    r = ratio_to_us(_metric(ours.get(str(point)), metric), value,
                                    higher_is_better=better)  # fmt: skip
                    cell += f" ({fmt_ratio(r)})" if r is not None else ""
                line.append(cell or "not reached")
            cells.append(line)
    reached = ["instances reached (wall s)"]
    for t in targets:
        rec = progress.data.get(t, {})
        reached.append(f"{rec.get('stored', 0):,} ({rec.get('elapsed_s', 0):.0f} s)")
    cells.append(reached)
    return ["checkpoint: metric", *targets], cells


def _metric(cp: dict[str, Any] | None, metric: str) -> float | None:
    if cp is None:
        return None
    if metric.startswith("ingest"):
        return float(cp["ingest_instances_per_s"])
    if metric.startswith("archive size"):
        return cp["server_disk_bytes"] / 1e6
    value = cp["qido"].get(metric)
    return float(value) if value is not None else None


def _int_list(text: str) -> list[int]:
    values = sorted(int(x.replace("_", "")) for x in text.split(",") if x.strip())
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("positive counts, comma separated: 10000,100000")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scale.py", description=__doc__.split("\n")[0])
    p.add_argument("--target-count", type=int, default=1_000_000, help="instances to reach")
    p.add_argument("--checkpoints", type=_int_list, default=list(DEFAULT_CHECKPOINTS),
                   help="counts at which to query (the target count is always one)")  # fmt: skip
    p.add_argument("--targets", default="pacs,orthanc",
                   help="comma separated, the first sets the time: "
                        f"{','.join(WEB_TARGETS)}")  # fmt: skip
    p.add_argument("--chunk", type=int, default=10_000, help="instances generated and sent at once")
    p.add_argument("--per-study", type=int, default=10, help="instances per study")
    p.add_argument("--processes", type=int, default=4, help="concurrent storescu processes")
    p.add_argument("--repeat", type=int, default=20, help="timed repetitions of each query")
    p.add_argument("--seed", type=int, default=20242)
    p.add_argument("--state-dir", type=Path, help="keep archives and progress here (resumable)")
    add_run_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or resume) the scale benchmark; 0 when no target failed, else 1."""
    args = build_parser().parse_args(argv)
    command = command_line("scale.py", argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets or set(targets) - set(WEB_TARGETS):
        err.print(f"[red]error:[/] targets are {', '.join(WEB_TARGETS)}")
        return 2
    missing = missing_message(targets)
    if missing:
        err.print(f"[red]error:[/] {missing}")
        return 2
    if args.target_count % args.per_study or args.chunk % args.per_study:
        err.print("[red]error:[/] --target-count and --chunk must be multiples of --per-study")
        return 2
    args.checkpoints = sorted({c for c in args.checkpoints if c < args.target_count}
                              | {args.target_count})  # fmt: skip
    if any(c % args.per_study for c in args.checkpoints):
        err.print("[red]error:[/] every checkpoint must be a multiple of --per-study")
        return 2
    state = args.state_dir or Path(tempfile.mkdtemp(prefix="pacs-scale-"))
    state.mkdir(parents=True, exist_ok=True)
    progress = Progress(state / "progress.json")
    # a resumed run reports when, where and at which commit the run began
    started = progress.data.setdefault("started", now_utc())
    info = progress.data.setdefault("machine", machine_info(state, targets))
    progress.save()
    ok = True
    try:
        for i, name in enumerate(targets):
            budget = None if i == 0 else progress.target(targets[0])["elapsed_s"]
            try:
                run_target(name, args, state, progress, budget)
            except RuntimeError as exc:
                ok = False
                err.print(f"[red]{name}: {exc}")
    finally:
        shutil.rmtree(state / "chunk", ignore_errors=True)
        if args.state_dir is None:
            shutil.rmtree(state, ignore_errors=True)
    header, cells = rows(progress, targets, args.checkpoints)
    title = (f"scale: up to {args.target_count:,} small instances, {args.per_study} per study; "
             f"(ratio) = how many times better {targets[0]} is")  # fmt: skip
    table = Table(title=title)
    for j, h in enumerate(header):
        table.add_column(h, justify="left" if j == 0 else "right")
    for line in cells:
        table.add_row(*line)
    out.print(table)
    out.print(f"command: {command}")
    report = {"date": started, "machine": info, "command": command, "ok": ok,
              "checkpoints": args.checkpoints, "progress": progress.data}  # fmt: skip
    if args.json:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    if args.update_benchmarks_md:
        update_section("scale", "\n\n".join([
            "## Scale: ingest and QIDO-RS as the archive grows (`benchmarks/scale.py`)",
            f"Measured from {started} (a resumed run keeps its first figures): {title}. "
            f"{machine_line(info)}",
            f"```\n{command}\n```", markdown_table(header, cells),
        ]))  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
