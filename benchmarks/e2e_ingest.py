"""End-to-end ingest benchmark: DCMTK ``storescu`` sending a CT corpus to three servers.

Usage (from the repository root)::

    python benchmarks/e2e_ingest.py --instances 2000 --associations 1,4 \\
        --targets pacs,storescp,pynetdicom --durability fsync --workers 2 --json out.json

One run generates (or reuses, from a cache keyed by seed, size and split) a
CT corpus of 16-bit slices from :func:`engine.synthetic.ct_series`, written
as Part 10 files in Explicit VR Little Endian, one series per folder. Then,
for every association count and every target, it starts the server on a free
loopback port, sends the whole corpus with N concurrent DCMTK ``storescu``
processes (one association each, each sending 1/N of the folders), and stops
the server. Targets:

``pacs``
    ``python -m engine.cli serve DIR --workers W`` (indexing, segment
    writing, and with ``--durability fsync`` an fdatasync before every
    response; ``none`` syncs nothing).
``storescp``
    DCMTK's ``storescp --fork``: writes one file per instance, no fsync, no index.
``pynetdicom``
    pynetdicom's bundled ``storescp`` app: decodes and writes one file per instance.

Each row reports the wall time from the start of the first ``storescu`` to the
exit of the last, instances/s, MB/s (Part 10 bytes sent), the CPU seconds of
the server's whole process tree per instance (from ``/proc``, sampled before
the first send and after the server went idle), and the CPU of the
``storescu`` processes per instance (their rusage). The result is checked:
``pacs stats --json`` instances, or the files written, must equal the number
sent. Any failure is reported in the table and the exit code is 1.

Every DCMTK process runs with ``TCP_NODELAY=1`` in its environment: Debian's
DCMTK otherwise leaves Nagle's algorithm on and each small DIMSE message
waits about 40 ms for a delayed ACK.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `engine` importable
    sys.path.insert(0, str(REPO))

# Absolute paths: pynetdicom installs Python scripts named storescu/storescp on PATH.
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
TARGETS = ("pacs", "storescp", "pynetdicom")
AE_TITLES = {"pacs": "PACS", "storescp": "STORESCP", "pynetdicom": "STORESCP"}
CALLING_AE = "E2EINGEST"
DCMTK_MAX_PDU = 131072  # the largest storescp accepts
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 90.0
SEND_TIMEOUT_S = 1800.0
SETTLE_MAX_S = 5.0  # server CPU is sampled once it goes idle, at most this long after the last exit
SETTLE_STEP_S = 0.25
SETTLE_IDLE_CPU_S = 0.01  # less CPU than this in one step counts as idle
CLK_TCK = os.sysconf("SC_CLK_TCK")

_WIDTH = None if sys.stdout.isatty() else 160  # rich folds to 80 columns when piped
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)
out = Console(highlight=False, width=_WIDTH)


# -- the corpus -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Corpus:
    """A generated corpus on disk: one folder per series.

    Parameters
    ----------
    root
        The cache folder holding the series folders.
    folders
        The series folders, in order.
    counts
        Instances in each folder.
    nbytes
        Total size of the Part 10 files.
    """

    root: Path
    folders: list[Path]
    counts: list[int]
    nbytes: int

    @property
    def instances(self) -> int:
        """Number of instances in the corpus."""
        return sum(self.counts)


def _write_series(folder: str, seed: int, count: int, rows: int) -> int:
    """Write one generated CT series as Part 10 files; return the bytes written."""
    from engine.synthetic import ct_series, encode

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    nbytes = 0
    for i, ds in enumerate(ct_series(seed, count, rows=rows, columns=rows)):
        data = encode(ds)
        (path / f"{i:05d}.dcm").write_bytes(data)
        nbytes += len(data)
    return nbytes


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pacs-engine/e2e-ingest`` (``~/.cache`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pacs-engine" / "e2e-ingest"


def build_corpus(cache_dir: Path, *, seed: int, instances: int, rows: int,
                 folders: int) -> Corpus:  # fmt: skip
    """Generate the corpus once, or reuse the cached one with the same key.

    Parameters
    ----------
    cache_dir
        Where corpora are kept, one subfolder per key.
    seed
        Series ``k`` is ``ct_series(seed + k, ...)``.
    instances
        Total number of slices.
    rows
        Rows and columns of each slice (512 for real CT).
    folders
        How many series (folders) to split the slices into.
    """
    if instances < folders:
        raise ValueError(f"{instances} instances cannot fill {folders} folders")
    root = cache_dir / f"ct-seed{seed}-n{instances}-r{rows}-f{folders}"
    counts = [instances // folders + (k < instances % folders) for k in range(folders)]
    names = [root / f"series{k:02d}" for k in range(folders)]
    done = root / "complete.json"
    if done.is_file():
        meta = orjson.loads(done.read_bytes())
        if meta.get("counts") == counts:
            err.print(f"corpus: reusing {root} ({meta['nbytes'] / 1e6:.0f} MB)")
            return Corpus(root, names, counts, int(meta["nbytes"]))
    err.print(f"corpus: generating {instances} slices of {rows}x{rows} in {folders} series "
              f"into {root}")  # fmt: skip
    t0 = time.perf_counter()
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    jobs = [(str(partial / n.name), seed + k, counts[k], rows) for k, n in enumerate(names)]
    if folders > 1 and instances >= 64:
        with ProcessPoolExecutor(max_workers=min(folders, os.cpu_count() or 1)) as pool:
            sizes = list(pool.map(_write_series, *zip(*jobs, strict=True)))
    else:
        sizes = [_write_series(*job) for job in jobs]
    nbytes = sum(sizes)
    (partial / "complete.json").write_bytes(orjson.dumps({"counts": counts, "nbytes": nbytes}))
    partial.rename(root)
    err.print(f"corpus: {nbytes / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s")
    return Corpus(root, names, counts, nbytes)


def warm(corpus: Corpus) -> None:
    """Read every corpus file once, so that no row pays for cold page cache."""
    for folder in corpus.folders:
        for path in folder.iterdir():
            with path.open("rb") as f:
                while f.read(1 << 20):
                    pass


# -- process accounting ---------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds of the process plus its reaped children)."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_bytes()
        except OSError:  # gone meanwhile
            continue
        fields = raw[raw.rindex(b")") + 2 :].split()
        # fields[0] is field 3 of proc(5): state; ppid 4, utime 14, stime 15, cutime 16, cstime 17
        ticks = sum(int(x) for x in fields[11:15])
        table[int(entry.name)] = (int(fields[1]), ticks / CLK_TCK)
    return table


def tree_pids(root: int) -> list[int]:
    """`root` and all its live (or zombie) descendants."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            found.append(pid)
            todo.extend(children.get(pid, ()))
    return found


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of `root`, its descendants and their reaped children."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            total += table[pid][1]
            todo.extend(children.get(pid, ()))
    return total


def _listening(port: int) -> bool:
    """Whether something listens on TCP `port` (IPv4 or IPv6), without connecting to it."""
    want = f":{port:04X}"
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(name) as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[1].endswith(want) and parts[3] == "0A":  # 0A: LISTEN
                    return True
    return False


def free_port() -> int:
    """A TCP port that is free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def dcmtk_env() -> dict[str, str]:
    """The environment for every DCMTK process: ``TCP_NODELAY=1`` (see the module doc)."""
    return dict(os.environ, TCP_NODELAY="1")


# -- servers ----------------------------------------------------------------------


@dataclass(slots=True)
class Server:
    """A target server started for one row.

    Parameters
    ----------
    target
        ``pacs``, ``storescp`` or ``pynetdicom``.
    proc
        The server process (for pacs: the supervisor).
    port
        Its DICOM port.
    data
        The archive folder (pacs) or output folder (the others).
    log_path
        Its stdout and stderr.
    """

    target: str
    proc: subprocess.Popen[bytes]
    port: int
    data: Path
    log_path: Path
    log_file: IO[bytes]

    def log_tail(self, lines: int = 15) -> str:
        """The end of the server's log."""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def _python_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=str(REPO) + (os.pathsep + path if path else ""))


def start_server(target: str, work: Path, *, workers: int, durability: str) -> Server:
    """Start `target` on a free loopback port and wait until it listens."""
    port = free_port()
    data = work / f"{target}-data"
    data.mkdir()
    env = _python_env()
    if target == "pacs":
        cmd = [sys.executable, "-m", "engine.cli", "serve", str(data), "--host", "127.0.0.1",
               "--dicom-port", str(port), "--workers", str(workers),
               "--http-port", "0"]  # fmt: skip
        if durability != "fsync":
            config = work / "pacs.toml"
            config.write_text(f'[archive]\ndurability = "{durability}"\n')
            cmd += ["--config", str(config)]
    elif target == "storescp":
        # --fork: a child per association (as a site would run it); +xa: every syntax
        cmd = [STORESCP, "--fork", "+xa", "-pdu", str(DCMTK_MAX_PDU), "-aet", "STORESCP",
               "-od", str(data), str(port)]  # fmt: skip
        env = dcmtk_env()
    elif target == "pynetdicom":
        cmd = [sys.executable, "-m", "pynetdicom", "storescp", str(port), "-ba", "127.0.0.1",
               "-aet", "STORESCP", "-pdu", "0", "-od", str(data)]  # fmt: skip
    else:
        raise ValueError(f"unknown target {target!r}")
    log_path = work / f"{target}.log"
    log_file = log_path.open("wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=log_file, stderr=subprocess.STDOUT)  # fmt: skip
    server = Server(target, proc, port, data, log_path, log_file)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stop_server(server)
            raise RuntimeError(f"{target} exited with {proc.returncode} before it listened:\n"
                               f"{server.log_tail()}")  # fmt: skip
        ready = ("listening on" in server.log_path.read_text(errors="replace")
                 if target == "pacs" else _listening(port))  # fmt: skip
        if ready:
            return server
        time.sleep(0.05)
    stop_server(server)
    raise RuntimeError(f"{target} did not listen within {START_TIMEOUT_S:.0f} s:\n"
                       f"{server.log_tail()}")  # fmt: skip


def stop_server(server: Server) -> int | None:
    """SIGTERM the server (pacs stops gracefully), kill it if it hangs; return its exit code."""
    proc = server.proc
    pids = tree_pids(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        err.print(f"[red]{server.target} did not stop in {STOP_TIMEOUT_S:.0f} s: killing it")
        proc.kill()
        proc.wait()
    for pid in pids[1:]:  # descendants this run started, if the server left any behind
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    server.log_file.close()
    return proc.returncode


def stored_count(server: Server) -> int:
    """Instances the server kept: ``pacs stats --json``, or the files it wrote."""
    if server.target == "pacs":
        res = subprocess.run(
            [sys.executable, "-m", "engine.cli", "-A", str(server.data), "stats", "--json"],
            cwd=REPO, env=_python_env(), capture_output=True, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(f"pacs stats failed: {res.stderr.decode(errors='replace')}")
        return int(orjson.loads(res.stdout)["instances"])
    return sum(len(files) for _, _, files in os.walk(server.data))


# -- one row ---------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    """The result of sending the corpus to one target over N associations."""

    target: str
    associations: int
    durability: str | None
    sent: int
    nbytes: int
    stored: int = 0
    wall_s: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    failures: list[str] = field(default_factory=list)
    speedup_of_pacs: float | None = None  # pacs instances/s / this row's, same associations

    @property
    def instances_per_s(self) -> float:
        """Instances sent per second of wall time."""
        return self.sent / self.wall_s if self.wall_s else 0.0

    @property
    def mb_per_s(self) -> float:
        """Part 10 megabytes (1e6) sent per second of wall time."""
        return self.nbytes / 1e6 / self.wall_s if self.wall_s else 0.0

    @property
    def server_ms_per_instance(self) -> float:
        """Server CPU (whole process tree) per instance, in ms."""
        return 1e3 * self.server_cpu_s / self.sent

    @property
    def client_ms_per_instance(self) -> float:
        """storescu CPU (all processes) per instance, in ms."""
        return 1e3 * self.client_cpu_s / self.sent

    def as_json(self) -> dict[str, Any]:
        """The row with its derived figures, for the JSON report."""
        d = asdict(self)
        d.update(
            ok=not self.failures,
            instances_per_s=round(self.instances_per_s, 2),
            mb_per_s=round(self.mb_per_s, 2),
            server_cpu_ms_per_instance=round(self.server_ms_per_instance, 3),
            client_cpu_ms_per_instance=round(self.client_ms_per_instance, 3),
            server_cores=round(self.server_cpu_s / self.wall_s, 3) if self.wall_s else None,
            client_cores=round(self.client_cpu_s / self.wall_s, 3) if self.wall_s else None,
        )
        return d


def split(folders: Sequence[Path], n: int) -> list[list[Path]]:
    """Deal the series folders to `n` senders, round robin."""
    return [list(folders[i::n]) for i in range(n)]


def _settled_cpu(pid: int) -> float:
    """The server tree's CPU once it stops using any (deferred work included)."""
    last = tree_cpu(pid)
    deadline = time.monotonic() + SETTLE_MAX_S
    while time.monotonic() < deadline:
        time.sleep(SETTLE_STEP_S)
        now = tree_cpu(pid)
        if now - last < SETTLE_IDLE_CPU_S:
            return now
        last = now
    return last


def send(server: Server, corpus: Corpus, n: int, work: Path) -> tuple[float, float, list[str]]:
    """Run `n` concurrent storescu; return wall seconds, their CPU seconds and failures."""
    ae = AE_TITLES[server.target]
    procs: list[tuple[subprocess.Popen[bytes], Path, IO[bytes]]] = []
    t0 = time.perf_counter()
    for i, folders in enumerate(split(corpus.folders, n)):
        log_path = work / f"storescu-{server.target}-{n}-{i}.log"
        log = log_path.open("wb")
        cmd = [STORESCU, "-aet", CALLING_AE, "-aec", ae, "+sd", "127.0.0.1", str(server.port),
               *map(str, folders)]  # fmt: skip
        proc = subprocess.Popen(cmd, env=dcmtk_env(), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        procs.append((proc, log_path, log))
    cpu = 0.0
    failures: list[str] = []

    def kill_all() -> None:
        for p, _, _ in procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()

    # blocking waits: the last one returns when the last storescu exits; a timer kills stragglers
    timer = threading.Timer(SEND_TIMEOUT_S, kill_all)
    timer.start()
    try:
        for proc, log_path, out_file in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            t_end = time.perf_counter()
            proc.returncode = os.waitstatus_to_exitcode(status)
            out_file.close()
            cpu += usage.ru_utime + usage.ru_stime
            if proc.returncode != 0:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                failures.append(f"storescu exited with {proc.returncode}: " + " | ".join(tail))
    finally:
        timer.cancel()
    return t_end - t0, cpu, failures


def run_row(target: str, n: int, corpus: Corpus, work: Path, *, workers: int,
            durability: str) -> Row:  # fmt: skip
    """Start `target`, send the corpus over `n` associations, stop it, check the count."""
    row = Row(target, n, durability if target == "pacs" else None, corpus.instances,
              corpus.nbytes)  # fmt: skip
    row_dir = work / f"{target}-{n}"
    row_dir.mkdir()
    os.sync()  # the previous row's dirty pages must not be flushed on this row's time
    try:
        server = start_server(target, row_dir, workers=workers, durability=durability)
    except RuntimeError as exc:
        row.failures.append(str(exc))
        return row
    try:
        before = tree_cpu(server.proc.pid)
        row.wall_s, row.client_cpu_s, failures = send(server, corpus, n, row_dir)
        row.failures += failures
        row.server_cpu_s = _settled_cpu(server.proc.pid) - before
    finally:
        code = stop_server(server)
    if target == "pacs" and code != 0:
        row.failures.append(f"pacs serve exited with {code}: {server.log_tail(5)}")
    try:
        row.stored = stored_count(server)
    except (RuntimeError, OSError, KeyError, ValueError) as exc:
        row.failures.append(f"could not count what was stored: {exc}")
    if row.stored != row.sent:
        row.failures.append(f"stored {row.stored} of {row.sent} instances sent")
    shutil.rmtree(server.data, ignore_errors=True)  # a gigabyte per row
    return row


# -- report -----------------------------------------------------------------------


def _first_line(cmd: Sequence[str]) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)
    except OSError as exc:
        return f"unavailable ({exc})"
    return (res.stdout or res.stderr).strip().splitlines()[0] if res.stdout or res.stderr else ""


def machine_info() -> dict[str, Any]:
    """Where the figures come from: cores, CPU model, versions, commit, load."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    import pynetdicom

    import engine

    log = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %cI"],
                         capture_output=True, text=True, check=False)  # fmt: skip
    commit = log.stdout.strip() if log.returncode == 0 else "unknown (not a git checkout)"
    git_status = ["git", "-C", str(REPO), "status", "--porcelain", "--", "engine", "ext"]
    status = subprocess.run(git_status, capture_output=True, text=True, check=False).stdout
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "dcmtk": _first_line([STORESCU, "--version"]),
        "pynetdicom": pynetdicom.__version__,
        "pacs_engine": engine.__version__,
        "engine_path": str(Path(engine.__file__).parent),
        "git_commit": commit,
        "engine_changes": status.splitlines(),  # uncommitted changes measured along
        "loadavg_at_start": os.getloadavg(),
    }


def fill_ratios(rows: list[Row]) -> None:
    """Set each non-pacs row's ``speedup_of_pacs``: pacs instances/s over its own."""
    pacs = {r.associations: r for r in rows if r.target == "pacs" and not r.failures}
    for r in rows:
        p = pacs.get(r.associations)
        if r.target != "pacs" and p is not None and r.instances_per_s:
            r.speedup_of_pacs = p.instances_per_s / r.instances_per_s


def table(rows: Sequence[Row], title: str) -> Table:
    """The final table, one row per (target, associations)."""
    t = Table(title=title)
    for name in ("target", "assoc", "stored/sent", "wall s", "inst/s", "MB/s",
                 "server CPU ms/inst", "client CPU ms/inst", "cores srv/cli", "pacs ÷ this",
                 "status"):  # fmt: skip
        t.add_column(name, justify="left" if name in ("target", "status") else "right")
    for r in rows:
        name = f"pacs ({r.durability})" if r.target == "pacs" else r.target
        cores = ""
        if r.wall_s:
            cores = f"{r.server_cpu_s / r.wall_s:.2f}/{r.client_cpu_s / r.wall_s:.2f}"
        status = "[green]ok" if not r.failures else "[red]" + "; ".join(r.failures)[:200]
        t.add_row(
            name, str(r.associations), f"{r.stored}/{r.sent}", f"{r.wall_s:.2f}",
            f"{r.instances_per_s:,.0f}", f"{r.mb_per_s:,.0f}", f"{r.server_ms_per_instance:.2f}",
            f"{r.client_ms_per_instance:.2f}", cores,
            f"{r.speedup_of_pacs:.2f}x" if r.speedup_of_pacs else "", status,
        )  # fmt: skip
    return t


# -- entry point ------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("give positive integers, comma separated: 1,4")
    return values


def _targets(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    unknown = set(values) - set(TARGETS)
    if not values or unknown:
        raise argparse.ArgumentTypeError(f"targets are {', '.join(TARGETS)}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The command line (``--rows`` is hidden: small slices, for the tool's own test)."""
    p = argparse.ArgumentParser(prog="e2e_ingest.py", description=__doc__.split("\n")[0])
    p.add_argument("--instances", type=int, default=2000, help="slices in the corpus")
    p.add_argument("--associations", type=_int_list, default=[1, 4],
                   help="concurrent storescu associations, comma separated: 1,4")  # fmt: skip
    p.add_argument("--targets", type=_targets, default=list(TARGETS),
                   help="comma separated: pacs,storescp,pynetdicom")  # fmt: skip
    p.add_argument("--durability", choices=("fsync", "none"), default="fsync",
                   help="pacs durability (default fsync: what the engine promises)")  # fmt: skip
    p.add_argument("--workers", type=int, default=2, help="pacs serve worker processes")
    p.add_argument("--seed", type=int, default=20240)
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                   help="where the generated corpus is kept (default %(default)s)")  # fmt: skip
    p.add_argument("--work-dir", type=Path, help="where servers write (default: a temp dir)")
    p.add_argument("--note", default="", help="free text kept in the JSON: what was measured")
    p.add_argument("--rows", type=int, default=512, help=argparse.SUPPRESS)
    return p


def _missing_tools(targets: Sequence[str]) -> list[str]:
    need = [STORESCU] + ([STORESCP] if "storescp" in targets else [])
    return [tool for tool in need if not os.access(tool, os.X_OK)]


@contextlib.contextmanager
def _work_dir(parent: Path | None) -> Iterator[Path]:
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="pacs-e2e-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every row stored everything it was sent, else 1."""
    args = build_parser().parse_args(argv)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    command = shlex.join(["python", "benchmarks/e2e_ingest.py",
                          *(sys.argv[1:] if argv is None else argv)])  # fmt: skip
    missing = _missing_tools(args.targets)
    if missing:
        err.print(f"[red]error:[/] missing {', '.join(missing)} (apt-get install dcmtk)")
        return 2
    folders = math.lcm(*args.associations)
    corpus = build_corpus(args.cache_dir, seed=args.seed, instances=args.instances,
                          rows=args.rows, folders=folders)  # fmt: skip
    warm(corpus)
    info = machine_info()
    changes = ", ".join(info["engine_changes"])
    changes = f" (uncommitted: {changes})" if changes else ""
    err.print(f"commit {info['git_commit']}{changes}, {info['nproc']} cores, {info['dcmtk']}")
    rows: list[Row] = []
    with _work_dir(args.work_dir) as work:
        for n in args.associations:
            for target in args.targets:
                label = f"{target}{f' ({args.durability})' if target == 'pacs' else ''}"
                err.print(f"{label}, {n} association{'s' * (n > 1)}: sending "
                          f"{corpus.instances} instances ...")  # fmt: skip
                row = run_row(target, n, corpus, work, workers=args.workers,
                              durability=args.durability)  # fmt: skip
                rows.append(row)
                verdict = "ok" if not row.failures else "[red]FAILED: " + "; ".join(row.failures)
                err.print(f"  {row.stored}/{row.sent} in {row.wall_s:.2f} s: "
                          f"{row.instances_per_s:,.0f} inst/s, {row.mb_per_s:,.0f} MB/s, server "
                          f"{row.server_ms_per_instance:.2f} ms CPU/inst, client "
                          f"{row.client_ms_per_instance:.2f} ms CPU/inst: {verdict}")  # fmt: skip
                if row.wall_s and row.client_cpu_s / row.wall_s > 0.8 * min(n, info["nproc"]):
                    err.print("  [yellow]warning: the senders used close to a core per "
                              "association: the client may be the bottleneck")  # fmt: skip
    fill_ratios(rows)
    ok = all(not r.failures for r in rows)
    size = f"{corpus.instances} CT slices {args.rows}x{args.rows} ({corpus.nbytes / 1e6:.0f} MB)"
    out.print(table(rows, f"end-to-end ingest: {size}, storescu -> server, pacs workers "
                          f"{args.workers}, durability {args.durability}"))  # fmt: skip
    out.print(f"command: {command}")
    out.print(f"commit: {info['git_commit']}")
    if args.json:
        report = {
            "date": started,
            "machine": info,
            "command": command,
            "note": args.note,
            "corpus": {
                "instances": corpus.instances,
                "rows": args.rows,
                "columns": args.rows,
                "series": len(corpus.folders),
                "bytes": corpus.nbytes,
                "seed": args.seed,
                "path": str(corpus.root),
            },
            "settings": {
                "workers": args.workers,
                "durability": args.durability,
                "associations": args.associations,
                "targets": args.targets,
            },
            "ok": ok,
            "results": [r.as_json() for r in rows],
        }
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
