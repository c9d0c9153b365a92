"""A `pacs serve` that the reliability tests can kill whole, and pynetdicom senders that keep score.

:class:`KillableServer` runs the server in its own session, so that one
``killpg`` SIGKILLs the supervisor and every worker at once (a power switch
for the process tree), with the test hook directory first on PYTHONPATH
(named crash points, see ``_crash.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests._helpers import ROOT, small_ct, small_ct_bytes
from tests.net._support import NODELAY, Server, dcmtk, dcmtk_env, echo
from tests.reliability._crash import HOOK_DIR

READY_POLL_S = 0.05


class KillableServer(Server):
    """`pacs serve` in its own process group, with extra environment."""

    def __init__(self, tmp: Path, *, env: dict[str, str] | None = None, **kw: Any) -> None:
        super().__init__(tmp, **kw)
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join([HOOK_DIR, str(ROOT)])
        self.env.update(env or {})

    def start(self) -> KillableServer:
        cmd = [
            sys.executable, "-m", "engine.cli", "--config", str(self.config_path), "serve",
            str(self.archive), "--dicom-port", str(self.port), "--workers", str(self.workers),
            "--http-port", str(self.http_port),
        ]  # fmt: skip
        self._log = open(self.log_path, "ab")  # noqa: SIM115 -- closed in kill()/stop()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True)  # fmt: skip
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            if "listening on" in self.log() and echo(self.port) == 0:
                return
            time.sleep(READY_POLL_S)
        raise AssertionError(f"server did not start:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the supervisor and every worker at once; wait until all are gone."""
        assert self.proc is not None
        if self.proc.returncode is not None:
            return
        pgid = self.proc.pid  # start_new_session: the supervisor leads its group
        pids = [self.proc.pid, *self.worker_pids()]
        os.killpg(pgid, signal.SIGKILL)
        self.proc.wait(30)
        for pid in pids:  # orphaned workers are reaped by init: wait until they are
            deadline = time.monotonic() + 30
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                if _is_zombie(pid):
                    break
                time.sleep(0.01)
        self._log.close()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):  # gone, even mid-read
        return True


@dataclass
class Score:
    """What the senders saw: every instance begun, and those answered Success."""

    sent: dict[str, bytes] = field(default_factory=dict)  # SOP Instance UID -> dataset bytes
    acked: set[str] = field(default_factory=set)
    refused: dict[str, int] = field(default_factory=dict)  # UID -> failure status
    comments: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)  # raised in a sender: a test bug
    associations: list[Any] = field(default_factory=list)
    acked_by_dcmtk: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wake_senders(self) -> None:
        """After the server died: end every sender's wait for a response that cannot come.

        pynetdicom pauses its reactor while ``send_c_store`` waits, so a closed
        connection is noticed only after the DIMSE timeout. A ``(None, None)``
        on the message queue is what that timeout delivers: the association
        aborts at once. A response already received is ahead of it in the queue.
        """
        with self.lock:
            for assoc in self.associations:
                assoc.dimse.msg_queue.put((None, None))


def ct_instance(seed: int, rows: int = 16) -> tuple[Dataset, bytes]:
    """A generated CT dataset and the bytes pynetdicom sends for it (Explicit VR LE)."""
    ds = small_ct(seed, rows, rows)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    data = encode(ds, False, True)
    assert data is not None
    return ds, data


def send_until_stopped(port: int, seeds: range, score: Score, stop: threading.Event,
                       *, rows: int = 16, aet: str = "RELIABLE") -> None:  # fmt: skip
    """Store one generated instance per seed over one association, until the peer dies or `stop`.

    An instance counts as acknowledged only when its C-STORE response said 0x0000.
    Under heavy load pynetdicom's requestor was seen to stall now and then
    (its thread waiting for a response while the server, its socket queues
    empty, waited for the next PDU): the association then ends at the DIMSE
    timeout, and callers that need more stores open another.
    An exception (a bug of the test, not a dead peer) is kept in ``score.errors``.
    """
    try:
        _send(port, seeds, score, stop, rows, aet)
    except BaseException as exc:  # noqa: BLE001 -- reported by the test, not lost in a thread
        score.errors.append(exc)


def _send(port: int, seeds: range, score: Score, stop: threading.Event, rows: int,
          aet: str) -> None:  # fmt: skip
    ae = AE(ae_title=aet)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS", evt_handlers=NODELAY)
    with score.lock:
        score.associations.append(assoc)
    try:
        if not assoc.is_established:
            return
        for seed in seeds:
            if stop.is_set() or not assoc.is_established:
                return
            ds, data = ct_instance(seed, rows)
            uid = str(ds.SOPInstanceUID)
            with score.lock:
                score.sent[uid] = data
            try:
                status = assoc.send_c_store(ds)
            except RuntimeError:
                if assoc.is_established:
                    raise
                return  # the server died between the check and the send
            code = int(status.Status) if "Status" in status else None
            with score.lock:
                if code == 0:
                    score.acked.add(uid)
                elif code is not None:
                    score.refused[uid] = code
                    score.comments.append(str(status.get("ErrorComment", "")))
    finally:
        if assoc.is_established and not stop.is_set():
            assoc.release()
        assoc.abort()  # the server may be dead: never wait for a release it cannot answer
        _close_socket(assoc)


def storescu_until_killed(port: int, folder: Path, seeds: range, score: Score) -> None:
    """DCMTK storescu of one generated file per seed; an instance is acknowledged by its
    "Received Store Response (Success)" line (-v), which storescu prints only on 0x0000."""
    files = {}
    for seed in seeds:
        ds, data = ct_instance(seed)
        path = folder / f"{seed}.dcm"
        path.write_bytes(small_ct_bytes(seed, 16, 16))
        files[str(path)] = str(ds.SOPInstanceUID)
        with score.lock:
            score.sent[str(ds.SOPInstanceUID)] = data
    done = subprocess.run([dcmtk("storescu"), "-v", "-aet", "KILL9SCU", "-aec", "PACS",
                           "127.0.0.1", str(port), *files], capture_output=True, text=True,
                          env=dcmtk_env(), timeout=300)  # fmt: skip
    current = None
    for line in done.stderr.splitlines():
        if line.startswith("I: Sending file: "):
            current = files.get(line[len("I: Sending file: ") :].strip())
        elif line.startswith("I: Received Store Response (Success)") and current:
            with score.lock:
                score.acked.add(current)
                score.acked_by_dcmtk += 1
            current = None


def _close_socket(assoc: Any) -> None:
    # pynetdicom leaves the socket of an association whose peer died unclosed
    sock = getattr(assoc.dul, "socket", None)
    if sock is not None and sock.socket is not None:
        sock.socket.close()
