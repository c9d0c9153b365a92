"""``pacs bench ingest``: send a corpus over N concurrent associations, time every C-STORE.

Two senders:

``storescu`` (the default where DCMTK is installed)
    N ``/usr/bin/storescu`` processes, one association each, with
    ``TCP_NODELAY=1``. Each logs through a log4cplus pattern with
    microsecond timestamps; the latency of an instance is the time from its
    "Sending Store Request" line to its "Received Store Response" line.
    The sender's CPU is each process's rusage (``os.wait4``) plus what this
    process spent reading their logs.
``internal``
    N threads of :mod:`engine.dimse` associations sending the file's
    bytes after its meta header as they are; latency is ``perf_counter``
    around request and response, CPU is each thread's ``thread_time``.

Rates count from the first C-STORE request to the last response (storescu
reads every file before it connects: the sender's time, not the archive's);
the whole wall time is kept in the details.

Why the sender is not the bottleneck: the result carries the sender's CPU
per instance next to the wall time per instance per association. When the
first is a small fraction of the second, each association spent most of its
time waiting for the server (``sender_busy_share``). ``sender_cores_used``
is the sender's CPU over the wall time: the internal sender's threads share
one interpreter lock, so near 1.0 it, not the server, sets the pace.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import dimse
from engine.bench.corpus import MULTIFRAME_SOP_CLASS, SOP_CLASSES
from engine.bench.report import metric, percentile
from engine.bench.target import Target

STORESCU = "/usr/bin/storescu"
ARG_MAX_BYTES = 1 << 20  # file lists longer than this go to storescu as folders
STORESCU_TIMEOUT_S = 24 * 3600.0
# storescu proposes uncompressed syntaxes unless told which compressed one to add
STORESCU_SYNTAX_OPTION = {
    "explicit": [],
    "implicit": [],
    "rle": ["-xr"],
    "jpeg-ls": ["-xt"],
    "jpeg2000": ["-xv"],
    "jpeg-baseline": ["-xy"],
}
DCMTK_LOG_CONFIG = """\
log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%s.%Q} %p: %m%n
"""
# "1795893215.174.267 INFO: Sending Store Request (MsgID 1, CT)": seconds.milli.micro
DCMTK_LOG_LINE = re.compile(r"^(\d+)\.(\d{3})\.(\d{3}) (\w+): (.*)$")


def log_time(m: re.Match[str]) -> float:
    """Epoch seconds of a DCMTK_LOG_LINE match."""
    return int(m[1]) + int(m[2]) / 1e3 + int(m[3]) / 1e6


@dataclass(slots=True)
class Tally:
    """What one association (or all of them) did."""

    sent: int = 0
    stored: int = 0
    failures: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    nbytes: int = 0
    first_send: float = math.inf  # epoch seconds of the first request, the last response
    last_response: float = -math.inf

    def add(self, other: Tally) -> None:
        self.first_send = min(self.first_send, other.first_send)
        self.last_response = max(self.last_response, other.last_response)
        self.sent += other.sent
        self.stored += other.stored
        self.failures += other.failures
        self.latencies_s += other.latencies_s
        self.cpu_s += other.cpu_s
        self.nbytes += other.nbytes


def corpus_files(root: Path, manifest: dict[str, Any] | None) -> list[Path]:
    """The files to send: the manifest's, or every file under `root`, in a stable order."""
    if manifest is not None:
        return [root / f["path"] for f in manifest["files"]]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json")


def split(files: Sequence[Path], n: int) -> list[list[Path]]:
    """Round-robin by series folder, so each association sends whole series in order."""
    by_folder: dict[Path, list[Path]] = {}
    for f in files:
        by_folder.setdefault(f.parent, []).append(f)
    groups: list[list[Path]] = [[] for _ in range(n)]
    if len(by_folder) >= n:
        for folder in sorted(by_folder, key=lambda k: -len(by_folder[k])):
            min(groups, key=len).extend(by_folder[folder])
    else:  # fewer series than associations: deal the files out one by one
        for i, f in enumerate(files):
            groups[i % n].append(f)
    return [g for g in groups if g]


# -- DCMTK storescu -------------------------------------------------------------------


def run_storescu(
    target: Target, groups: list[list[Path]], syntax: str, advance: Callable[[int], None]
) -> Tally:
    """One storescu per group, all at once; their log lines give each instance's latency."""
    if not Path(STORESCU).is_file():
        raise FileNotFoundError(f"{STORESCU} is missing: install DCMTK or use --sender internal")
    env = dict(os.environ, TCP_NODELAY="1")  # Debian's DCMTK waits 40 ms per message without it
    with tempfile.TemporaryDirectory(prefix="pacs-bench-") as tmp:
        config = Path(tmp) / "log.cfg"
        config.write_text(DCMTK_LOG_CONFIG)
        procs = []
        for group in groups:
            cmd = [
                STORESCU,
                "-lc",
                str(config),
                "-nh",
                "-aet",
                target.calling,
                "-aec",
                target.ae_title,
                *STORESCU_SYNTAX_OPTION.get(syntax, []),
                target.host,
                str(target.port),
                *_storescu_inputs(group, Path(tmp)),
            ]
            procs.append(
                subprocess.Popen(
                    cmd,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=env,
                    text=True,
                    bufsize=1,
                )
            )
        with ThreadPoolExecutor(max_workers=len(procs)) as pool:
            tallies = list(
                pool.map(
                    lambda p: _follow(p[0], len(p[1]), advance), zip(procs, groups, strict=True)
                )
            )
    total = Tally()
    for t in tallies:
        total.add(t)
    return total


def _storescu_inputs(group: list[Path], tmp: Path) -> list[str]:
    names = [str(p) for p in group]
    if sum(len(n) + 1 for n in names) < ARG_MAX_BYTES:
        return names
    # too long for a command line: hand storescu the series folders (scanned, not recursed)
    folders = list(dict.fromkeys(str(p.parent) for p in group))
    return ["+sd", *folders]


def _follow(proc: subprocess.Popen[str], expected: int, advance: Callable[[int], None]) -> Tally:
    tally = Tally(sent=expected)
    sent_at: float | None = None
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        # most lines ("Sending file", "Converting transfer syntax") matter not: skip them cheaply
        if "Store " not in line and "ERROR" not in line and "FATAL" not in line:
            continue
        m = DCMTK_LOG_LINE.match(line)
        if not m:
            continue
        at = log_time(m)
        level, text = m[4], m[5]
        if text.startswith("Sending Store Request"):
            sent_at = at
            tally.first_send = min(tally.first_send, at)
        elif text.startswith("Received Store Response"):
            tally.last_response = at
            if sent_at is not None:
                tally.latencies_s.append(at - sent_at)
                sent_at = None
            if "Success" in text or "Warning" in text:
                tally.stored += 1
            else:
                tally.failures.append(text)
            advance(1)
        elif level in ("ERROR", "FATAL"):
            tail.append(text)
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    tally.cpu_s = usage.ru_utime + usage.ru_stime
    missing = expected - tally.stored - len(tally.failures)
    if missing > 0:
        reason = "; ".join(tail[-3:]) or f"storescu exited with {proc.returncode}"
        tally.failures += [f"not sent: {reason}"] * missing
    return tally


# -- the internal sender ------------------------------------------------------------------


def storage_contexts(
    manifest: dict[str, Any] | None, parts: Sequence[dimse.Part10] = ()
) -> list[tuple[str, list[str]]]:
    """Presentation contexts for the corpus: its SOP classes, each with its transfer syntax.

    The files are sent as they are, so each context proposes exactly one syntax: the files'.
    """
    if manifest is not None:
        ts = manifest["transfer_syntax_uid"]
        return [(c, [ts]) for c in [*map(str, SOP_CLASSES.values()), str(MULTIFRAME_SOP_CLASS)]]
    pairs: dict[str, list[str]] = {}
    for p in parts:
        found = pairs.setdefault(p.sop_class_uid, [])
        if p.transfer_syntax_uid not in found:
            found.append(p.transfer_syntax_uid)
    # one context per (class, syntax) pair: the peer picks one syntax per context
    return [(c, [ts]) for c, syntaxes in pairs.items() for ts in syntaxes]


def run_internal(
    target: Target,
    groups: list[list[Path]],
    contexts: list[tuple[str, list[str]]],
    advance: Callable[[int], None],
) -> Tally:
    """One thread per group, each with its own lean association."""
    with ThreadPoolExecutor(max_workers=len(groups)) as pool:
        tallies = list(pool.map(lambda g: _send_group(target, g, contexts, advance), groups))
    total = Tally()
    for t in tallies:
        total.add(t)
    return total


def _send_group(
    target: Target,
    group: list[Path],
    contexts: list[tuple[str, list[str]]],
    advance: Callable[[int], None],
) -> Tally:
    tally = Tally(sent=len(group))
    cpu0 = time.thread_time()
    try:
        with dimse.Association.open(target, contexts) as assoc:
            for path in group:
                _store_one(assoc, path, tally)
                advance(1)
    except (OSError, dimse.DimseError) as exc:
        done = tally.stored + len(tally.failures)
        tally.failures += [f"not sent: {exc}"] * (len(group) - done)
    tally.cpu_s = time.thread_time() - cpu0
    return tally


def _store_one(assoc: dimse.Association, path: Path, tally: Tally) -> None:
    part = dimse.read_part10(path)
    try:
        cid = assoc.context_for(part.sop_class_uid, part.transfer_syntax_uid)
    except dimse.DimseError as exc:
        tally.failures.append(f"{path.name}: {exc}")
        return
    command = dimse.request(
        dimse.C_STORE_RQ,
        assoc.next_message_id(),
        part.sop_class_uid,
        sop_instance_uid=part.sop_instance_uid,
    )
    tally.first_send = min(tally.first_send, time.time())
    t0 = time.perf_counter()
    assoc.send(cid, command, part.dataset)
    rsp = assoc.read_message()
    tally.latencies_s.append(time.perf_counter() - t0)
    tally.last_response = time.time()
    if rsp.status == 0 or rsp.status in dimse.WARNING_STATUSES:
        tally.stored += 1
        tally.nbytes += len(part.data)
    else:
        tally.failures.append(f"{path.name}: status {rsp.status:#06x}")


# -- the run ---------------------------------------------------------------------------------


def ingest(
    target: Target,
    root: Path,
    manifest: dict[str, Any] | None,
    *,
    associations: int,
    sender: str,
    progress: Any = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send the corpus; (metrics, details) for :func:`engine.bench.report.result`."""
    files = corpus_files(root, manifest)
    if not files:
        raise ValueError(f"no files under {root}: write one with `pacs bench corpus {root}`")
    if sender == "auto":
        sender = "storescu" if Path(STORESCU).is_file() else "internal"
    groups = split(files, max(1, associations))
    task = progress.add_task(f"ingest ({sender})", total=len(files)) if progress else None
    lock = threading.Lock()

    def advance(n: int) -> None:
        if progress is not None:
            with lock:
                progress.advance(task, n)

    nbytes = (
        sum(f["bytes"] for f in manifest["files"])
        if manifest
        else sum(p.stat().st_size for p in files)
    )
    t0, cpu0 = time.perf_counter(), time.process_time()
    if sender == "storescu":
        syntax = manifest["syntax"] if manifest else "explicit"
        tally = run_storescu(target, groups, syntax, advance)
    elif sender == "internal":
        parts = [] if manifest else [dimse.read_part10(p, meta_only=True) for p in files]
        tally = run_internal(target, groups, storage_contexts(manifest, parts), advance)
    else:
        raise ValueError(f"unknown sender {sender!r}: auto, storescu or internal")
    wall_s = time.perf_counter() - t0
    if sender == "storescu":  # our own process only reads their logs: count it with them
        tally.cpu_s += time.process_time() - cpu0
    # rates count from the first request to the last response: storescu reads every file
    # before it connects, and that is the sender's time, not the archive's
    window_s = tally.last_response - tally.first_send
    seconds = window_s if 0 < window_s <= wall_s else wall_s
    metrics, details = _figures(tally, seconds, nbytes, len(groups), sender, len(files))
    details["wall_s_with_sender_startup"] = round(wall_s, 6)
    return metrics, details


def _figures(
    tally: Tally, seconds: float, nbytes: int, associations: int, sender: str, files: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    stored = tally.stored
    sent_bytes = nbytes * stored / files if files else 0
    wall_per_instance = seconds * associations / stored if stored else 0.0
    cpu_per_instance = tally.cpu_s / stored if stored else 0.0
    ms = [x * 1e3 for x in tally.latencies_s]
    metrics = {
        "instances": metric(stored, "instances"),
        "failures": metric(len(tally.failures), "instances", "lower"),
        "seconds": metric(seconds, "s", "lower"),
        "instances_per_s": metric(stored / seconds if seconds else 0, "instances/s"),
        "mb_per_s": metric(sent_bytes / 1e6 / seconds if seconds else 0, "MB/s"),
        "latency_p50_ms": metric(percentile(ms, 50), "ms", "lower"),
        "latency_p99_ms": metric(percentile(ms, 99), "ms", "lower"),
        "sender_cpu_ms_per_instance": metric(cpu_per_instance * 1e3, "ms", "lower"),
        "wall_ms_per_instance_per_association": metric(wall_per_instance * 1e3, "ms", "lower"),
        "sender_cores_used": metric(tally.cpu_s / seconds if seconds else 0, "cores", "lower"),
        "sender_busy_share": metric(
            cpu_per_instance / wall_per_instance if wall_per_instance else 0, "fraction", "lower"
        ),
    }
    latency_source = (
        "storescu log timestamps: 'Sending Store Request' to 'Received Store "
        "Response', microseconds"
        if sender == "storescu"
        else "internal sender: perf_counter around each C-STORE request and response"
    )
    details = {
        "sender": sender,
        "associations": associations,
        "files": files,
        "bytes": nbytes,
        "latency_source": latency_source,
        "failures": tally.failures[:20],
    }
    return metrics, details
