"""Real peers for the network tests: the `pacs serve` process, DCMTK tools, pynetdicom SCUs.

Every DCMTK tool is run by absolute path (pynetdicom installs console
scripts of the same names that shadow DCMTK on PATH) with TCP_NODELAY=1
(Debian's DCMTK otherwise waits for delayed ACKs: 40 ms per message).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests._helpers import ROOT

_config.LOG_HANDLER_LEVEL = "none"
DCMTK_BIN = Path("/usr/bin")
START_TIMEOUT_S = 90.0


def dcmtk(tool: str) -> str:
    """Absolute path of a DCMTK tool; a missing one fails the test (never skips it)."""
    path = DCMTK_BIN / tool
    assert path.is_file(), (
        f"{path} is missing: install Debian's dcmtk (scripts/test.sh does: apt-get install dcmtk)"
    )
    return str(path)


def dcmtk_env() -> dict[str, str]:
    return dict(os.environ, TCP_NODELAY="1")


def run_dcmtk(tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool to completion; stdout and stderr captured as text."""
    return subprocess.run([dcmtk(tool), *args], capture_output=True, text=True,
                          env=dcmtk_env(), timeout=timeout)  # fmt: skip


def _nodelay(event: Any) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# pynetdicom's requestor sockets keep Nagle on: bind this to every association we open
NODELAY = [(evt.EVT_CONN_OPEN, _nodelay)]


def free_port() -> int:
    """A port nothing listens on now (bound to port 0, read, closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def echo(port: int, ae_title: str = "ECHOSCU", timeout: float = 5) -> int | None:
    """C-ECHO status from the server, or None when no association could be made."""
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = timeout
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


class Server:
    """`pacs serve` as a real process on a free port, with a TOML config written for it."""

    def __init__(self, tmp: Path, *, workers: int = 2, config: str = "",
                 archive: Path | None = None, http: bool = False) -> None:  # fmt: skip
        self.port = free_port()
        self.http_port = free_port() if http else 0
        self.archive = archive or tmp / "archive"
        self.config_path = tmp / f"server-{self.port}.toml"
        self.config_path.write_text(config)
        self.log_path = tmp / f"server-{self.port}.log"
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        cmd = [
            sys.executable, "-m", "engine.cli", "--config", str(self.config_path), "serve",
            str(self.archive), "--dicom-port", str(self.port), "--workers", str(self.workers),
            "--http-port", str(self.http_port),
        ]  # fmt: skip
        self._log = open(self.log_path, "ab")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            if "listening on" in self.log() and echo(self.port) == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"server did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def worker_pids(self) -> list[int]:
        """Pids of the live worker processes (children of the supervisor)."""
        assert self.proc is not None
        kids = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                              text=True).stdout.split()  # fmt: skip
        pids = []
        for pid in map(int, kids):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:  # it exited meanwhile: gone (ENOENT) or going (ESRCH)
                continue
            if b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline:
                pids.append(pid)
        return pids

    def stop(self) -> int:
        """SIGTERM; the exit code (the tests assert 0: a clean stop)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._log.close()
        return code


def outcome(assoc: Any, server: Server) -> str:
    """How a pynetdicom association ended up, and the server's log: a failed assertion's text."""
    flags = ("is_established", "is_rejected", "is_aborted", "is_released")
    state = ", ".join(f for f in flags if getattr(assoc, f))
    return f"association {state or 'in no state'}; server log:\n{server.log()[-4000:]}"


def storescu(port: int, files: Sequence[Path | str], *options: str,
             aet: str = "STORESCU") -> subprocess.CompletedProcess[str]:  # fmt: skip
    """DCMTK storescu of `files` to the server; -nh: keep going after a failure."""
    return run_dcmtk("storescu", "-aet", aet, "-aec", "PACS", *options, "127.0.0.1", str(port),
                     *map(str, files))  # fmt: skip


def identifier_args(keys: dict[str, Any]) -> list[str]:
    """DCMTK ``-k keyword=value`` arguments."""
    out: list[str] = []
    for k, v in keys.items():
        out += ["-k", f"{k}={v}" if v is not None else k]
    return out


ORTHANC = "/usr/sbin/Orthanc"
ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
ORTHANC_START_TIMEOUT_S = 60.0


def tool(path: str, package: str) -> str:
    """`path` of a Debian package's tool; a missing one fails the test (never skips it)."""
    assert Path(path).is_file(), (
        f"{path} is missing: install Debian's {package} (scripts/test.sh does)"
    )
    return path


@contextmanager
def orthanc(work: Path, dicom_port: int, modalities: dict[str, list[Any]], *,
            dicomweb: bool = False) -> Iterator[Any]:  # fmt: skip
    """Debian's Orthanc as ORTHANC on `dicom_port` (with its DICOMweb plugin at /dicom-web/
    if asked), knowing `modalities`; yields an httpx client of its REST API."""
    import httpx

    http_port = free_port()
    config: dict[str, Any] = {
        "Name": "interop", "StorageDirectory": str(work / "data"),
        "IndexDirectory": str(work / "data"), "HttpPort": http_port, "DicomPort": dicom_port,
        "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomModalities": modalities, "DicomAlwaysAllowStore": True, "TcpNoDelay": True,
        "SaveJobs": False,
    }  # fmt: skip
    if dicomweb:
        config["Plugins"] = [tool(ORTHANC_DICOMWEB, "orthanc-dicomweb")]
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
    (work / "orthanc.json").write_text(json.dumps(config))
    log = (work / "orthanc.log").open("wb")
    proc = subprocess.Popen([tool(ORTHANC, "orthanc"), "--verbose", str(work / "orthanc.json")],
                            stdout=log, stderr=subprocess.STDOUT, env=dcmtk_env())  # fmt: skip
    client = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=120)
    try:
        deadline = time.monotonic() + ORTHANC_START_TIMEOUT_S
        while True:
            assert proc.poll() is None, (work / "orthanc.log").read_text(errors="replace")
            try:
                if client.get("/system").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "Orthanc did not start"
            time.sleep(0.2)
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(30)
        log.close()
