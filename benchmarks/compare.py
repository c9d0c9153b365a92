"""Side by side: the same corpus through ``pacs bench`` against us and every other archive.

Usage (from the repository root)::

    # every target (pacs, pacs-nosync, orthanc, orthanc-zip, storescp, dcmqrscp,
    # pynetdicom-storescp, pynetdicom-qrscp), 4 CT studies, 4 associations
    python benchmarks/compare.py --studies 4 --associations 4 --json compare.json \\
        --update-benchmarks-md

    # some of them
    python benchmarks/compare.py --targets pacs,orthanc,dcmqrscp

One run writes one corpus with ``pacs bench corpus`` (or reuses ``--corpus``),
then for each target in turn: starts it on loopback (benchmarks/peers.py),
runs ``pacs bench ingest``, then ``pacs bench query`` and ``pacs bench
retrieve`` where the target answers them (``--http`` too where it speaks
DICOMweb; each retrieve operation alone: C-GET and C-MOVE by the tool's own
client, then by DCMTK's ``getscu`` and ``movescu``, WADO-RS), reads the
server's CPU time from ``/proc`` around the ingest and each retrieve, and
stops it. Then it prints one table: every metric of every target, with the
ratio to us (``pacs``, fsync) beside it. A ratio above 1 means we are better:
ours/theirs for rates, theirs/ours for latencies.

Ingest alone, as issue 17 measures it (DCMTK storescu as the sender, 1 and
4 associations, 3 rounds each on a fresh data directory, the median round
kept, then the storage the corpus takes at rest)::

    python benchmarks/compare.py --targets pacs,storescp,orthanc --corpus CORPUS \
        --phases ingest,storage --associations 1,4 --rounds 3 --sender storescu

With several association counts the ingest metrics are named
``ingest.x1.*``, ``ingest.x4.*``. The storage phase waits for what a target
does at rest by itself (our idle recompression, ``idle_recompress_s`` set to
a few seconds for the run) and reports ``storage.ratio``: the corpus's bytes
over the bytes the target's data folder takes on disk.

The bench tool runs as a subprocess, ``python -m engine.cli bench ...``, from
this tree, or from ``--bench-tree`` (``$PACS_BENCH_TREE``) when it lives in
another checkout.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import REPO, TARGETS, Peer, free_port, missing_message, start_peer
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

US = "pacs"
BENCH_TIMEOUT_S = 3600.0
RESULT_SCHEMA = "pacs-bench-result/1"  # engine/bench/report.py
# Metrics kept in the JSON but not in the table: the client's share is the bench tool's concern
HIDDEN = {"client_cpu_share"}
MOVE_DEST = "BENCHMOVE"  # the C-MOVE receiver `pacs bench retrieve` runs, known to every target
# The summary table: one figure per service
# ... and each association count's of a run with several (ingest.x1.*, ingest.x4.*)
HEADLINE_INGEST = ("instances_per_s", "server_cpu_ms_per_instance", "latency_p50_ms")
HEADLINE = ("ingest.instances_per_s", "ingest.server_cpu_ms_per_instance", "storage.ratio",
            "query.find.study_by_patient_id.p50_ms", "query.find.all_studies.p50_ms",
            "query.find.instances_of_series.p50_ms", "query.qido.study_by_patient_id.p50_ms",
            "query.qido.instances_of_series.p50_ms", "retrieve.get.instances_per_s",
            "retrieve.get.server_cpu_ms_per_instance", "retrieve.get.first_instance_p50_ms",
            "retrieve.move.instances_per_s", "retrieve.move.server_cpu_ms_per_instance",
            "retrieve.getscu.instances_per_s", "retrieve.getscu.first_instance_p50_ms",
            "retrieve.movescu.instances_per_s", "retrieve.movescu.first_instance_p50_ms",
            "retrieve.wado.instances_per_s")  # fmt: skip
RETRIEVES = ("get", "move", "getscu", "movescu")  # and wado where the target speaks DICOMweb
PHASES = ("ingest", "storage", "query", "retrieve")  # in the order they run
DEFAULT_PHASES = ("ingest", "query", "retrieve")
IDLE_RECOMPRESS_S = 3.0  # our idle recompression, for a run with a storage phase
SETTLE_QUIET_S = 6.0  # the data folder's size unchanged this long: the target is at rest
SETTLE_MAX_S = 300.0

err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


@dataclass(slots=True)
class Result:
    """What one target did: flat metrics per phase, its CPU, and what went wrong."""

    target: str
    metrics: dict[str, float] = field(default_factory=dict)
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, name: str, value: float, higher_is_better: bool) -> None:
        self.metrics[name] = value
        self.higher_is_better[name] = higher_is_better

    def as_json(self) -> dict[str, Any]:
        return {"target": self.target, "ok": not self.errors, "metrics": self.metrics,
                "higher_is_better": self.higher_is_better, "errors": self.errors}  # fmt: skip


# -- reading the bench tool's JSON ----------------------------------------------------------


def read_metrics(path: Path) -> dict[str, tuple[float, bool]]:
    """A ``pacs-bench-result/1`` file's metrics: name -> (value, higher is better)."""
    data = orjson.loads(path.read_bytes())
    if data.get("schema") != RESULT_SCHEMA:
        raise ValueError(f"{path}: not a {RESULT_SCHEMA} result (schema {data.get('schema')!r})")
    return {name: (float(m["value"]), m.get("better", "higher") == "higher")
            for name, m in data["metrics"].items()}  # fmt: skip


# -- running the bench tool -----------------------------------------------------------------


def bench(tree: Path, args: Sequence[str], log: Path) -> None:
    """Run ``pacs bench ARGS`` from `tree`; raise RuntimeError with its output on failure."""
    env = dict(os.environ, PYTHONPATH=str(tree), TCP_NODELAY="1")
    cmd = [sys.executable, "-m", "engine.cli", "bench", *args]
    with log.open("ab") as f:
        f.write(f"$ {shlex.join(cmd)}\n".encode())
        f.flush()
        res = subprocess.run(cmd, cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, timeout=BENCH_TIMEOUT_S,
                             check=False)  # fmt: skip
    if res.returncode != 0:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-4:])
        raise RuntimeError(f"pacs bench {args[0]} exited with {res.returncode}: {tail}")


def corpus_instances(corpus: Path) -> int:
    """The number of instances the corpus manifest says it holds."""
    manifest = orjson.loads((corpus / "manifest.json").read_bytes())
    for key in ("instances", "instance_count", "count"):
        if isinstance(manifest.get(key), int):
            return int(manifest[key])
    if isinstance(manifest.get("files"), list):
        return len(manifest["files"])
    return sum(1 for p in corpus.rglob("*.dcm"))


def run_target(name: str, corpus: Path, instances: int, work: Path, tree: Path, *,
               associations: Sequence[int], workers: int, series: int | None, repeat: int,
               phases: Sequence[str] = DEFAULT_PHASES, rounds: int = 1,
               sender: str = "auto") -> Result:  # fmt: skip
    """Start `name`, run every phase it answers, stop it; never raises.

    Each association count's ingest runs `rounds` times, each on a fresh
    server and data folder, and the round of median rate is kept; the
    phases after ingest run on the server of the last round.
    """
    result = Result(name)
    log = work / f"{name}-bench.log"
    runs = [(n, r) for n in associations for r in range(rounds)]
    kept: list[dict[str, tuple[float, bool]]] = []
    for i, (n, r) in enumerate(runs):
        os.sync()  # the previous run's dirty pages must not be flushed on this one's time
        move_port = free_port()
        extra = f"idle_recompress_s = {IDLE_RECOMPRESS_S}" if "storage" in phases else ""
        try:
            peer = start_peer(name, work, workers=workers, move_destinations={MOVE_DEST: move_port},
                              archive_extra=extra if name.startswith("pacs") else "")  # fmt: skip
        except RuntimeError as exc:
            result.errors.append(str(exc))
            return result
        try:
            metrics = _ingest(peer, result, corpus, instances, work, tree, n, sender, log)
            if metrics is None:
                return result  # nothing known to be stored: nothing more to measure
            kept.append(metrics)
            if r == rounds - 1:
                prefix = "ingest." if len(associations) == 1 else f"ingest.x{n}."
                for key, (value, higher) in _median_round(kept).items():
                    result.add(prefix + key, value, higher)
                kept = []
            if i == len(runs) - 1:
                if "storage" in phases:
                    _storage(peer, result, corpus)
                retrieve = ["--corpus", str(corpus), "--move-dest", MOVE_DEST,
                            "--move-port", str(move_port),
                            *(["--series", str(series)] if series else [])]  # fmt: skip
                _phases(peer, result, corpus, work, tree, retrieve, repeat, log, phases)
        finally:
            peer.stop()
            shutil.rmtree(peer.work / "data", ignore_errors=True)
    return result


def _ingest(peer: Peer, result: Result, corpus: Path, instances: int, work: Path, tree: Path,
            associations: int, sender: str,
            log: Path) -> dict[str, tuple[float, bool]] | None:  # fmt: skip
    """One ``pacs bench ingest`` into `peer`: its metrics and the server's CPU per instance."""
    out_json = work / f"{peer.name}-ingest.json"
    out_json.unlink(missing_ok=True)
    cpu0 = peer.cpu_s()
    args = ["ingest", "--target", peer.target, "--associations", str(associations),
            "--sender", sender, str(corpus), "--json", str(out_json)]  # fmt: skip
    try:
        bench(tree, args, log)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        result.errors.append(f"ingest: {exc}")  # some stores failed: still the figures
    try:
        metrics = read_metrics(out_json)
    except (OSError, ValueError, KeyError) as exc:
        result.errors.append(f"ingest: no result ({exc})")
        return None
    cpu = peer.settled_cpu_s() - cpu0
    metrics["server_cpu_ms_per_instance"] = (1e3 * cpu / instances, False)
    return metrics


def _median_round(rounds: list[dict[str, tuple[float, bool]]]) -> dict[str, tuple[float, bool]]:
    """The round of median ingest rate (the lower middle one of an even count)."""
    ranked = sorted(rounds, key=lambda m: m.get("instances_per_s", (0.0, True))[0])
    return ranked[(len(ranked) - 1) // 2]


def disk_bytes(folder: Path) -> int:
    """Bytes the files under `folder` take on disk (allocated blocks, as du counts)."""
    total = 0
    for path in folder.rglob("*"):
        try:
            st = path.lstat()
        except FileNotFoundError:  # removed while we walked (a compaction's old segment)
            continue
        if path.is_file():
            total += st.st_blocks * 512
    return total


def _storage(peer: Peer, result: Result, corpus: Path) -> None:
    """What the corpus takes at rest: wait until the data folder stops changing, then size it."""
    data = peer.work / "data"
    raw = sum(p.stat().st_size for p in corpus.rglob("*.dcm"))
    size, since = disk_bytes(data), time.monotonic()
    after_ingest = size
    deadline = since + SETTLE_MAX_S
    while time.monotonic() - since < SETTLE_QUIET_S and time.monotonic() < deadline:
        time.sleep(0.5)
        now = disk_bytes(data)
        if now != size:
            size, since = now, time.monotonic()
    if time.monotonic() >= deadline:
        result.errors.append(f"storage: still changing after {SETTLE_MAX_S:.0f} s")
    result.add("storage.corpus_mb", raw / 1e6, False)
    result.add("storage.after_ingest_mb", after_ingest / 1e6, False)
    result.add("storage.at_rest_mb", size / 1e6, False)
    result.add("storage.ratio", raw / size if size else 0.0, True)


def _phases(peer: Peer, result: Result, corpus: Path, work: Path, tree: Path,
            retrieve: list[str], repeat: int, log: Path,
            wanted: Sequence[str]) -> None:  # fmt: skip
    """Query and retrieve, each retrieve operation alone with the server's CPU around it."""
    http = ["--http", peer.http_url] if peer.http_url else []
    phases: list[tuple[str, str, list[str]]] = []  # (phase, what of it, its arguments)
    if "query" in peer.services and "query" in wanted:
        phases.append(("query", "", [*http, "--corpus", str(corpus), "--repeat", str(repeat)]))
    if "retrieve" in peer.services and "retrieve" in wanted:
        for only in (*RETRIEVES, "wado") if http else RETRIEVES:
            phases.append(("retrieve", only, [*http, *retrieve, "--only", only]))
    for phase, only, extra in phases:
        out_json = work / f"{peer.name}-{phase}{'-' + only if only else ''}.json"
        out_json.unlink(missing_ok=True)
        cpu0 = peer.settled_cpu_s()
        try:
            bench(tree, [phase, "--target", peer.target, *extra, "--json", str(out_json)], log)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            result.errors.append(f"{phase}: {exc}")  # some operations failed: still the figures
        try:
            metrics = read_metrics(out_json)
        except (OSError, ValueError, KeyError) as exc:
            result.errors.append(f"{phase}: no result ({exc})")
            continue
        for key, (value, higher) in metrics.items():
            result.add(f"{phase}.{key}", value, higher)
        if only and metrics.get(f"{only}.instances", (0.0, True))[0] > 0:
            cpu, sent = peer.settled_cpu_s() - cpu0, metrics[f"{only}.instances"][0]
            result.add(f"retrieve.{only}.server_cpu_ms_per_instance", 1e3 * cpu / sent, False)


# -- the table ---------------------------------------------------------------------------


def rows(results: Sequence[Result],
         only: Sequence[str] | None = None) -> tuple[list[str], list[list[str]]]:  # fmt: skip
    """Header and cells: one row per metric (or per metric of `only`), value and ratio to us."""
    ours = next((r for r in results if r.target == US), results[0] if results else None)
    keys: list[str] = []
    for r in results:
        keys += [k for k in r.metrics if k not in keys]
    if only is not None:
        keys = [k for k in only if k in keys]
    header = ["metric", *(r.target for r in results)]
    cells: list[list[str]] = []
    for key in keys:
        last = key.rsplit(".", 1)[-1]
        if last in HIDDEN:
            continue
        better = next(r.higher_is_better[key] for r in results if key in r.higher_is_better)
        # counts (matches, failures) and the sender's own cost get no ratio
        figure = (("_ms" in last or "per_s" in last or last in ("ratio", "at_rest_mb"))
                  and not last.startswith("sender"))  # fmt: skip
        line = [key]
        for r in results:
            value = r.metrics.get(key)
            cell = fmt_value(value)
            if ours is not None and r is not ours and figure and value is not None:
                ratio = ratio_to_us(ours.metrics.get(key), value, higher_is_better=better)
                cell += f" ({fmt_ratio(ratio)})" if ratio is not None else ""
            line.append(cell)
        cells.append(line)
    cells.append(["status", *("ok" if not r.errors else f"{len(r.errors)} errors, below"
                              for r in results)])  # fmt: skip
    return header, cells


# -- entry point --------------------------------------------------------------------------


def headline(results: Sequence[Result]) -> list[str]:
    """The summary's metrics: :data:`HEADLINE`, each association count's ingest first."""
    counts = sorted({int(k.split(".")[1][1:]) for r in results for k in r.metrics
                     if k.startswith("ingest.x")})  # fmt: skip
    per_count = [f"ingest.x{n}.{m}" for n in counts for m in HEADLINE_INGEST]
    return [*per_count, *HEADLINE]


def _counts(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: association counts, comma separated (1,4)")
    return values


def _phase_list(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    unknown = sorted(set(values) - set(PHASES))
    if not values or unknown or "ingest" not in values:
        raise argparse.ArgumentTypeError(
            f"{text!r}: phases are {', '.join(PHASES)}, ingest always among them")
    return [p for p in PHASES if p in values]


def _targets(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    unknown = sorted(set(values) - set(TARGETS))
    if not values or unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; targets are {', '.join(TARGETS)}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compare.py", description=__doc__.split("\n")[0])
    p.add_argument("--targets", type=_targets, default=list(TARGETS),
                   help=f"comma separated (default: all): {','.join(TARGETS)}")  # fmt: skip
    p.add_argument("--studies", type=int, default=4, help="studies in the corpus")
    p.add_argument("--small", action="store_true", help="small instances (bench corpus --small)")
    p.add_argument("--slices", type=int, help="instances per series (default: the bench tool's)")
    p.add_argument("--seed", type=int, default=20240)
    p.add_argument("--corpus", type=Path, help="an existing bench corpus (skips generation)")
    p.add_argument("--associations", type=_counts, default=[4],
                   help="concurrent C-STORE associations; several (1,4): an ingest for each")
    p.add_argument("--rounds", type=int, default=1,
                   help="ingests per association count, each on a fresh server; the median kept")
    p.add_argument("--sender", choices=("auto", "storescu", "internal"), default="auto",
                   help="pacs bench ingest's sender (auto: DCMTK storescu where installed)")
    p.add_argument("--phases", type=_phase_list, default=list(DEFAULT_PHASES),
                   help=f"comma separated, of {','.join(PHASES)} (default: ingest,query,retrieve)")
    p.add_argument("--series", type=int, help="retrieve at most this many series")
    p.add_argument("--repeat", type=int, default=20, help="times the query mix runs")
    p.add_argument("--bench-tree", type=Path,
                   default=Path(os.environ.get("PACS_BENCH_TREE") or REPO),
                   help="checkout whose `pacs bench` runs "
                        "(default: $PACS_BENCH_TREE or this one)")  # fmt: skip
    p.add_argument("--work-dir", type=Path, help="where servers write (default: a temp dir)")
    add_run_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; 0 when every target completed every phase, else 1."""
    args = build_parser().parse_args(argv)
    command = command_line("compare.py", argv)
    missing = missing_message(args.targets)
    if missing:
        err.print(f"[red]error:[/] {missing}")
        return 2
    work = work_dir(args.work_dir, "pacs-compare-")
    started = now_utc()
    try:
        info = machine_info(work, args.targets)
        corpus = args.corpus or work / "corpus"
        if args.corpus is None:
            err.print(f"corpus: {args.studies} studies into {corpus}")
            gen = ["corpus", str(corpus), "--seed", str(args.seed), "--studies", str(args.studies)]
            gen += ["--small"] * args.small
            gen += ["--slices", str(args.slices)] if args.slices else []
            bench(args.bench_tree, gen, work / "corpus.log")
        instances = corpus_instances(corpus)
        results = []
        for name in args.targets:
            err.print(f"{name}: {', '.join(args.phases)} of {instances} instances, "
                      f"{'/'.join(map(str, args.associations))} associations ...")
            result = run_target(name, corpus, instances, work, args.bench_tree,
                                associations=args.associations, workers=args.workers,
                                series=args.series, repeat=args.repeat, phases=args.phases,
                                rounds=args.rounds, sender=args.sender)  # fmt: skip
            err.print("  ok" if not result.errors else f"  [red]{'; '.join(result.errors)}")
            results.append(result)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    title = (f"{instances} instances, {'/'.join(map(str, args.associations))} associations; "
             "(ratio) = how many times better we are")  # fmt: skip
    header, cells = rows(results)
    summary = rows(results, headline(results))[1]
    out.print(rich_table(header, cells, title))
    out.print(rich_table(header, summary, "summary: " + title))
    for r in results:
        for line in r.errors:
            out.print(f"[red]{r.target}:[/] {line}")
    out.print(f"command: {command}")
    ok = all(not r.errors for r in results)
    report = {"date": started, "machine": info, "command": command, "instances": instances,
              "settings": {"associations": args.associations, "workers": args.workers,
                           "targets": args.targets, "studies": args.studies,
                           "small": args.small, "phases": args.phases, "rounds": args.rounds,
                           "sender": args.sender},
              "ok": ok, "results": [r.as_json() for r in results]}  # fmt: skip
    if args.json:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    if args.update_benchmarks_md:
        ingest_only = not {"query", "retrieve"} & set(args.phases)
        update_section("compare_ingest" if ingest_only else "compare",
                       _markdown(report, header, summary, cells, ingest_only))  # fmt: skip
    return 0 if ok else 1


def _markdown(report: dict[str, Any], header: list[str], summary: list[list[str]],
              cells: list[list[str]], ingest_only: bool = False) -> str:  # fmt: skip
    title = ("## Ingest: C-STORE through every archive, and the storage it takes "
             "(`benchmarks/compare.py --phases ingest,storage`)" if ingest_only else
             "## DIMSE and DICOMweb: `pacs bench` against every archive (`benchmarks/compare.py`)")
    return "\n\n".join([
        title,
        f"Measured {report['date']}: {report['instances']} instances, "
        f"{'/'.join(map(str, report['settings']['associations']))} associations, "
        f"{report['settings']['rounds']} round(s) each (the median kept), sender "
        f"{report['settings']['sender']}. {machine_line(report['machine'])}",
        f"```\n{report['command']}\n```",
        "(ratio) = how many times better we are than that target: ours/theirs for rates, "
        "theirs/ours for latencies and CPU; above 1 we win.",
        "Summary:", markdown_table(header, summary),
        "Every metric (`pacs bench`'s names; p50/p99 are per query or per series):",
        markdown_table(header, cells),
        *(f"- {r['target']}: {e}" for r in report["results"] for e in r["errors"]),
    ])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
