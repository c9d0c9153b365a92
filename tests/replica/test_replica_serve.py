"""A live replica (issue 18): ``pacs serve --replica-of`` follows a second ``pacs serve``.

Stores come in by DCMTK storescu and pynetdicom, files of pydicom's and generated
CT; the replica is read by dicomweb-client (QIDO-RS, WADO-RS) and DCMTK findscu,
and checked to hold exactly the primary's instances, bit for bit. Faults: the
replica's follower and the whole replica killed with SIGKILL while stores come
in; the primary killed, the replica promoted: every instance acknowledged
before its reported point is there.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.presentation import AllStoragePresentationContexts

from engine.credentials import hash_password
from tests.forward._support import pacs, uid_of, wait_for, write_series
from tests.net._support import Server, storescu

REAL_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "rtplan.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
)


def _replica(tmp: Path, primary: Server, extra: str = "", **kw: object) -> Server:
    (tmp / "replica").mkdir(exist_ok=True)
    url = f"http://127.0.0.1:{primary.http_port}"
    return Server(tmp / "replica", config=f'[replica]\nprimary = "{url}"\n{extra}', **kw)  # type: ignore[arg-type]


def _again(server: Server, config: str | None = None) -> Server:
    """The same archive served again, by a new `pacs serve` with a log of its own."""
    text = server.config_path.read_text() if config is None else config
    return Server(server.config_path.parent, workers=server.workers, config=text,
                  archive=server.archive, http=bool(server.http_port))  # fmt: skip


def _refused_start(server: Server) -> str:
    """`pacs serve` of `server` that must refuse to start: its output."""
    cmd = [sys.executable, "-m", "engine.cli", "--config", str(server.config_path), "serve",
           str(server.archive), "--dicom-port", str(server.port), "--workers", "1"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    return out.stdout + out.stderr


def _uids(server: Server) -> set[str]:
    out = pacs("-A", str(server.archive), "find", "IMAGE", "SOPInstanceUID", "--json")
    assert out.returncode == 0, out.stderr
    return {row["SOPInstanceUID"] for row in json.loads(out.stdout)}


def _stats(server: Server) -> dict[str, object]:
    out = pacs("-A", str(server.archive), "stats", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _verify(server: Server) -> None:
    out = pacs("-A", str(server.archive), "verify")
    assert out.returncode == 0, out.stdout + out.stderr


def _kill_all(server: Server) -> None:
    """SIGKILL a `pacs serve`: its processes first (they must not outlive it), then it."""
    assert server.proc is not None
    kids = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True,
                          text=True).stdout.split()  # fmt: skip
    for pid in map(int, kids):
        os.kill(pid, signal.SIGKILL)
    server.proc.kill()
    server.proc.wait(10)
    server._log.close()


def _replica_pid(server: Server) -> int:
    """The live follower's pid, as it logs it ("replica (pid N) following ..."), once the
    supervisor has restarted it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in reversed(server.log().splitlines()):
            if "replica (pid " in line and " following " in line:
                pid = int(line.split("replica (pid ")[1].split(")")[0])
                if Path(f"/proc/{pid}").exists():
                    return pid
                break
        time.sleep(0.1)
    raise AssertionError("no live follower in the log\n" + server.log()[-3000:])


def _store_as_they_are(port: int, files: list[str]) -> None:
    """pynetdicom C-STORE of each file in its own transfer syntax (storescu would decompress)."""
    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title="MODALITY")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    try:
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0
    finally:
        assoc.release()


# -- following, read-only, authorisation -------------------------------------------------


@pytest.fixture
def auth_config() -> str:
    users = {"rep": ("rep-secret", ["replicate"]), "viewer": ("view-secret", ["read", "write"])}
    return "".join(f'[auth.users.{u}]\npassword = "{hash_password(p)}"\nroles = {json.dumps(r)}\n'
                   for u, (p, r) in users.items())  # fmt: skip


def test_a_replica_follows_stores_and_deletions_bit_for_bit_and_refuses_writes(
    tmp_path: Path, auth_config: str
) -> None:
    primary = Server(tmp_path, workers=2, http=True, config=auth_config).start()
    replica = None
    try:
        real = [get_testdata_file(name) for name in REAL_FILES]
        generated = write_series(tmp_path / "ct", 1, 40)
        _store_as_they_are(primary.port, real)
        assert storescu(primary.port, generated).returncode == 0
        before = _uids(primary)
        assert len(before) == 46

        # started once the primary holds data: it catches up from nothing
        replica = _replica(tmp_path, primary, 'user = "rep"\npassword = "rep-secret"\n',
                           workers=1, http=True).start()  # fmt: skip
        wait_for("the replica to catch up", lambda: _uids(replica) == before, replica)

        later = write_series(tmp_path / "ct2", 2, 20)
        assert storescu(primary.port, later).returncode == 0
        wait_for("the new series", lambda: len(_uids(replica)) == 66, replica)
        viewer = ("viewer", "view-secret")
        doomed = str(pydicom.dcmread(generated[0], stop_before_pixels=True).StudyInstanceUID)
        rsp = httpx.delete(f"http://127.0.0.1:{primary.http_port}/dicom-web/studies/{doomed}",
                           auth=("viewer", "view-secret"))  # fmt: skip
        assert rsp.status_code == 403  # the viewer has no delete role: nothing changes
        out = pacs("-A", str(primary.archive), "delete", "--study", doomed)
        assert out.returncode == 0, out.stderr
        wait_for("the deletion", lambda: _uids(replica) == _uids(primary), replica)
        assert not {uid_of(f) for f in generated} & _uids(replica)

        # what the replica serves is what the primary stored, bit for bit (WADO-RS, QIDO-RS)
        web = DICOMwebClient(f"http://127.0.0.1:{replica.http_port}/dicom-web")
        studies = {s["0020000D"]["Value"][0] for s in web.search_for_studies()}
        assert studies == {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID)
                           for f in [*real, *later]}  # fmt: skip
        for f in [*real, later[0]]:
            ds = pydicom.dcmread(f)
            got = web.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                        ds.SOPInstanceUID)  # fmt: skip
            assert got.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
            assert got == ds  # every element, Pixel Data's bytes included
        _verify(replica)
        stats = _stats(replica)
        status = stats["replica"]
        assert isinstance(status, dict)
        assert status["primary"] == f"http://127.0.0.1:{primary.http_port}"
        assert status["records"] == 0 and status["error"] is None
        assert stats["duplicates"] == 0
        admin = httpx.get(f"http://127.0.0.1:{replica.http_port}/admin/v1/replica")
        assert admin.status_code == 200  # the admin API says the same (no [auth] here)
        assert {k: admin.json()[k] for k in ("primary", "records", "error")} == {
            "primary": status["primary"], "records": 0, "error": None}  # fmt: skip
        on_primary = f"http://127.0.0.1:{primary.http_port}/admin/v1/replica"
        assert httpx.get(on_primary, auth=viewer).status_code == 403  # no admin role

        # read-only: DIMSE stores are refused with 0x0124, STOW-RS and DELETE with 403
        refused = storescu(replica.port, later[:1], "-v")
        assert refused.returncode != 0
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(pydicom.dcmread(later[0]).SOPClassUID)
        assoc = ae.associate("127.0.0.1", replica.port, ae_title="PACS")
        try:
            status = assoc.send_c_store(pydicom.dcmread(later[0]))
        finally:
            assoc.release()
        assert status.Status == 0x0124 and "read-only replica" in status.ErrorComment
        rsp = httpx.delete(f"http://127.0.0.1:{replica.http_port}/dicom-web/studies/"
                           f"{pydicom.dcmread(later[0]).StudyInstanceUID}")  # fmt: skip
        assert rsp.status_code == 403 and "replica" in rsp.json()["detail"]
        assert len(_uids(replica)) == 26

        # the log is for the replicate role only
        log_url = f"http://127.0.0.1:{primary.http_port}/replication/v1/log"
        assert httpx.get(log_url).status_code == 401
        assert httpx.get(log_url, auth=viewer).status_code == 403
        assert httpx.get(log_url, auth=("rep", "rep-secret")).status_code == 200
    finally:
        if replica is not None:
            assert replica.stop() == 0
        assert primary.stop() == 0


def test_a_replica_with_the_wrong_password_says_so_and_follows_once_fixed(
    tmp_path: Path, auth_config: str
) -> None:
    primary = Server(tmp_path, workers=1, http=True, config=auth_config).start()
    replica = _replica(tmp_path, primary, 'user = "rep"\npassword = "wrong"\n', workers=1)
    try:
        files = write_series(tmp_path / "ct", 3, 5)
        assert storescu(primary.port, files).returncode == 0
        replica.start()

        def error() -> object:
            status = _stats(replica)["replica"]
            assert isinstance(status, dict)
            return status["error"]

        wait_for("the refusal to show", lambda: error() is not None, replica)
        assert "401" in str(error())
        assert _uids(replica) == set()
        assert replica.stop() == 0
        replica = _again(replica, replica.config_path.read_text().replace("wrong", "rep-secret"))
        replica.start()
        wait_for("the replica to follow", lambda: len(_uids(replica)) == 5, replica)
        wait_for("the error to clear", lambda: error() is None, replica)
    finally:
        if replica.proc is not None:
            assert replica.stop() == 0
        assert primary.stop() == 0


# -- faults --------------------------------------------------------------------------------


def test_a_replica_killed_over_and_over_while_stores_come_in_catches_up(tmp_path: Path) -> None:
    """SIGKILL the follower 10 times and the whole replica 5 times during ingest: it ends
    holding exactly what the primary holds, verifies clean, and counts no duplicate."""
    primary = Server(tmp_path, workers=2, http=True).start()
    replica = _replica(tmp_path, primary, workers=1, http=False).start()
    series = [write_series(tmp_path / "in", 100 + i, 10) for i in range(15)]
    failures: list[str] = []

    def send() -> None:
        for files in series:
            out = storescu(primary.port, files)
            if out.returncode != 0:
                failures.append(out.stderr)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        for i in range(15):
            time.sleep(0.4)
            if i % 3 == 2:
                _kill_all(replica)
                replica = _again(replica).start()
            else:
                os.kill(_replica_pid(replica), signal.SIGKILL)
                time.sleep(0.3)  # the supervisor restarts it
        sender.join()
        assert not failures
        want = _uids(primary)
        assert len(want) == 150
        wait_for("the replica to catch up", lambda: _uids(replica) == want, replica)
        _verify(replica)
        stats = _stats(replica)
        assert stats["instances"] == 150 and stats["duplicates"] == 0
    finally:
        sender.join()
        assert replica.stop() == 0
        assert primary.stop() == 0


def _store_timed(port: int, files: list[Path], acked: list[tuple[str, int]],
                 stop: threading.Event) -> None:  # fmt: skip
    """pynetdicom C-STORE one file at a time, noting when each success came back."""
    ae = AE(ae_title="MODALITY")
    ae.requested_contexts = AllStoragePresentationContexts[:120]
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    try:
        for f in files:
            if stop.is_set():
                break
            ds = pydicom.dcmread(f)
            try:
                status = assoc.send_c_store(ds)
            except (RuntimeError, ValueError):
                break  # the primary died under us
            if status and status.Status == 0:
                acked.append((str(ds.SOPInstanceUID), time.time_ns()))
            elif not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
        else:  # the primary was killed under it: pynetdicom leaves our end open
            raw = getattr(getattr(assoc.dul, "socket", None), "socket", None)  # gone after abort
            assoc.abort()
            if raw is not None:
                with contextlib.suppress(OSError):
                    raw.close()
        gc.collect()


# pynetdicom leaves the socket of an association whose peer was SIGKILLed to the collector
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_primary_killed_the_promoted_replica_holds_all_acknowledged_before_its_point(
    tmp_path: Path,
) -> None:
    """SIGKILL the primary during ingest, promote the replica: every instance acknowledged
    before the point `pacs promote` reports is there; then it takes stores and refuses to
    follow again."""
    primary = Server(tmp_path, workers=2, http=True).start()
    replica = _replica(tmp_path, primary, workers=1).start()
    files = write_series(tmp_path / "in", 7, 300)
    acked: list[tuple[str, int]] = []
    stop = threading.Event()
    sender = threading.Thread(target=_store_timed, args=(primary.port, files, acked, stop))
    sender.start()
    try:
        wait_for("some stores", lambda: len(acked) >= 120)
        _kill_all(primary)
        stop.set()
        sender.join()
        out = pacs("promote", str(replica.archive), "--json")
        assert out.returncode == 0, out.stderr + replica.log()[-3000:]
        promoted = json.loads(out.stdout)
        held = _uids(replica)
        before = [uid for uid, at in acked if at < promoted["point_ns"]]
        assert before, "the replica reported no point after the first stores"
        assert set(before) <= held
        lost = len([uid for uid, _ in acked if uid not in held])
        print(
            f"acknowledged {len(acked)}, on the replica {len(held)}, missing {lost} "
            f"(all acknowledged after the point); promoted in {promoted['seconds']:.2f} s"
        )
        _verify(replica)

        wait_for("the workers to take stores",
                 lambda: storescu(replica.port, files[-1:]).returncode == 0, replica)  # fmt: skip
        assert uid_of(files[-1]) in _uids(replica)
        assert replica.stop() == 0
        # the [replica] table is still there: it must refuse to follow again
        assert "has been promoted" in _refused_start(replica)
    finally:
        stop.set()
        sender.join()
        _collect_pynetdicom_leftovers()
        if replica.proc is not None and replica.proc.poll() is None:
            replica.stop()


def _collect_pynetdicom_leftovers(timeout_s: float = 10.0) -> None:
    """Collect the aborted association's socket while this test's warning filter holds: left
    to the collector, it was found at the end of the session and failed the run there."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(
        type(t).__module__.startswith("pynetdicom") and t.is_alive()
        for t in threading.enumerate()
    ):
        time.sleep(0.05)
    gc.collect()


def test_a_replica_refuses_an_archive_with_instances_of_its_own(tmp_path: Path) -> None:
    primary = Server(tmp_path, workers=1, http=True).start()
    try:
        replica = _replica(tmp_path, primary, workers=1)
        out = pacs(
            "-A", str(replica.archive), "ingest", *map(str, write_series(tmp_path / "c", 9, 2))
        )
        assert out.returncode == 0, out.stderr
        assert "holds 2 instances of its own" in _refused_start(replica)
        out = pacs("promote", str(replica.archive))
        assert out.returncode != 0 and "not a replica" in out.stderr
    finally:
        assert primary.stop() == 0
