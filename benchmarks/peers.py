"""The archives we compare ourselves with, started on loopback for one benchmark run.

Every target is a real server process on free loopback ports with its own
temporary folder, started from the command line exactly as a site would run
it, and stopped (SIGTERM, then SIGKILL) when the run ends:

``pacs`` / ``pacs-nosync``
    ``pacs serve`` with ``durability = "fsync"`` (the default, what the
    engine promises) and ``"none"``; DICOM and DICOMweb.
``orthanc`` / ``orthanc-zip``
    Debian's ``/usr/sbin/Orthanc`` with a generated JSON config: default
    SQLite index, the DICOMweb plugin, remote access and authentication
    off; the second with ``"StorageCompression": true``.
``storescp``
    DCMTK's ``storescp --fork`` (ingest only: it answers nothing else).
``dcmqrscp``
    DCMTK's query/retrieve SCP with a generated ``dcmqrscp.cfg``.
``pynetdicom-storescp`` / ``pynetdicom-qrscp``
    pynetdicom's bundled apps (``python -m pynetdicom storescp|qrscp``).

:func:`start_peer` returns once the server answers C-ECHO (and, with HTTP,
a GET). :meth:`Peer.cpu_s` is the CPU time of the server's whole process
tree, from ``/proc``, so that a caller can quote server CPU per instance.
DCMTK always runs with ``TCP_NODELAY=1`` in its environment (Debian's DCMTK
otherwise waits ~40 ms for a delayed ACK per small message).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported by tests or run beside e2e_ingest.py
    sys.path.insert(0, str(HERE))

from e2e_ingest import REPO, dcmtk_env, free_port, tree_cpu, tree_pids  # noqa: E402

ORTHANC = "/usr/sbin/Orthanc"
ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
STORESCP = "/usr/bin/storescp"
DCMQRSCP = "/usr/bin/dcmqrscp"
DCMTK_MAX_PDU = 131072  # the largest DCMTK accepts
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 90.0
ECHO_TIMEOUT_S = 5.0
CALLING_AE = "PACSBENCH"

# What each target can do: ingest (C-STORE), query (C-FIND), retrieve (C-GET/C-MOVE), http
SERVICES: dict[str, frozenset[str]] = {
    "pacs": frozenset({"ingest", "query", "retrieve", "http"}),
    "pacs-nosync": frozenset({"ingest", "query", "retrieve", "http"}),
    "orthanc": frozenset({"ingest", "query", "retrieve", "http"}),
    "orthanc-zip": frozenset({"ingest", "query", "retrieve", "http"}),
    "storescp": frozenset({"ingest"}),
    "dcmqrscp": frozenset({"ingest", "query", "retrieve"}),
    "pynetdicom-storescp": frozenset({"ingest"}),
    "pynetdicom-qrscp": frozenset({"ingest", "query", "retrieve"}),
}
TARGETS = tuple(SERVICES)
AE_TITLES = {
    "pacs": "PACS", "pacs-nosync": "PACS", "orthanc": "ORTHANC", "orthanc-zip": "ORTHANC",
    "storescp": "STORESCP", "dcmqrscp": "DCMQRSCP", "pynetdicom-storescp": "STORESCP",
    "pynetdicom-qrscp": "QRSCP",
}  # fmt: skip
# The binary each target needs; a missing one is an error, never a silent skip
REQUIRES = {
    "orthanc": (ORTHANC, ORTHANC_DICOMWEB), "orthanc-zip": (ORTHANC, ORTHANC_DICOMWEB),
    "storescp": (STORESCP,), "dcmqrscp": (DCMQRSCP,),
}  # fmt: skip


@dataclass(slots=True)
class Peer:
    """One running target.

    Parameters
    ----------
    name
        The target's name (a key of :data:`SERVICES`).
    ae_title
        Its AE title.
    dicom_port
        Its DICOM port on 127.0.0.1.
    http_url
        Its DICOMweb root (``http://127.0.0.1:PORT/dicom-web``), or None.
    work
        Its private folder: config, data, log.
    proc
        The server process (pacs: the supervisor).
    """

    name: str
    ae_title: str
    dicom_port: int
    http_url: str | None
    work: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    rest_url: str | None = None  # Orthanc's own REST API root
    data: Path | None = None
    move_destinations: Mapping[str, int] = field(default_factory=dict)

    @property
    def services(self) -> frozenset[str]:
        """What this target answers: ingest, query, retrieve, http."""
        return SERVICES[self.name]

    @property
    def target(self) -> str:
        """``AET@127.0.0.1:PORT``, the form ``pacs bench --target`` takes."""
        return f"{self.ae_title}@127.0.0.1:{self.dicom_port}"

    def cpu_s(self) -> float:
        """CPU seconds (user + system) of the server's process tree so far."""
        return tree_cpu(self.proc.pid)

    def settled_cpu_s(self, max_wait_s: float = 5.0, step_s: float = 0.25) -> float:
        """CPU seconds once the server stops using any (deferred work included)."""
        last = self.cpu_s()
        deadline = time.monotonic() + max_wait_s
        while time.monotonic() < deadline:
            time.sleep(step_s)
            now = self.cpu_s()
            if now - last < 0.01:
                return now
            last = now
        return last

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's log."""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> int | None:
        """SIGTERM the server, kill it if it hangs; return its exit code."""
        pids = tree_pids(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in pids[1:]:  # forked children (storescp --fork, dcmqrscp) left behind
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.log_file.close()
        return self.proc.returncode


def missing_tools(targets: list[str] | tuple[str, ...]) -> list[str]:
    """The binaries (or plugin) the `targets` need that are not installed."""
    need = {path for t in targets for path in REQUIRES.get(t, ())}
    return sorted(p for p in need if not os.path.exists(p))


def missing_message(targets: list[str] | tuple[str, ...]) -> str | None:
    """What a comparison script says when `targets` cannot run here, or None when they can."""
    missing = missing_tools(targets)
    if not missing:
        return None
    return f"missing {', '.join(missing)} (apt-get install dcmtk orthanc orthanc-dicomweb)"


def _python_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=str(REPO) + (os.pathsep + path if path else ""))


# -- the command line of each target ----------------------------------------------------


def _pacs(work: Path, port: int, http_port: int, moves: Mapping[str, int], *,
          durability: str, workers: int, forward_to: str | None, forward_parallel: int = 1,
          config_extra: str = "",
          archive_extra: str = "") -> tuple[list[str], dict[str, str]]:  # fmt: skip
    lines = ["[archive]", f'durability = "{durability}"', archive_extra, "", config_extra]
    for aet, move_port in moves.items():
        lines += [f"[remotes.{aet}]", 'host = "127.0.0.1"', f"port = {move_port}", ""]
    if forward_to:
        lines += [
            "[[forward]]",
            'name = "bench"',
            f'to = "dicom:{forward_to}"',
            f"parallel = {forward_parallel}",
            "",
        ]
    config = work / "pacs.toml"
    config.write_text("\n".join(lines))
    cmd = [sys.executable, "-m", "engine.cli", "--config", str(config), "serve",
           str(work / "data"), "--host", "127.0.0.1", "--dicom-port", str(port),
           "--http-port", str(http_port), "--workers", str(workers)]  # fmt: skip
    return cmd, _python_env()


def orthanc_config(work: Path, port: int, http_port: int, moves: Mapping[str, int], *,
                   compression: bool) -> dict[str, object]:  # fmt: skip
    """The JSON config of one Orthanc: loopback only, no auth, DICOMweb, SQLite index."""
    return {
        "Name": "pacs-bench",
        "StorageDirectory": str(work / "data"),
        "IndexDirectory": str(work / "data"),
        "StorageCompression": compression,
        "HttpPort": http_port,
        "DicomPort": port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomModalities": {aet: [aet, "127.0.0.1", p] for aet, p in moves.items()},
        "Plugins": [ORTHANC_DICOMWEB],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        "TcpNoDelay": True,
        "KeepAlive": True,
        "SaveJobs": False,
        "LimitFindResults": 0,
        "LimitFindInstances": 0,
        "MaximumStorageSize": 0,
        "MaximumPatientCount": 0,
    }


def _orthanc(work: Path, port: int, http_port: int, moves: Mapping[str, int], *,
             compression: bool,
             forward_to: str | None) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    config = work / "orthanc.json"
    body = orthanc_config(work, port, http_port, moves, compression=compression)
    if forward_to:  # the way Orthanc's documentation forwards: a Lua callback per instance
        script = work / "forward.lua"
        script.write_text("function OnStoredInstance(instanceId, tags, metadata, origin)\n"
                          f"  SendToModality(instanceId, '{forward_to}')\nend\n")  # fmt: skip
        body["LuaScripts"] = [str(script)]
    config.write_text(json.dumps(body, indent=2))
    # Orthanc speaks DICOM through DCMTK, which reads TCP_NODELAY from the environment too
    return [ORTHANC, str(config)], dcmtk_env()


def dcmqrscp_config(work: Path, port: int, moves: Mapping[str, int]) -> str:
    """A ``dcmqrscp.cfg``: one storage area for DCMQRSCP, any peer, generous quotas."""
    hosts = "".join(f"{aet} = ({aet}, 127.0.0.1, {p})\n" for aet, p in moves.items())
    # quota: studies per area, bytes per study, at dcmqrscp's maximum (500, 1 GiB): past it
    # dcmqrscp deletes the oldest study, so a corpus must stay under 500 studies
    return (f"NetworkTCPPort = {port}\nMaxPDUSize = {DCMTK_MAX_PDU}\nMaxAssociations = 64\n\n"
            f"HostTable BEGIN\n{hosts}HostTable END\n\nVendorTable BEGIN\nVendorTable END\n\n"
            f"AETable BEGIN\nDCMQRSCP {work / 'data'} RW (500, 1024mb) ANY\n"
            "AETable END\n")  # fmt: skip


def _dcmqrscp(work: Path, port: int, moves: Mapping[str, int]) -> tuple[list[str], dict[str, str]]:
    config = work / "dcmqrscp.cfg"
    config.write_text(dcmqrscp_config(work, port, moves))
    # -dhl: no reverse DNS lookup per association
    return [DCMQRSCP, "-c", str(config), "-dhl", str(port)], dcmtk_env()


def _pynetdicom_qrscp(work: Path, port: int,
                      moves: Mapping[str, int]) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    sections = "".join(f"[{aet}]\naddress: 127.0.0.1\nport: {p}\n\n" for aet, p in moves.items())
    config = work / "qrscp.ini"
    config.write_text(
        "[DEFAULT]\nae_title: QRSCP\n"
        f"port: {port}\nmax_pdu: 0\nacse_timeout: 60\ndimse_timeout: 60\nnetwork_timeout: 60\n"
        f"bind_address: 127.0.0.1\ninstance_location: {work / 'data'}\n"
        f"database_location: {work / 'instances.sqlite'}\nlog_identifier: False\n\n{sections}"
    )
    return [sys.executable, "-m", "pynetdicom", "qrscp", "-c", str(config)], dict(os.environ)


def command(name: str, work: Path, port: int, http_port: int, moves: Mapping[str, int], *,
            workers: int, forward_to: str | None = None, forward_parallel: int = 1,
            config_extra: str = "",
          archive_extra: str = "") -> tuple[list[str], dict[str, str]]:  # fmt: skip
    """The command line and environment that start target `name`.

    `forward_to` (a key of `moves`): every stored instance is sent on to that
    peer, by a ``[[forward]]`` rule or Orthanc's ``OnStoredInstance`` Lua.
    `config_extra`: TOML tables added to a pacs target's config (``[auth]``,
    ``[replica]``); `archive_extra`: settings added to its ``[archive]`` table.
    """
    data = work / "data"
    if forward_to is not None and not name.startswith(("pacs", "orthanc")):
        raise ValueError(f"{name} cannot forward")
    if (config_extra or archive_extra) and not name.startswith("pacs"):
        raise ValueError(f"{name} takes no pacs config")
    if name in ("pacs", "pacs-nosync"):
        durability = "fsync" if name == "pacs" else "none"
        return _pacs(work, port, http_port, moves, durability=durability, workers=workers,
                     forward_to=forward_to, forward_parallel=forward_parallel,
                     config_extra=config_extra, archive_extra=archive_extra)  # fmt: skip
    if name in ("orthanc", "orthanc-zip"):
        return _orthanc(work, port, http_port, moves, compression=name == "orthanc-zip",
                        forward_to=forward_to)  # fmt: skip
    if name == "storescp":
        # --fork: a child per association, as a site runs it; it never fsyncs
        return [STORESCP, "--fork", "+xa", "-pdu", str(DCMTK_MAX_PDU), "-aet", "STORESCP",
                "-od", str(data), str(port)], dcmtk_env()  # fmt: skip
    if name == "dcmqrscp":
        return _dcmqrscp(work, port, moves)
    if name == "pynetdicom-storescp":
        return [sys.executable, "-m", "pynetdicom", "storescp", str(port), "-ba", "127.0.0.1",
                "-aet", "STORESCP", "-pdu", "0", "-od", str(data)], dict(os.environ)  # fmt: skip
    if name == "pynetdicom-qrscp":
        return _pynetdicom_qrscp(work, port, moves)
    raise ValueError(f"unknown target {name!r}; targets are {', '.join(TARGETS)}")


# -- readiness -------------------------------------------------------------------------


def echo(port: int, ae_title: str, timeout_s: float = ECHO_TIMEOUT_S) -> bool:
    """Whether the server at `port` accepts an association and answers C-ECHO with 0x0000."""
    from pynetdicom import AE, _config
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    _config.LOG_HANDLER_LEVEL = "none"
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout_s
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=ECHO_TIMEOUT_S).status_code < 500
    except httpx.HTTPError:
        return False


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_peer(name: str, work_root: Path, *, workers: int = 2,
               move_destinations: Mapping[str, int] | None = None,
               keep_data: bool = False, forward_to: str | None = None,
               forward_parallel: int = 1, port: int | None = None,
               config_extra: str = "", archive_extra: str = "",
               cpus: set[int] | None = None) -> Peer:  # fmt: skip
    """Start target `name` under `work_root`/`name`; return once it answers.

    Parameters
    ----------
    name
        One of :data:`TARGETS`.
    work_root
        Parent of the target's private folder (config, data, log).
    workers
        Worker processes of ``pacs serve``.
    move_destinations
        AE title -> port on 127.0.0.1, configured as C-MOVE destinations.
    keep_data
        Start on what an earlier run left in the folder (a resumed run)
        instead of an empty one.
    forward_to
        One of `move_destinations`: forward every stored instance to it
        (pacs and Orthanc only), over `forward_parallel` associations (pacs).
    port
        The DICOM port (default: a free one).
    config_extra
        TOML added to a pacs target's config (``[auth]``, ``[replica]``).
    archive_extra
        Settings added to a pacs target's ``[archive]`` table.
    cpus
        The cores the server and every process it starts may run on (all of
        this process's if None).

    Raises
    ------
    RuntimeError
        When a binary is missing, or the server exits or does not answer
        within ``START_TIMEOUT_S``; the message has the end of its log.
    """
    missing = missing_tools([name])
    if missing:
        raise RuntimeError(f"{name}: {', '.join(missing)} missing "
                           "(apt-get install dcmtk orthanc orthanc-dicomweb)")  # fmt: skip
    moves = dict(move_destinations or {})
    work = work_root / name
    if not keep_data:
        shutil.rmtree(work, ignore_errors=True)
    (work / "data").mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    http_port = free_port() if "http" in SERVICES[name] else 0
    while http_port == port:
        http_port = free_port()
    cmd, env = command(name, work, port, http_port, moves, workers=workers,
                       forward_to=forward_to, forward_parallel=forward_parallel,
                       config_extra=config_extra, archive_extra=archive_extra)  # fmt: skip
    log_path = work / "server.log"
    log_file = log_path.open("ab")
    pin = None if cpus is None else lambda: os.sched_setaffinity(0, cpus)
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL,
                            stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=pin)  # fmt: skip
    http_url = f"http://127.0.0.1:{http_port}/dicom-web" if http_port else None
    rest_url = f"http://127.0.0.1:{http_port}" if name.startswith("orthanc") else None
    peer = Peer(name, AE_TITLES[name], port, http_url, work, proc, log_path, log_file,
                rest_url, work / "data", moves)  # fmt: skip
    try:
        _wait_ready(peer)
    except BaseException:
        peer.stop()
        raise
    return peer


def _wait_ready(peer: Peer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if peer.proc.poll() is not None:
            raise RuntimeError(f"{peer.name} exited with {peer.proc.returncode} before it "
                               f"answered:\n{peer.log_tail()}")  # fmt: skip
        # a cheap connect first: pynetdicom logs a failed association loudly
        if _port_open(peer.dicom_port) and echo(peer.dicom_port, peer.ae_title):
            probe = peer.rest_url + "/system" if peer.rest_url else f"{peer.http_url}/studies"
            if peer.http_url is None or _http_ok(probe):
                return
        time.sleep(0.1)
    raise RuntimeError(f"{peer.name} did not answer C-ECHO within {START_TIMEOUT_S:.0f} s:\n"
                       f"{peer.log_tail()}")  # fmt: skip


@contextlib.contextmanager
def running(name: str, work_root: Path, **options: object) -> Iterator[Peer]:
    """:func:`start_peer` as a context manager that always stops the server."""
    peer = start_peer(name, work_root, **options)  # type: ignore[arg-type]
    try:
        yield peer
    finally:
        peer.stop()


def version_of(name: str) -> str:
    """The version string of the software behind target `name` (for BENCHMARKS.md)."""
    if name.startswith("orthanc"):
        return _first_line([ORTHANC, "--version"])
    if name in ("storescp", "dcmqrscp"):
        return _first_line([STORESCP if name == "storescp" else DCMQRSCP, "--version"])
    if name.startswith("pynetdicom"):
        import pynetdicom

        return f"pynetdicom {pynetdicom.__version__}"
    import engine

    return f"pacs-engine {engine.__version__}"


def _first_line(cmd: list[str]) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return f"unavailable ({exc})"
    text = (res.stdout or res.stderr).strip()
    return text.splitlines()[0] if text else ""
