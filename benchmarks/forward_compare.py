"""Forwarding side by side (issue 18): our ``[[forward]]`` rule against Orthanc's Lua.

Usage (from the repository root)::

    # the default: 4 CT series of 250 slices of 512x512
    python benchmarks/forward_compare.py

    python benchmarks/forward_compare.py --series 8 --slices 250 --json fwd.json \\
        --update-benchmarks-md

The same corpus goes three ways, each to a fresh DCMTK ``storescp --fork``
(the destination) over loopback, from ``--processes`` DCMTK ``storescu`` at
once:

- **direct**: ``storescu`` to ``storescp`` itself, the destination's own
  receive rate, the ceiling of any forwarder in front of it;
- **pacs**: ``pacs serve`` with one ``[[forward]]`` rule to the destination;
- **orthanc**: Debian's Orthanc with an ``OnStoredInstance`` Lua callback
  that calls ``SendToModality`` for each instance (Orthanc's documented way
  to forward what it receives).

Each row gives the rate at which the archive acknowledged the stores, the
rate end to end (the first store sent to the last file on the destination's
disk), how long after the last acknowledgement the destination had
everything, and the archive's CPU per instance (its whole process tree,
forwarder included, from ``/proc``). End to end, our forwarding keeps up with
our ingest, so one more figure measures the forwarder alone: the corpus is
stored while the destination is down, then ``storescp`` starts on its port
and the queue drains (first arrival to last). Orthanc's Lua has no queue to
drain: a send that fails is not tried again. Client, archive and destination share
the machine's cores, as they would in a site's test rig.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loader import send, write_ct_series
from peers import missing_message, start_peer
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
    rich_table,
    update_section,
    work_dir,
)

FORWARDERS = ("pacs", "orthanc")
DESTINATION = "storescp"
DIRECT = "direct"
ARRIVAL_TIMEOUT_S = 900.0
# figure -> higher is better
METRICS = {
    "acknowledged/s": True,
    "forwarded/s (end to end)": True,
    "last arrival after last ack, s": False,
    "archive CPU ms/instance": False,
    "queue drained/s (destination back)": True,
}

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


@dataclass
class Result:
    target: str
    metrics: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"target": self.target, "metrics": self.metrics, "errors": self.errors}


def _arrived(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.is_file())


def _wait_arrivals(folder: Path, want: int) -> float | None:
    """The perf_counter time once `want` files are in `folder`; None on timeout."""
    deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
    while _arrived(folder) < want:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)
    return time.perf_counter()


def run_direct(folders: Sequence[Path], instances: int, work: Path, processes: int) -> Result:
    """storescu straight to storescp: the destination's own receive rate."""
    result = Result(DIRECT)
    dest = start_peer(DESTINATION, work / DIRECT)
    try:
        t0 = time.perf_counter()
        seconds, failures = send(dest, folders, processes=processes, log_dir=work)
        done = _wait_arrivals(dest.data or work, instances)
        result.errors += failures
        if done is None:
            result.errors.append(f"storescp holds {_arrived(dest.data or work)} of {instances}")
        else:
            result.metrics["acknowledged/s"] = instances / seconds
            result.metrics["forwarded/s (end to end)"] = instances / (done - t0)
    finally:
        dest.stop()
    return result


def run_forwarder(name: str, folders: Sequence[Path], instances: int, work: Path,
                  args: argparse.Namespace) -> Result:  # fmt: skip
    """Store the corpus into `name`, which forwards each instance to a fresh storescp."""
    result = Result(name)
    dest = start_peer(DESTINATION, work / f"{name}-dest")
    try:
        peer = start_peer(name, work, workers=args.workers, forward_to=dest.ae_title,
                          forward_parallel=args.parallel,
                          move_destinations={dest.ae_title: dest.dicom_port})  # fmt: skip
        try:
            cpu0, t0 = peer.cpu_s(), time.perf_counter()
            seconds, failures = send(peer, folders, processes=args.processes, log_dir=work)
            acked = t0 + seconds
            done = _wait_arrivals(dest.data or work, instances)
            result.errors += failures
            if done is None:
                result.errors.append(f"{name} forwarded {_arrived(dest.data or work)} of "
                                     f"{instances} in {ARRIVAL_TIMEOUT_S:.0f} s")  # fmt: skip
                return result
            cpu = peer.settled_cpu_s() - cpu0
            result.metrics.update({
                "acknowledged/s": instances / seconds,
                "forwarded/s (end to end)": instances / (done - t0),
                "last arrival after last ack, s": max(0.0, done - acked),
                "archive CPU ms/instance": cpu * 1000 / instances,
            })  # fmt: skip
        finally:
            peer.stop()
    finally:
        dest.stop()
    return result


def run_drain(folders: Sequence[Path], instances: int, work: Path,
              args: argparse.Namespace, result: Result) -> None:  # fmt: skip
    """Store into pacs while its destination is down, then start it: the drain rate."""
    from peers import free_port

    port = free_port()
    peer = start_peer("pacs", work / "drain", workers=args.workers, forward_to="STORESCP",
                      forward_parallel=args.parallel,
                      move_destinations={"STORESCP": port})  # fmt: skip
    try:
        _, failures = send(peer, folders, processes=args.processes, log_dir=work)
        result.errors += failures
        dest = start_peer(DESTINATION, work / "drain-dest", port=port)
        try:
            folder = dest.data or work
            deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
            while _arrived(folder) == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            first = time.perf_counter()
            done = _wait_arrivals(folder, instances)
            if done is None or done <= first:
                result.errors.append(f"the drain delivered {_arrived(folder)} of {instances}")
            else:
                result.metrics["queue drained/s (destination back)"] = (instances - 1) / (
                    done - first
                )
        finally:
            dest.stop()
    finally:
        peer.stop()


def rows(results: Sequence[Result]) -> tuple[list[str], list[list[str]]]:
    """A header and one line per figure: each target's value, (ratio) against ours."""
    by_name = {r.target: r for r in results}
    ours = by_name.get("pacs")
    header = ["figure", *(r.target for r in results)]
    cells = []
    for metric, higher in METRICS.items():
        line = [metric]
        for r in results:
            value = r.metrics.get(metric)
            text = fmt_value(value)
            if ours is not None and r is not ours and value is not None:
                ratio = ratio_to_us(ours.metrics.get(metric), value, higher_is_better=higher)
                text += f" ({fmt_ratio(ratio)})" if ratio is not None else ""
            line.append(text)
        cells.append(line)
    return header, cells


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forward_compare.py", description=__doc__.split("\n")[0])
    p.add_argument("--series", type=int, default=4, help="CT series in the corpus")
    p.add_argument("--slices", type=int, default=250, help="slices per series")
    p.add_argument("--rows", type=int, default=512, help="rows and columns of a slice")
    p.add_argument("--processes", type=int, default=2, help="storescu sending at once")
    p.add_argument("--parallel", type=int, default=2,
                   help="associations of our rule at once (a study stays on one)")  # fmt: skip
    p.add_argument("--targets", default=",".join(FORWARDERS),
                   help=f"forwarders to measure, of {', '.join(FORWARDERS)}")  # fmt: skip
    p.add_argument("--seed", type=int, default=18)
    p.add_argument("--work-dir", type=Path, help="parent of the run's temporary folder")
    add_run_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; 0 when every instance reached every destination, else 1."""
    args = build_parser().parse_args(argv)
    command = command_line("forward_compare.py", argv)
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(FORWARDERS)
    if unknown:
        err.print(f"[red]error:[/] unknown targets {sorted(unknown)}; known: {FORWARDERS}")
        return 2
    missing = missing_message([*targets, DESTINATION])
    if missing:
        err.print(f"[red]error:[/] {missing}")
        return 2
    work = work_dir(args.work_dir, "pacs-fwdcmp-")
    started = now_utc()
    instances = args.series * args.slices
    try:
        info = machine_info(work, [*targets, DESTINATION])
        err.print(f"corpus: {args.series} CT series of {args.slices} slices "
                  f"({args.rows}x{args.rows})")  # fmt: skip
        folders = [work / "corpus" / f"series{k:02d}" for k in range(args.series)]
        for k, folder in enumerate(folders):
            write_ct_series(folder, seed=args.seed + k, slices=args.slices, rows=args.rows)
        err.print("direct: storescu -> storescp ...")
        results = [run_direct(folders, instances, work, args.processes)]
        for name in targets:
            err.print(f"{name}: storescu -> {name} -> storescp ...")
            results.append(run_forwarder(name, folders, instances, work, args))
            if name == "pacs":
                err.print("pacs: the destination down while storing, then back: the drain ...")
                run_drain(folders, instances, work, args, results[-1])
        for r in results:
            err.print(f"  {r.target}: " + ("ok" if not r.errors else f"[red]{r.errors}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    header, cells = rows(results)
    title = (f"Forwarding {instances:,} CT slices ({args.series} series, {args.rows}x{args.rows}) "
             "to DCMTK storescp; (ratio) = how many times better we are")  # fmt: skip
    out.print(rich_table(header, cells, title))
    out.print(f"command: {command}")
    ok = all(not r.errors for r in results)
    report = {"date": started, "machine": info, "command": command, "ok": ok,
              "instances": instances,
              "settings": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()},
              "results": [r.as_json() for r in results]}  # fmt: skip
    if args.json:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    if args.update_benchmarks_md:
        update_section("forward_compare", "\n\n".join([
            "## Forwarding: a `[[forward]]` rule against Orthanc's Lua "
            "(`benchmarks/forward_compare.py`)",
            f"Measured {started}: {title}. {machine_line(info)}",
            f"```\n{command}\n```",
            markdown_table(header, cells),
        ]))  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
