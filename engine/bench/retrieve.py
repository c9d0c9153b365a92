"""``pacs bench retrieve``: whole series by C-GET, C-MOVE and WADO-RS: rates and first byte.

C-GET
    One lean association (:mod:`engine.dimse`) offering the SCP role
    for the storage classes (PS3.7 D.3.3.4); each C-STORE sub-operation is
    counted, its data set dropped unread, and answered with success.
    Time to first instance: C-GET-RQ sent to the first C-STORE-RQ read.
C-MOVE (``--move-dest AET``)
    The tool starts DCMTK ``storescp --ignore`` (receives, stores nothing)
    on ``--move-port``; the target must know AET at that port. The count is
    the C-MOVE-RSP's completed sub-operations, checked against the
    receiver's log; time to first instance comes from the receiver's
    "Received Store Request" timestamp.
DCMTK clients (``--dcmtk``, or ``--only getscu|movescu``)
    The same series by ``getscu --ignore`` and by ``movescu`` to the same
    receiver, one process (and association) per series, as a user would run
    them; figures ``getscu.*`` and ``movescu.*``. Times come from the
    clients' log timestamps: a series from "Requesting Association" to
    "Releasing Association" (negotiation included, process start not), the
    first instance from the C-GET/C-MOVE request to the first C-STORE
    (getscu's log; the receiver's for movescu). MB are the manifest's.
WADO-RS (``--http URL``)
    ``GET {URL}/studies/{study}/series/{series}`` as
    ``multipart/related; type="application/dicom"``, streamed; instances are
    the parts counted by their boundary; time to first instance is the
    arrival of the first body bytes.

MB/s counts the data set bytes received (C-GET, WADO-RS: the whole body);
for C-MOVE the bytes the corpus manifest lists for the series, when known.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydicom.dataset import Dataset

from engine import dimse
from engine import pdu as P
from engine.bench.corpus import MULTIFRAME_SOP_CLASS, SOP_CLASSES
from engine.bench.corpus import SYNTAXES as CORPUS_SYNTAXES
from engine.bench.ingest import DCMTK_LOG_CONFIG, DCMTK_LOG_LINE, log_time
from engine.bench.query import STUDY_ROOT_FIND, SYNTAXES, encode_identifier
from engine.bench.report import metric, percentile
from engine.bench.target import Target

STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STORESCP = "/usr/bin/storescp"
GETSCU = "/usr/bin/getscu"
MOVESCU = "/usr/bin/movescu"
DCMTK_CLIENT_TIMEOUT_S = 600.0
RECEIVER_START_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 600.0
_STORAGE_SYNTAXES = [str(uid) for uid in CORPUS_SYNTAXES.values()]


@dataclass(frozen=True, slots=True)
class SeriesRef:
    study_uid: str
    series_uid: str
    instances: int = 0  # from the manifest; 0 when discovered
    nbytes: int = 0


@dataclass(slots=True)
class Samples:
    """Per-series samples of one retrieval method."""

    seconds: list[float] = field(default_factory=list)
    first_s: list[float] = field(default_factory=list)
    instances: int = 0
    nbytes: int = 0
    failures: list[str] = field(default_factory=list)

    def add(self, seconds: float, first_s: float | None, instances: int, nbytes: int) -> None:
        self.seconds.append(seconds)
        if first_s is not None:
            self.first_s.append(first_s)
        self.instances += instances
        self.nbytes += nbytes


def series_from_manifest(manifest: dict[str, Any]) -> list[SeriesRef]:
    sizes: dict[tuple[int, int], int] = {}
    for f in manifest["files"]:
        key = (f["study"], f["series"])
        sizes[key] = sizes.get(key, 0) + f["bytes"]
    return [
        SeriesRef(
            st["StudyInstanceUID"],
            se["SeriesInstanceUID"],
            se["instances"],
            sizes.get((st["index"], k), 0),
        )
        for st in manifest["study_list"]
        for k, se in enumerate(st["series"])
    ]


def _identifier(ref: SeriesRef, ts: str) -> bytes:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = ref.study_uid
    ds.SeriesInstanceUID = ref.series_uid
    return encode_identifier(ds, ts)


def storage_classes() -> list[str]:
    return [*map(str, SOP_CLASSES.values()), str(MULTIFRAME_SOP_CLASS)]


# -- C-GET ------------------------------------------------------------------------------------


def get_contexts() -> list[tuple[str, list[str]]]:
    """The C-GET context, then one context per storage class and syntax (the peer picks)."""
    storage = [(c, [ts]) for c in storage_classes() for ts in _STORAGE_SYNTAXES]
    return [(STUDY_ROOT_GET, SYNTAXES), *storage]


def run_get(target: Target, refs: list[SeriesRef], advance: Any = None) -> Samples:
    samples = Samples()
    with dimse.Association.open(
        target,
        get_contexts(),
        scp_roles=storage_classes(),
    ) as assoc:
        ts = assoc.accepted[assoc.context_for(STUDY_ROOT_GET)][1]
        for ref in refs:
            identifier = _identifier(ref, ts)
            _get_series(assoc, ref, identifier, samples)
            if advance:
                advance(1)
    return samples


def _get_series(
    assoc: dimse.Association, ref: SeriesRef, identifier: bytes, samples: Samples
) -> None:
    cid = assoc.context_for(STUDY_ROOT_GET)
    t0 = time.perf_counter()
    assoc.send(
        cid, dimse.request(dimse.C_GET_RQ, assoc.next_message_id(), STUDY_ROOT_GET), identifier
    )
    first: float | None = None
    received = nbytes = 0
    while True:
        msg = assoc.read_message()
        if msg.field == dimse.C_STORE_RQ:
            if first is None:
                first = time.perf_counter() - t0
            received += 1
            nbytes += msg.dataset_bytes
            rsp = dimse.encode_response(
                dimse.C_STORE_RSP,
                dimse.us(msg.command, dimse.MessageID),
                dimse.uid(msg.command, dimse.AffectedSOPClassUID),
                0,
                sop_instance_uid=dimse.uid(msg.command, dimse.AffectedSOPInstanceUID),
            )
            assoc.sock.sendall(P.encode_p_data(msg.context_id, rsp, assoc.peer_max_pdu))
        elif msg.status not in dimse.PENDING:
            break
    samples.add(time.perf_counter() - t0, first, received, nbytes)
    failed = dimse.us(msg.command, dimse.NumberOfFailedSuboperations)
    if msg.status != 0 or failed:
        samples.failures.append(
            f"C-GET {ref.series_uid}: status {msg.status:#06x}, {failed} failed sub-operations"
        )
    elif ref.instances and received != ref.instances:
        samples.failures.append(f"C-GET {ref.series_uid}: {received} of {ref.instances} instances")


# -- C-MOVE -----------------------------------------------------------------------------------


class Receiver:
    """DCMTK ``storescp --ignore`` as the C-MOVE destination; its log times each arrival."""

    def __init__(self, ae_title: str, port: int) -> None:
        if not Path(STORESCP).is_file():
            raise FileNotFoundError(
                f"{STORESCP} is missing: C-MOVE needs DCMTK's storescp as the local receiver"
            )
        self._tmp = tempfile.TemporaryDirectory(prefix="pacs-bench-recv-")
        config = Path(self._tmp.name) / "log.cfg"
        config.write_text(DCMTK_LOG_CONFIG)
        env = dict(os.environ, TCP_NODELAY="1")
        self.proc = subprocess.Popen(
            [STORESCP, "-lc", str(config), "--ignore", "+xa", "-aet", ae_title, str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            bufsize=1,
        )
        self.arrivals: list[float] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()
        self._wait_listening(port)

    def _wait_listening(self, port: int) -> None:
        import socket

        deadline = time.monotonic() + RECEIVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"storescp exited with {self.proc.returncode}: is port {port} free?"
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return  # storescp logs the refused probe connection; harmless
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"storescp did not listen on port {port}")

    def _follow(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = DCMTK_LOG_LINE.match(line)
            if m and m[5].startswith("Received Store Request"):
                with self._lock:
                    self.arrivals.append(log_time(m))

    def since(self, t0: float) -> list[float]:
        """Arrival times (epoch seconds) at or after `t0`."""
        with self._lock:
            return [a for a in self.arrivals if a >= t0]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._thread.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._tmp.cleanup()


def run_move(
    target: Target, refs: list[SeriesRef], move_dest: str, receiver: Receiver, advance: Any = None
) -> Samples:
    samples = Samples()
    with dimse.Association.open(
        target,
        [(STUDY_ROOT_MOVE, SYNTAXES), (STUDY_ROOT_FIND, SYNTAXES)],
    ) as assoc:  # dcmqrscp wants FIND beside MOVE
        cid = assoc.context_for(STUDY_ROOT_MOVE)
        ts = assoc.accepted[cid][1]
        for ref in refs:
            identifier = _identifier(ref, ts)
            t0_epoch, t0 = time.time(), time.perf_counter()
            assoc.send(
                cid,
                dimse.request(
                    dimse.C_MOVE_RQ,
                    assoc.next_message_id(),
                    STUDY_ROOT_MOVE,
                    move_destination=move_dest,
                ),
                identifier,
            )
            while True:
                msg = assoc.read_message()
                if msg.status not in dimse.PENDING:
                    break
            seconds = time.perf_counter() - t0
            done = dimse.us(msg.command, dimse.NumberOfCompletedSuboperations)
            failed = dimse.us(msg.command, dimse.NumberOfFailedSuboperations)
            arrivals = _settled(receiver, t0_epoch, done)
            first = min(arrivals) - t0_epoch if arrivals else None
            samples.add(seconds, first, done, ref.nbytes)
            if msg.status != 0 or failed or (ref.instances and done != ref.instances):
                samples.failures.append(
                    f"C-MOVE {ref.series_uid}: status {msg.status:#06x}, "
                    f"{done} completed, {failed} failed"
                )
            elif len(arrivals) != done:
                samples.failures.append(
                    f"C-MOVE {ref.series_uid}: the receiver logged "
                    f"{len(arrivals)} of {done} instances"
                )
            if advance:
                advance(1)
    return samples


def _settled(receiver: Receiver, t0_epoch: float, expected: int) -> list[float]:
    """The receiver's arrivals for this move; its log lines may trail the final C-MOVE-RSP."""
    deadline = time.monotonic() + 10
    while True:
        arrivals = receiver.since(t0_epoch)
        if len(arrivals) >= expected or time.monotonic() > deadline:
            return arrivals
        time.sleep(0.01)


# -- DCMTK getscu and movescu -----------------------------------------------------------------


def run_getscu(target: Target, refs: list[SeriesRef], advance: Any = None) -> Samples:
    """Each series by ``getscu --ignore``: it answers every C-STORE, keeps nothing."""
    samples = Samples()
    for ref in refs:
        log = _dcmtk_client(GETSCU, target, ref, ["--ignore"])
        t0, first = log.at("Sending C-GET Request"), log.at("Received C-STORE Request")
        received = log.count("Received C-STORE Request")
        samples.add(log.span(), first - t0 if first and t0 else None, received, ref.nbytes)
        final = log.last("Received C-GET Response")
        failed = log.number("Number of Failed Suboperations")
        if log.failure or not final.endswith("(Success)") or failed:
            samples.failures.append(f"getscu {ref.series_uid}: {log.failure or final}, "
                                    f"{failed} failed sub-operations")  # fmt: skip
        elif ref.instances and received != ref.instances:
            samples.failures.append(f"getscu {ref.series_uid}: {received} of {ref.instances}")
        if advance:
            advance(1)
    return samples


def run_movescu(target: Target, refs: list[SeriesRef], move_dest: str, receiver: Receiver,
                advance: Any = None) -> Samples:  # fmt: skip
    """Each series by ``movescu -aem move_dest`` to `receiver`; its arrivals are counted."""
    samples = Samples()
    for ref in refs:
        t0_epoch = time.time()
        log = _dcmtk_client(MOVESCU, target, ref, ["-aem", move_dest])
        sent = log.at("Sending Move Request")
        final = log.last("Received Final Move Response")
        arrivals = _settled(receiver, t0_epoch, ref.instances) if sent else []
        first = min(arrivals) - sent if arrivals and sent else None
        samples.add(log.span(), first, len(arrivals), ref.nbytes)
        if log.failure or not final.endswith("(Success)"):
            samples.failures.append(f"movescu {ref.series_uid}: {log.failure or final}")
        elif ref.instances and len(arrivals) != ref.instances:
            samples.failures.append(f"movescu {ref.series_uid}: the receiver logged "
                                    f"{len(arrivals)} of {ref.instances} instances")  # fmt: skip
        if advance:
            advance(1)
    return samples


@dataclass(slots=True)
class ClientLog:
    """The timestamped log of one DCMTK client run: (epoch seconds, message) per line."""

    lines: list[tuple[float, str]]
    failure: str = ""  # why the client failed (exit status and its last words), if it did

    def at(self, prefix: str) -> float | None:
        return next((t for t, msg in self.lines if msg.startswith(prefix)), None)

    def last(self, prefix: str) -> str:
        return next((msg for _, msg in reversed(self.lines) if msg.startswith(prefix)), "")

    def count(self, prefix: str) -> int:
        return sum(msg.startswith(prefix) for _, msg in self.lines)

    def number(self, prefix: str) -> int:
        """The integer after ':' on the last line naming `prefix` (a count getscu reports)."""
        line = next((msg for _, msg in reversed(self.lines) if msg.strip().startswith(prefix)), "")
        return int(line.rsplit(":", 1)[1]) if ":" in line else 0

    def span(self) -> float:
        """From requesting the association to releasing it; 0 if it never got that far."""
        start, end = self.at("Requesting Association"), self.at("Releasing Association")
        return end - start if start is not None and end is not None else 0.0


def _dcmtk_client(tool: str, target: Target, ref: SeriesRef, extra: list[str]) -> ClientLog:
    """Run getscu or movescu for one series, Study Root at SERIES level, with a timed log."""
    if not Path(tool).is_file():
        raise FileNotFoundError(f"{tool} is missing: --dcmtk needs DCMTK (apt install dcmtk)")
    with tempfile.TemporaryDirectory(prefix="pacs-bench-client-") as tmp:
        config = Path(tmp) / "log.cfg"
        config.write_text(DCMTK_LOG_CONFIG)
        keys = ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={ref.study_uid}",
                f"SeriesInstanceUID={ref.series_uid}"]  # fmt: skip
        argv = [tool, "-lc", str(config), "-aet", target.calling, "-aec", target.ae_title, "-S",
                *extra, *(a for key in keys for a in ("-k", key)), target.host, str(target.port)]
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp,
                              env=dict(os.environ, TCP_NODELAY="1"),
                              timeout=DCMTK_CLIENT_TIMEOUT_S)  # fmt: skip
    lines = [(log_time(m), m[5]) for m in map(DCMTK_LOG_LINE.match, proc.stdout.splitlines()) if m]
    failure = ""
    if proc.returncode:
        tail = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()][-2:]
        failure = f"exited with {proc.returncode}: {' | '.join(tail)}"
    return ClientLog(lines, failure)


# -- WADO-RS ----------------------------------------------------------------------------------


def run_wado(base_url: str, refs: list[SeriesRef], advance: Any = None) -> Samples:
    samples = Samples()
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    with httpx.Client(base_url=base_url, timeout=HTTP_TIMEOUT_S) as client:
        for ref in refs:
            t0 = time.perf_counter()
            first: float | None = None
            path = f"/studies/{ref.study_uid}/series/{ref.series_uid}"
            with client.stream("GET", path, headers={"Accept": accept}) as rsp:
                if rsp.status_code != 200:
                    rsp.read()
                    samples.failures.append(f"WADO-RS {path}: HTTP {rsp.status_code}")
                    continue
                counter = _PartCounter(rsp.headers.get("content-type", ""))
                nbytes = 0
                for chunk in rsp.iter_bytes():
                    if first is None:
                        first = time.perf_counter() - t0
                    nbytes += len(chunk)
                    counter.feed(chunk)
            samples.add(time.perf_counter() - t0, first, counter.parts, nbytes)
            if ref.instances and counter.parts != ref.instances:
                samples.failures.append(f"WADO-RS {path}: {counter.parts} of {ref.instances} parts")
            if advance:
                advance(1)
    return samples


class _PartCounter:
    """Counts the parts of a multipart body by its delimiters (RFC 2046 5.1.1), streamed."""

    def __init__(self, content_type: str) -> None:
        m = re.search(r'boundary="?([^";]+)"?', content_type)
        if not m:
            raise ValueError(f"WADO-RS answered {content_type!r}, not a multipart with a boundary")
        self.delimiter = b"\r\n--" + m[1].encode()
        self.tail = b"\r\n"  # the first delimiter may open the body without a CRLF before it
        self.delimiters = 0

    def feed(self, chunk: bytes) -> None:
        data = self.tail + chunk
        self.delimiters += data.count(self.delimiter)
        self.tail = data[-(len(self.delimiter) - 1) :]

    @property
    def parts(self) -> int:
        return max(0, self.delimiters - 1)  # the last delimiter closes the body


# -- figures ----------------------------------------------------------------------------------


def figures(prefix: str, s: Samples) -> dict[str, dict[str, Any]]:
    seconds = sum(s.seconds)
    ms = [x * 1e3 for x in s.first_s]
    return {
        f"{prefix}.instances": metric(s.instances, "instances"),
        f"{prefix}.megabytes": metric(s.nbytes / 1e6, "MB"),
        f"{prefix}.failures": metric(len(s.failures), "series", "lower"),
        f"{prefix}.instances_per_s": metric(s.instances / seconds if seconds else 0, "instances/s"),
        f"{prefix}.mb_per_s": metric(s.nbytes / 1e6 / seconds if seconds else 0, "MB/s"),
        f"{prefix}.first_instance_p50_ms": metric(percentile(ms, 50), "ms", "lower"),
        f"{prefix}.series_p50_ms": metric(
            percentile([x * 1e3 for x in s.seconds], 50), "ms", "lower"
        ),
    }
