"""The live replica (issue 18): its lag under a full-speed ingest, what it costs the primary,
and promotion at a million instances.

Usage (from the repository root)::

    # the default: 8 CT series of 500 slices of 512x512 (2 GB), three times each way
    python benchmarks/replica_bench.py

    # the issue's run: promotion at a million small instances too (about an hour)
    python benchmarks/replica_bench.py --promote-instances 1000000 \\
        --json replica.json --update-benchmarks-md

Every archive is a real ``pacs serve`` on loopback (``durability = "fsync"``),
fed by ``--processes`` DCMTK ``storescu`` at once. The primary has a user with
the ``replicate`` role; the replica is ``pacs serve`` with a ``[replica]``
table naming it, started before the ingest. Client, primary and replica
share the machine's cores, unless ``--replica-cores N`` gives the replica N
cores of its own and the primary and storescu the others, in both kinds of
run, and ``--replica-dir`` puts the replica's data on another disk (or
tmpfs): with both, a replica on another machine but for loopback and the
memory bus, which is what the issue's "must not slow the primary by more
than 10 %" is about.

- **Lag.** While the ingest runs, a sampler reads both archives' index
  (LMDB, read-only, every ``--sample-ms``) and notes when the primary's
  instance count and the replica's reach each value. The lag of the n-th
  instance is the time from the primary committing it (before it
  acknowledged it) to the replica holding n instances: p50, p99 and max
  over the corpus, to within one sampling period.
- **Cost to the primary.** The same corpus goes to a fresh primary alone and
  to a fresh primary followed by a replica, ``--rounds`` times each,
  alternating: acknowledged instances/s (best and median of the rounds), the
  primary's CPU per instance (its whole process tree, from ``/proc``) and
  the replica's.
- **Promotion** (``--promote-instances N``): N small instances (8x8 CT
  slices, studies of ``--per-study``, generated first, not timed) go to a
  primary that a replica follows; once the replica holds all N, the
  primary's whole process tree is SIGKILLed and ``pacs promote`` runs on the
  replica: the command's time, and the time from its start to the first
  C-STORE the promoted replica accepts. The ingest's lag figures are given
  for small instances too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import orjson
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_ingest import tree_pids
from loader import send, write_ct_series, write_small
from peers import CALLING_AE, Peer, _python_env, missing_message, start_peer
from report import (
    add_run_arguments,
    command_line,
    fmt_value,
    machine_info,
    machine_line,
    markdown_table,
    now_utc,
    rich_table,
    update_section,
    work_dir,
)

REPLICA_USER, REPLICA_PASSWORD = "replica", "bench-replica-secret"
CATCH_UP_TIMEOUT_S = 3600.0
PROMOTE_STORE_TIMEOUT_S = 120.0
ALONE, FOLLOWED = "primary alone", "primary + replica"

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


# -- the archives -----------------------------------------------------------------------


def primary_config() -> str:
    from engine.credentials import hash_password

    return (f"[auth.users.{REPLICA_USER}]\npassword = \"{hash_password(REPLICA_PASSWORD)}\"\n"
            'roles = ["replicate"]\n')  # fmt: skip


def replica_config(primary: Peer) -> str:
    assert primary.http_url is not None
    root = primary.http_url.removesuffix("/dicom-web")
    return (f'[replica]\nprimary = "{root}"\nuser = "{REPLICA_USER}"\n'
            f'password = "{REPLICA_PASSWORD}"\n')  # fmt: skip


def start_pair(work: Path, args: argparse.Namespace) -> tuple[Peer, Peer]:
    """A primary and a replica following it, both answering (the replica on
    `args.replica_cpus` when set, under `args.replica_root`)."""
    primary = start_peer("pacs", work / "primary", workers=args.workers,
                         config_extra=primary_config())  # fmt: skip
    try:
        replica = start_peer("pacs", args.replica_root / "replica", workers=args.workers,
                             config_extra=replica_config(primary),
                             cpus=args.replica_cpus)  # fmt: skip
    except BaseException:
        primary.stop()
        raise
    return primary, replica


def kill_tree(peer: Peer) -> None:
    """SIGKILL a server and every process under it: a power cut, as far as it can tell."""
    for pid in tree_pids(peer.proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    peer.proc.wait()


# -- the sampler ------------------------------------------------------------------------


class Counts:
    """The instance count of one archive's index, read without disturbing its server."""

    def __init__(self, data: Path) -> None:
        self.env = lmdb.open(str(data / "index"), readonly=True, lock=True, max_dbs=32)
        self.instances = self.env.open_db(b"instances", create=False)

    def __call__(self) -> int:
        try:
            with self.env.begin() as txn:
                return int(txn.stat(self.instances)["entries"])
        except lmdb.MapResizedError:  # the server grew its map: adopt the new size
            self.env.set_mapsize(0)
            return self()

    def close(self) -> None:
        self.env.close()


class Sampler(threading.Thread):
    """Both archives' instance counts every `period_s`, with the time they were read."""

    def __init__(self, primary: Peer, replica: Peer, period_s: float) -> None:
        super().__init__(daemon=True)
        self.counts = (Counts(primary.data or primary.work), Counts(replica.data or replica.work))
        self.period_s = period_s
        self.samples: list[tuple[float, int, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            t = time.perf_counter()
            self.samples.append((t, self.counts[0](), self.counts[1]()))
            self.halt.wait(max(0.0, self.period_s - (time.perf_counter() - t)))

    def replica_holds(self, want: int, timeout_s: float) -> bool:
        """Wait until the replica holds `want` instances; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.samples and self.samples[-1][2] >= want:
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self.halt.set()
        self.join()
        for c in self.counts:
            c.close()

    def lags_s(self, base: tuple[int, int], instances: int) -> np.ndarray:
        """For each of the `instances` stored since `base` (the counts before the ingest), the
        seconds from the primary holding it to the replica holding as many."""
        t = np.array([s[0] for s in self.samples])
        primary = np.array([s[1] for s in self.samples]) - base[0]
        replica = np.array([s[2] for s in self.samples]) - base[1]
        n = np.arange(1, instances + 1)
        committed = np.searchsorted(np.maximum.accumulate(primary), n)
        applied = np.searchsorted(np.maximum.accumulate(replica), n)
        if applied.max() >= len(t) or committed.max() >= len(t):
            raise RuntimeError("the samples end before the replica held every instance")
        return t[applied] - t[committed]


def lag_figures(lags: np.ndarray) -> dict[str, float]:
    return {"p50": float(np.percentile(lags, 50)), "p99": float(np.percentile(lags, 99)),
            "max": float(lags.max())}  # fmt: skip


# -- the runs ---------------------------------------------------------------------------


@dataclass
class Run:
    """One ingest of the corpus into a primary, alone or followed."""

    kind: str
    rate: float = 0.0  # acknowledged/s
    primary_cpu_ms: float = 0.0
    replica_cpu_ms: float | None = None
    lags_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def ingest_alone(folders: Sequence[Path], instances: int, work: Path,
                 args: argparse.Namespace) -> Run:  # fmt: skip
    run = Run(ALONE)
    peer = start_peer("pacs", work / "alone", workers=args.workers, config_extra=primary_config())
    try:
        cpu0 = peer.cpu_s()
        seconds, run.errors = send(peer, folders, processes=args.processes, log_dir=work)
        run.rate = instances / seconds
        run.primary_cpu_ms = (peer.settled_cpu_s() - cpu0) * 1000 / instances
    finally:
        peer.stop()
    return run


def ingest_followed(folders: Sequence[Path], instances: int, work: Path,
                    args: argparse.Namespace) -> Run:  # fmt: skip
    run = Run(FOLLOWED)
    primary, replica = start_pair(work / "pair", args)
    sampler = Sampler(primary, replica, args.sample_ms / 1000)
    try:
        sampler.start()
        cpu0 = (primary.cpu_s(), replica.cpu_s())
        seconds, run.errors = send(primary, folders, processes=args.processes, log_dir=work)
        run.rate = instances / seconds
        if not sampler.replica_holds(instances, CATCH_UP_TIMEOUT_S):
            run.errors.append(f"the replica holds {sampler.samples[-1][2]} of {instances}")
            return run
        run.primary_cpu_ms = (primary.settled_cpu_s() - cpu0[0]) * 1000 / instances
        run.replica_cpu_ms = (replica.settled_cpu_s() - cpu0[1]) * 1000 / instances
        run.lags_s = sampler.lags_s((0, 0), instances).tolist()
    finally:
        sampler.stop()
        replica.stop()
        primary.stop()
    return run


def store_one(peer: Peer, path: Path) -> bool:
    """Whether `peer` answered a C-STORE of `path` with Success (a replica: 0x0124)."""
    from pydicom import dcmread
    from pynetdicom import AE

    ds = dcmread(path)
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", peer.dicom_port, ae_title=peer.ae_title)
    try:
        if not assoc.is_established:
            return False
        status = assoc.send_c_store(ds)
        return bool(status) and int(status.Status) == 0
    finally:
        # a replica restarting its workers on promotion resets our connection, and
        # pynetdicom then leaves the socket to the collector: close it here
        raw = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.close()


def promote_at_scale(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Fill a followed primary with small instances, kill it, promote the replica."""
    total = args.promote_instances
    studies = -(-total // args.per_study)
    err.print(f"promotion: writing {studies * args.per_study:,} small instances ...")
    folders, _ = write_small(work / "small", seed=args.seed, first_study=0, studies=studies,
                             per_study=args.per_study, folders=args.processes * 4)  # fmt: skip
    extra, _ = write_small(work / "after", seed=args.seed, first_study=studies, studies=1,
                           per_study=1, folders=1)  # fmt: skip
    instances = studies * args.per_study
    result: dict[str, Any] = {"instances": instances, "errors": []}
    primary, replica = start_pair(work / "scale", args)
    sampler = Sampler(primary, replica, args.sample_ms / 1000)
    try:
        sampler.start()
        err.print(f"promotion: storing {instances:,} into the primary, the replica following ...")
        seconds, failures = send(primary, folders, processes=args.processes, log_dir=work)
        result["errors"] += failures
        result["acknowledged/s"] = instances / seconds
        if not sampler.replica_holds(instances, CATCH_UP_TIMEOUT_S):
            result["errors"].append(f"the replica holds {sampler.samples[-1][2]} of {instances}")
            return result
        lags = sampler.lags_s((0, 0), instances)
        result["lag_s"] = lag_figures(lags)
        kill_tree(primary)
        err.print("promotion: primary killed; pacs promote ...")
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "engine.cli", "promote",
                               str(replica.data), "--json"], env=_python_env(),
                              capture_output=True, check=False)  # fmt: skip
        result["promote_command_s"] = time.perf_counter() - t0
        if done.returncode != 0:
            result["errors"].append(f"pacs promote exited {done.returncode}: {done.stderr!r}")
            return result
        result["promote"] = orjson.loads(done.stdout)
        deadline = time.monotonic() + PROMOTE_STORE_TIMEOUT_S
        while not store_one(replica, next(extra[0].iterdir())):
            if time.monotonic() > deadline:
                result["errors"].append("the promoted replica refused stores")
                return result
            time.sleep(0.01)
        result["first_store_s"] = time.perf_counter() - t0
    finally:
        sampler.stop()
        replica.stop()
        if primary.proc.poll() is None:
            primary.stop()
        else:
            primary.log_file.close()
    held = result.get("promote", {}).get("instances")
    if held is not None and held != instances:
        result["errors"].append(f"the promoted replica holds {held} of {instances} instances")
    return result


# -- the report -------------------------------------------------------------------------


def summary_rows(runs: Sequence[Run], promotion: dict[str, Any] | None) -> list[list[str]]:
    alone = [r for r in runs if r.kind == ALONE and not r.errors]
    followed = [r for r in runs if r.kind == FOLLOWED and not r.errors]
    rows: list[list[str]] = []

    def add(figure: str, value: float | None, note: str = "") -> None:
        rows.append([figure, fmt_value(value), note])

    for name, group in ((ALONE, alone), (FOLLOWED, followed)):
        rates = [r.rate for r in group]
        if rates:
            add(
                f"{name}: acknowledged/s, best",
                max(rates),
                f"median {fmt_value(statistics.median(rates))}",
            )
            add(f"{name}: primary CPU ms/instance, median",
                statistics.median(r.primary_cpu_ms for r in group))  # fmt: skip
    if alone and followed:
        best = max(r.rate for r in followed) / max(r.rate for r in alone)
        add("primary ingest with a replica, % of alone (best of each)", best * 100,
            "aim: at least 90")  # fmt: skip
    if followed:
        lags = np.concatenate([np.array(r.lags_s) for r in followed])
        add(
            "replica CPU ms/instance, median",
            statistics.median(r.replica_cpu_ms or 0.0 for r in followed),
        )
        add("replica lag p50 s", float(np.percentile(lags, 50)))
        add("replica lag p99 s", float(np.percentile(lags, 99)), "aim: under 1")
        add("replica lag max s", float(lags.max()))
    if promotion and "lag_s" in promotion:
        n = f"{promotion['instances']:,} small"
        add(f"{n}: acknowledged/s, replica following", promotion.get("acknowledged/s"))
        add(f"{n}: replica lag p99 s", promotion["lag_s"]["p99"])
        add(f"{n}: replica lag max s", promotion["lag_s"]["max"])
        add(f"{n}: pacs promote s (primary killed)", promotion.get("promote_command_s"),
            "aim: under 10")  # fmt: skip
        add(f"{n}: first store accepted after promote started, s", promotion.get("first_store_s"))
    return rows


def split_cores(replica_cores: int) -> set[int] | None:
    """The replica's cores, the last `replica_cores` of ours; the rest stay ours.

    What this process starts from then on (the primary, storescu) inherits
    the rest (until the caller gives it back its cores); None, and nothing
    pinned, when `replica_cores` is 0.
    """
    cores = sorted(os.sched_getaffinity(0))
    if not replica_cores:
        return None
    if replica_cores >= len(cores):
        raise SystemExit(f"--replica-cores {replica_cores}: this machine has {len(cores)} cores")
    os.sched_setaffinity(0, cores[:-replica_cores])
    return set(cores[-replica_cores:])


def placement(cores: set[int], args: argparse.Namespace) -> str:
    """Where the replica ran, for the title."""
    if args.replica_cpus is None:
        where = f"primary, replica and storescu share the same {len(cores)} cores"
    else:
        where = (f"the replica on {len(args.replica_cpus)} core(s) of its own, the primary and "
                 f"storescu on the other {len(cores - args.replica_cpus)}")  # fmt: skip
    if args.replica_dir is not None:
        where += f", the replica's data under {args.replica_dir} (not the primary's disk)"
    return where


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="replica_bench.py", description=__doc__.split("\n")[0])
    p.add_argument("--series", type=int, default=8, help="CT series in the corpus")
    p.add_argument("--slices", type=int, default=500, help="slices per series")
    p.add_argument("--rows", type=int, default=512, help="rows and columns of a slice")
    p.add_argument("--processes", type=int, default=2, help="storescu sending at once")
    p.add_argument("--rounds", type=int, default=3, help="ingests each way, alternating")
    p.add_argument("--sample-ms", type=float, default=10.0, help="the sampler's period")
    p.add_argument("--promote-instances", type=int, default=0,
                   help="small instances for the promotion run (0: no promotion run)")  # fmt: skip
    p.add_argument("--per-study", type=int, default=10, help="small instances per study")
    p.add_argument("--replica-cores", type=int, default=0,
                   help="give the replica this many cores of its own, the primary and storescu "
                        "the others, as if it ran on another machine (but for the disk); "
                        "0: all share every core")  # fmt: skip
    p.add_argument("--replica-dir", type=Path,
                   help="parent of the replica's folder: on another disk (or tmpfs), its writes "
                        "stay off the primary's disk")  # fmt: skip
    p.add_argument("--seed", type=int, default=18)
    p.add_argument("--work-dir", type=Path, help="parent of the run's temporary folder")
    add_run_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every run held every instance, else 1."""
    args = build_parser().parse_args(argv)
    command = command_line("replica_bench.py", argv)
    missing = missing_message(["pacs", "storescp"])
    if missing:
        err.print(f"[red]error:[/] {missing}")
        return 2
    ours = os.sched_getaffinity(0)
    work = work_dir(args.work_dir, "pacs-replica-")
    args.replica_root = work_dir(args.replica_dir, "pacs-replica-") if args.replica_dir else work
    started = now_utc()
    instances = args.series * args.slices
    runs: list[Run] = []
    promotion = None
    try:
        info = machine_info(work, ["pacs"])
        args.replica_cpus = split_cores(args.replica_cores)
        err.print(
            f"corpus: {args.series} CT series of {args.slices} slices ({args.rows}x{args.rows})"
        )
        folders = [work / "corpus" / f"series{k:02d}" for k in range(args.series)]
        for k, folder in enumerate(folders):
            write_ct_series(folder, seed=args.seed + k, slices=args.slices, rows=args.rows)
        for r in range(args.rounds):
            for fn in (ingest_alone, ingest_followed):
                runs.append(fn(folders, instances, work, args))
                run = runs[-1]
                lag = f", lag p99 {np.percentile(run.lags_s, 99):.3f} s" if run.lags_s else ""
                err.print(f"round {r + 1}: {run.kind}: {run.rate:.0f}/s{lag}"
                          + (f" [red]{run.errors}" if run.errors else ""))  # fmt: skip
        shutil.rmtree(work / "corpus", ignore_errors=True)
        if args.promote_instances:
            promotion = promote_at_scale(work, args)
            if promotion["errors"]:
                err.print(f"[red]promotion: {promotion['errors']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(args.replica_root, ignore_errors=True)
        os.sched_setaffinity(0, ours)
    rows = summary_rows(runs, promotion)
    header = ["figure", "value", "note"]
    title = (f"A live replica: {instances:,} CT slices ({args.series} series, "
             f"{args.rows}x{args.rows}) from {args.processes} storescu, {args.rounds} rounds "
             f"each way; {placement(ours, args)}")  # fmt: skip
    out.print(rich_table(header, rows, title))
    out.print(f"command: {command}")
    ok = all(not r.errors for r in runs) and not (promotion and promotion["errors"])
    report = {"date": started, "machine": info, "command": command, "ok": ok,
              "settings": {k: str(v) if isinstance(v, Path) else sorted(v) if isinstance(v, set)
                           else v for k, v in vars(args).items()},
              "runs": [{"kind": r.kind, "rate": r.rate, "primary_cpu_ms": r.primary_cpu_ms,
                        "replica_cpu_ms": r.replica_cpu_ms, "errors": r.errors,
                        "lag_p99_s": float(np.percentile(r.lags_s, 99)) if r.lags_s else None}
                       for r in runs],
              "promotion": promotion}  # fmt: skip
    if args.json:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    if args.update_benchmarks_md:
        apart = args.replica_cpus is not None or args.replica_dir is not None
        update_section("replica_bench" + ("-apart" if apart else ""), "\n\n".join([
            "## A live replica" + (" kept apart from its primary" if apart else "")
            + ": lag, cost to the primary, promotion (`benchmarks/replica_bench.py`)",
            f"Measured {started}: {title}. {machine_line(info)}",
            f"```\n{command}\n```",
            markdown_table(header, rows),
        ]))  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
