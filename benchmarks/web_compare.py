"""DICOMweb side by side (issue 5): our server against Orthanc + its DICOMweb plugin.

Usage (from the repository root)::

    # the full run of the issue: 100,000 small instances, a 1,000-slice CT series
    python benchmarks/web_compare.py --instances 100000 --slices 1000 --json web.json \\
        --update-benchmarks-md

    # the default: 10,000 small instances, a 1,000-slice series
    python benchmarks/web_compare.py

Each target (``--targets``, default ``pacs,orthanc``) gets the same instances
over C-STORE (several DCMTK ``storescu`` at once; the load rate is reported
but is not the point here): ``--instances`` small 8x8 CT instances in studies
of ``--per-study``, and one CT series of ``--slices`` slices of 512x512. Then,
through DICOMweb over loopback with one keep-alive httpx client per thread:

- **QIDO-RS study search**: a fixed mix of ``/studies`` queries (PatientID,
  PatientName prefix wildcard, one StudyDate, a month of StudyDate,
  AccessionNumber, everything with limit=100), ``--repeat`` times each;
  p50/p99 ms per query, and the number of studies each target returned.
- **WADO-RS series metadata** of the CT series, ``--repeat`` times: p50/p99 ms.
- **Frames**: frame 1 of every instance of the CT series, ``--threads``
  concurrent requests, native pixels: frames/s and MB/s (pixel bytes).

Latencies are what the client sees, httpx's own overhead (~0.1-0.2 ms a
request) included. The table gives each figure and its ratio to ours (above
1: we are better). This script needs only httpx and DCMTK's storescu, not the
``pacs bench`` tool.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loader import send, write_ct_series, write_small
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
    percentile,
    ratio_to_us,
    update_section,
    work_dir,
)

WEB_TARGETS = ("pacs", "pacs-nosync", "orthanc", "orthanc-zip")
US = "pacs"
DICOM_JSON = "application/dicom+json"
FRAMES_ACCEPT = 'multipart/related; type="application/octet-stream"'
HTTP_TIMEOUT_S = 300.0

err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


@dataclass(slots=True)
class WebResult:
    """One target's figures: metric -> value, study counts per query, what went wrong."""

    target: str
    metrics: dict[str, float] = field(default_factory=dict)
    matches: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"target": self.target, "ok": not self.errors, "metrics": self.metrics,
                "matches": self.matches, "errors": self.errors}  # fmt: skip


def query_mix(ct_meta: dict[str, str]) -> dict[str, dict[str, str]]:
    """The QIDO-RS ``/studies`` queries: name -> parameters.

    The values come from the generator's plan (engine.synthetic.plan_study:
    patients ``PID000000``..``PID099999``, ten surnames, dates 2010-2024),
    and from the CT series' own study, so every query matches something.
    """
    month = ct_meta["StudyDate"][:6]
    return {
        "PatientID": {"PatientID": ct_meta["PatientID"]},
        "PatientName wildcard, limit 100": {"PatientName": "Smith*", "limit": "100"},
        "StudyDate one day": {"StudyDate": ct_meta["StudyDate"]},
        "StudyDate one month": {"StudyDate": f"{month}01-{month}28"},
        "AccessionNumber": {"AccessionNumber": ct_meta["AccessionNumber"]},
        "all, limit 100": {"limit": "100"},
    }


def timed(fn: Callable[[], int], repeat: int) -> tuple[list[float], int]:
    """Call `fn` `repeat` times; its latencies in ms and its last result."""
    times, result = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return times, result


def _get(client: httpx.Client, url: str, accept: str,
         params: dict[str, str] | None = None) -> bytes:  # fmt: skip
    r = client.get(url, params=params, headers={"Accept": accept})
    if r.status_code != 200:
        raise RuntimeError(f"GET {url} {params or ''}: HTTP {r.status_code}: {r.text[:200]}")
    return r.content


def measure_qido(peer: Peer, result: WebResult, mix: dict[str, dict[str, str]],
                 repeat: int) -> None:  # fmt: skip
    assert peer.http_url is not None
    with httpx.Client(timeout=HTTP_TIMEOUT_S) as client:
        for name, params in mix.items():
            # "*" stays literal: RFC 3986 makes it reserved, and Orthanc's plugin takes %2A
            # (what httpx sends for params) as a literal asterisk, not the wildcard
            url = f"{peer.http_url}/studies?{urllib.parse.urlencode(params, safe='*')}"

            def search(url: str = url) -> int:
                body = _get(client, url, DICOM_JSON)
                return len(orjson.loads(body)) if body.strip() else 0

            search()  # warm: first use of this index path
            times, n = timed(search, repeat)
            result.matches[name] = n
            result.metrics[f"QIDO {name}: p50 ms"] = percentile(times, 50)
            result.metrics[f"QIDO {name}: p99 ms"] = percentile(times, 99)


def series_metadata(peer: Peer, client: httpx.Client, study: str, series: str) -> list[Any]:
    assert peer.http_url is not None
    url = f"{peer.http_url}/studies/{study}/series/{series}/metadata"
    metadata: list[Any] = orjson.loads(_get(client, url, DICOM_JSON))
    return metadata


def measure_metadata(peer: Peer, result: WebResult, study: str, series: str, slices: int,
                     repeat: int) -> list[str]:  # fmt: skip
    """Time series metadata; return the series' SOP Instance UIDs (checked complete)."""
    with httpx.Client(timeout=HTTP_TIMEOUT_S) as client:
        meta = series_metadata(peer, client, study, series)
        times, n = timed(lambda: len(series_metadata(peer, client, study, series)), repeat)
    if n != slices or len(meta) != slices:
        raise RuntimeError(f"series metadata has {n} instances, expected {slices}")
    result.metrics["WADO-RS series metadata: p50 ms"] = percentile(times, 50)
    result.metrics["WADO-RS series metadata: p99 ms"] = percentile(times, 99)
    return [m["00080018"]["Value"][0] for m in meta]


def measure_frames(peer: Peer, result: WebResult, study: str, series: str,
                   sops: Sequence[str], frame_bytes: int, threads: int) -> None:  # fmt: skip
    """Frame 1 of every instance, `threads` at once: frames/s and MB/s of pixel bytes."""
    assert peer.http_url is not None
    base = f"{peer.http_url}/studies/{study}/series/{series}/instances"
    chunks = [list(sops[i::threads]) for i in range(threads)]

    def fetch(part: list[str]) -> int:
        total = 0
        with httpx.Client(timeout=HTTP_TIMEOUT_S) as client:
            for sop in part:
                body = _get(client, f"{base}/{sop}/frames/1", FRAMES_ACCEPT)
                if len(body) < frame_bytes:  # multipart framing comes on top of the pixels
                    raise RuntimeError(f"frame of {sop}: {len(body)} bytes < {frame_bytes}")
                total += len(body)
        return total

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        sum(pool.map(fetch, chunks))
    wall = time.perf_counter() - t0
    result.metrics["frames of the series: frames/s (per_s)"] = len(sops) / wall
    mb = len(sops) * frame_bytes / 1e6
    result.metrics["frames of the series: pixel MB/s (per_s)"] = mb / wall


def run_target(name: str, folders: list[Path], ct: Path, ct_meta: dict[str, str], work: Path,
               args: argparse.Namespace) -> WebResult:  # fmt: skip
    """Start `name`, load everything, measure the three figures, stop it; never raises."""
    result = WebResult(name)
    try:
        peer = start_peer(name, work, workers=args.workers)
    except RuntimeError as exc:
        result.errors.append(str(exc))
        return result
    try:
        wall, failures = send(peer, [*folders, ct], processes=args.processes, log_dir=work)
        result.errors += failures
        result.metrics["load over C-STORE: instances/s (per_s)"] = (
            (args.instances + args.slices) / wall)  # fmt: skip
        if failures:
            return result
        cpu0 = peer.cpu_s()
        measure_qido(peer, result, query_mix(ct_meta), args.repeat)
        sops = measure_metadata(peer, result, ct_meta["StudyInstanceUID"],
                                ct_meta["SeriesInstanceUID"], args.slices, args.repeat)  # fmt: skip
        measure_frames(peer, result, ct_meta["StudyInstanceUID"], ct_meta["SeriesInstanceUID"],
                       sops, args.rows * args.rows * 2, args.threads)  # fmt: skip
        result.metrics["server CPU s for all web requests"] = peer.cpu_s() - cpu0
    except (RuntimeError, httpx.HTTPError, KeyError, ValueError) as exc:
        result.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        peer.stop()
        shutil.rmtree(peer.work / "data", ignore_errors=True)
    return result


def rows(results: Sequence[WebResult]) -> tuple[list[str], list[list[str]]]:
    """Header and cells: one row per metric, value and ratio to ours per target."""
    ours = next((r for r in results if r.target == US), None)
    keys: list[str] = []
    for r in results:
        keys += [k for k in r.metrics if k not in keys]
    cells = []
    for key in keys:
        better = "per_s" in key
        line = [key.replace(" (per_s)", "")]
        for r in results:
            value = r.metrics.get(key)
            cell = fmt_value(value)
            if ours is not None and r is not ours and value is not None:
                ratio = ratio_to_us(ours.metrics.get(key), value, higher_is_better=better)
                cell += f" ({fmt_ratio(ratio)})" if ratio is not None else ""
            line.append(cell)
        cells.append(line)
    for query in (ours or (results[0] if results else WebResult(""))).matches:
        cells.append([f"studies found: {query}",
                      *(str(r.matches.get(query, "")) for r in results)])  # fmt: skip
    cells.append(["errors", *("; ".join(r.errors)[:120] or "ok" for r in results)])
    return ["metric", *(r.target for r in results)], cells


def _targets(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    if not values or set(values) - set(WEB_TARGETS):
        raise argparse.ArgumentTypeError(f"targets are {', '.join(WEB_TARGETS)}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="web_compare.py", description=__doc__.split("\n")[0])
    p.add_argument("--targets", type=_targets, default=["pacs", "orthanc"],
                   help=f"comma separated: {','.join(WEB_TARGETS)}")  # fmt: skip
    p.add_argument("--instances", type=int, default=10_000, help="small instances for QIDO-RS")
    p.add_argument("--per-study", type=int, default=10, help="small instances per study")
    p.add_argument("--slices", type=int, default=1000, help="slices of the CT series")
    p.add_argument("--rows", type=int, default=512, help="rows (= columns) of the CT slices")
    p.add_argument("--repeat", type=int, default=30, help="timed repetitions of each request")
    p.add_argument("--threads", type=int, default=4, help="concurrent frame requests")
    p.add_argument("--processes", type=int, default=4, help="storescu processes while loading")
    p.add_argument("--seed", type=int, default=20241)
    p.add_argument("--work-dir", type=Path, help="where the corpus and servers go (temp dir)")
    add_run_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; 0 when every target answered everything, else 1."""
    args = build_parser().parse_args(argv)
    command = command_line("web_compare.py", argv)
    missing = missing_message(args.targets)
    if missing:
        err.print(f"[red]error:[/] {missing}")
        return 2
    work = work_dir(args.work_dir, "pacs-webcmp-")
    started = now_utc()
    try:
        info = machine_info(work, args.targets)
        studies = max(1, args.instances // args.per_study)
        args.instances = studies * args.per_study
        err.print(f"corpus: {args.instances} small instances, a CT series of {args.slices}")
        folders, _ = write_small(work / "small", seed=args.seed, first_study=0, studies=studies,
                                 per_study=args.per_study, folders=args.processes)  # fmt: skip
        ct = work / "ct"
        write_ct_series(ct, seed=args.seed, slices=args.slices, rows=args.rows)
        ct_meta = _series_keys(next(ct.iterdir()))
        results = []
        for name in args.targets:
            err.print(f"{name}: loading, then QIDO-RS, metadata and frames ...")
            results.append(run_target(name, folders, ct, ct_meta, work, args))
            err.print("  ok" if not results[-1].errors else f"  [red]{results[-1].errors}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    header, cells = rows(results)
    title = (f"DICOMweb: {args.instances:,} small instances + a {args.slices}-slice CT series "
             f"({args.rows}x{args.rows}); (ratio) = how many times better we are")  # fmt: skip
    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for line in cells:
        table.add_row(*line)
    out.print(table)
    out.print(f"command: {command}")
    ok = all(not r.errors for r in results)
    report = {"date": started, "machine": info, "command": command, "ok": ok,
              "settings": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()},
              "results": [r.as_json() for r in results]}  # fmt: skip
    if args.json:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    if args.update_benchmarks_md:
        update_section("web_compare", "\n\n".join([
            "## DICOMweb: us against Orthanc + orthanc-dicomweb (`benchmarks/web_compare.py`)",
            f"Measured {started}: {title}. {machine_line(info)}",
            f"```\n{command}\n```",
            markdown_table(header, cells),
        ]))  # fmt: skip
    return 0 if ok else 1


def _series_keys(path: Path) -> dict[str, str]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    keys = ("PatientID", "StudyDate", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID")
    return {k: str(ds.get(k, "")) for k in keys}


if __name__ == "__main__":
    sys.exit(main())
