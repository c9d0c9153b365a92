"""The audit trail: one JSON line per event, from every process; a failing sink is loud and
refuses the request it could not record; `pacs export` and `pacs delete` are audited too."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
)

from engine import audit
from engine.errors import AuditError
from tests._helpers import ROOT, small_ct, small_ct_bytes
from tests.net._support import NODELAY, Server, free_port, storescu

OUT_OF_RESOURCES = 0xA700


@pytest.fixture
def trail(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "audit" / "audit.jsonl"
    yield audit.configure(audit.AuditSettings(str(path))), path
    audit.configure(None)


def test_one_json_line_per_event_from_many_threads(trail: tuple[audit.AuditTrail, Path]) -> None:
    _, path = trail

    def burst(n: int) -> None:
        for i in range(200):
            audit.emit(audit.Event.INSTANCES_TRANSFERRED, user=f"AE{n}", address="10.0.0.9",
                       study="1.2.3", sop_instance_uid=f"1.2.3.{i}")  # fmt: skip

    threads = [threading.Thread(target=burst, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 800
    first = records[0]
    assert first["event_id"] == "110104" and first["action"] == "C" and first["outcome"] == 0
    assert first["time"].endswith("+00:00") and first["pid"] == os.getpid()
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)  # readable by the archive's user only


def test_a_full_disk_raises_and_logs_at_error(caplog: pytest.LogCaptureFixture) -> None:
    audit.configure(audit.AuditSettings("/dev/full"))  # every write: ENOSPC
    try:
        with caplog.at_level(logging.ERROR, "engine.audit"), pytest.raises(AuditError):
            audit.emit(audit.Event.QUERY, user="FINDSCU", address="127.0.0.1")
        assert "AUDIT TRAIL FAILED" in caplog.text
        audit.emit_refusal(audit.Event.SECURITY_ALERT, user="X", address=None, description="y")
    finally:
        audit.configure(None)


def test_unknown_audit_keys_are_an_error() -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        audit.audit_settings({"fiel": "x"}, None)


def test_a_failing_sink_refuses_dimse_and_dicomweb_requests(tmp_path: Path) -> None:
    server = Server(tmp_path, workers=1, http=True, config='[audit]\nfile = "/dev/full"\n').start()
    try:
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(CTImageStorage)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS", evt_handlers=NODELAY)
        assert assoc.is_established
        try:
            assert assoc.send_c_store(small_ct(5)).Status == OUT_OF_RESOURCES
            q = Dataset()
            q.QueryRetrieveLevel = "STUDY"
            q.StudyInstanceUID = ""
            statuses = [s.Status for s, _ in assoc.send_c_find(
                q, StudyRootQueryRetrieveInformationModelFind)]  # fmt: skip
        finally:
            assoc.release()
        assert statuses == [OUT_OF_RESOURCES]
        r = httpx.get(f"http://127.0.0.1:{server.http_port}/dicom-web/studies", timeout=30)
        assert r.status_code == 503 and "audit" in r.json()["detail"]
    finally:
        assert server.stop() == 0
    assert "AUDIT TRAIL FAILED" in server.log()


def _pacs(archive: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "engine.cli", "-A", str(archive), *args],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip


def test_local_commands_are_audited(tmp_path: Path) -> None:
    ds = small_ct(61)
    src = tmp_path / "in.dcm"
    ds.save_as(src, enforce_file_format=True)
    archive = tmp_path / "archive"
    assert _pacs(archive, "ingest", str(src)).returncode == 0
    assert _pacs(archive, "find", "STUDY", f"PatientID={ds.PatientID}").returncode == 0
    assert _pacs(archive, "export", ds.StudyInstanceUID, str(tmp_path / "out")).returncode == 0
    r = _pacs(archive, "delete", "--study", ds.StudyInstanceUID)
    assert r.returncode == 0, r.stderr
    records = [json.loads(x) for x in (archive / "audit.jsonl").read_text().splitlines()]
    # ingest (Instances Transferred), find (Query), export, delete
    assert [r["event_id"] for r in records] == ["110104", "110112", "110106", "110103"]
    assert records[0]["detail"]["sop_instance_uid"] == ds.SOPInstanceUID
    assert records[1]["patient"] == ds.PatientID
    assert records[3]["action"] == "D" and records[3]["study"] == ds.StudyInstanceUID
    assert records[2]["user"] and records[2]["detail"]["instances"] == 1


def test_anonymous_dicomweb_off_loopback_refuses_to_start(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "engine.cli", "serve", str(tmp_path / "a"),
                        "--host", "0.0.0.0", "--dicom-port", str(free_port()),
                        "--http-port", str(free_port()), "--workers", "1"],
                       capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert r.returncode == 1
    assert "without authentication" in r.stderr and "anonymous = true" in r.stderr


def _syslog_records(sock: socket.socket, want: int) -> list[tuple[int, dict[str, Any]]]:
    """(priority, record) of the next `want` syslog messages (RFC 3164: <PRI>ident: msg)."""
    out = []
    for _ in range(want):
        raw = sock.recv(65536).decode().rstrip("\0")
        pri, _, rest = raw[1:].partition(">")
        assert rest.startswith("pacs-audit: "), raw
        out.append((int(pri), json.loads(rest.removeprefix("pacs-audit: "))))
    return out


def test_syslog_over_udp_from_a_running_server(tmp_path: Path) -> None:
    """[audit] syslog = "host:port": every record also goes to a collector, LOG_AUTHPRIV.notice."""
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(30)
    port = collector.getsockname()[1]
    server = Server(tmp_path, workers=1, config=f'[audit]\nsyslog = "127.0.0.1:{port}"\n').start()
    try:
        ct = tmp_path / "ct.dcm"
        ct.write_bytes(small_ct_bytes(7))
        r = storescu(server.port, [ct])
        assert r.returncode == 0, r.stdout + r.stderr
        records = _syslog_records(collector, 1)  # the store (an echo is not audited)
    finally:
        assert server.stop() == 0
        collector.close()
    stores = [rec for pri, rec in records if rec["event"] == "DICOM Instances Transferred"]
    assert stores and stores[0]["user"] == "STORESCU" and stores[0]["outcome"] == 0
    assert {pri for pri, _ in records} == {10 * 8 + 5}  # LOG_AUTHPRIV (10), LOG_NOTICE (5)
    in_file = (tmp_path / "archive" / "audit.jsonl").read_text()
    assert stores[0]["detail"]["sop_instance_uid"] in in_file  # the file still gets every record


def test_syslog_to_a_unix_socket_and_its_loss_refuses(tmp_path: Path) -> None:
    path = tmp_path / "syslog.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(10)
    try:
        audit.configure(audit.audit_settings({"syslog": str(path)}, None))
        audit.emit(audit.Event.QUERY, user="FINDSCU", address="127.0.0.1", patient="P1")
        [(_, record)] = _syslog_records(listener, 1)
        assert record["event"] == "Query" and record["patient"] == "P1"
    finally:
        listener.close()
        path.unlink()
    try:  # the collector is gone: the request is refused, never recorded nowhere
        with pytest.raises(AuditError):
            audit.emit(audit.Event.QUERY, user="FINDSCU", address="127.0.0.1")
    finally:
        audit.configure(None)
    with pytest.raises(AuditError, match="cannot open syslog"):
        audit.configure(audit.audit_settings({"syslog": str(path)}, None))


@pytest.mark.parametrize("value", [1, "", ["x"]])
def test_a_bad_syslog_value_is_an_error(value: object) -> None:
    with pytest.raises(ValueError, match=r"audit\.syslog"):
        audit.audit_settings({"syslog": value}, None)
