"""What the server refuses, and how: A-ASSOCIATE-RJ reasons and failure statuses with comments."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from engine.part10 import encode_fmi
from engine.synthetic import ct_series
from tests.net._support import Server, echo, run_dcmtk
from tests.net.find_helpers import c_find


def _store(port: int, ds: Dataset | Path, ae_title: str = "PYNETDICOM") -> Dataset:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


def test_an_unknown_calling_ae_title_is_rejected(server: Server) -> None:
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    # PS3.8 9.3.4: rejected-permanent, service-user, calling AE title not recognized
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
    r = run_dcmtk("echoscu", "-aet", "INTRUDER", "127.0.0.1", str(server.port))
    assert r.returncode != 0 and "Calling AE Title Not Recognized" in r.stdout + r.stderr
    assert echo(server.port) == 0


def test_a_malformed_dataset_gets_c000_with_a_comment(server: Server, tmp_path: Path) -> None:
    """A Part 10 file whose data set breaks framing, sent as is (pynetdicom's chunked send)."""
    uid = "1.2.3.4.5.6.7"
    body = bytes.fromhex("08001600") + b"UI" + (60000).to_bytes(2, "little") + b"1.2.3"
    path = tmp_path / "broken.dcm"
    fmi = encode_fmi(CTImageStorage, uid, "1.2.840.10008.1.2.1", None)
    path.write_bytes(b"\0" * 128 + b"DICM" + fmi + body)
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = _store(server.port, path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    assert status.Status == 0xC000
    assert status.ErrorComment and len(status.ErrorComment) <= 64
    assert echo(server.port) == 0  # the server stays up


def test_missing_uid_gets_a900_with_a_comment(server: Server) -> None:
    ds = next(ct_series(500, 1, rows=8, columns=8))
    del ds.StudyInstanceUID
    status = _store(server.port, ds)
    assert status.Status == 0xA900
    assert "StudyInstanceUID" in status.ErrorComment


def test_per_remote_permissions_are_enforced(server: Server) -> None:
    ds = next(ct_series(501, 1, rows=8, columns=8))
    status = _store(server.port, ds, ae_title="NOSTORE")
    assert status.Status == 0x0124 and "NOSTORE" in status.ErrorComment
    matches, final = c_find(server.port, "STUDY", {"StudyInstanceUID": ""}, ae_title="NOQUERY")
    assert not matches and final == 0x0124
    # the same AE may still query; NOQUERY may still store
    assert c_find(server.port, "STUDY", {"StudyInstanceUID": ""}, ae_title="NOSTORE")[1] == 0
    assert _store(server.port, ds, ae_title="NOQUERY").Status == 0


def test_too_many_associations_are_rejected_transiently(tmp_path: Path) -> None:
    srv = Server(tmp_path, workers=1, config="[server]\nmax_associations = 1\n").start()
    try:
        ae = AE(ae_title="FIRST")
        ae.add_requested_context(Verification)
        first = ae.associate("127.0.0.1", srv.port)
        assert first.is_established
        second = ae.associate("127.0.0.1", srv.port)
        assert second.is_rejected
        rj = second.acceptor.primitive
        # PS3.8 9.3.4: rejected-transient, service-provider (presentation), local limit exceeded
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
        first.release()
    finally:
        assert srv.stop() == 0


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True)  # fmt: skip
    return r.returncode == 0


def test_a_full_disk_gets_a700_and_the_server_stays_up(tmp_path: Path) -> None:
    disk = tmp_path / "tiny"
    if not _mount_tmpfs(disk, "6m"):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        srv = Server(tmp_path, workers=1, archive=disk / "archive").start()
        try:
            statuses: list[Any] = []
            for ds in ct_series(502, 40):  # 40 x 512 KB: more than the disk holds
                statuses.append(_store(srv.port, ds))
                if statuses[-1].Status != 0:
                    break
            last = statuses[-1]
            assert last.Status == 0xA700, last
            assert last.ErrorComment
            assert echo(srv.port) == 0
        finally:
            assert srv.stop() == 0
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_sigterm_lets_an_open_association_finish(tmp_path: Path) -> None:
    srv = Server(tmp_path, workers=1).start()
    ae = AE(ae_title="SLOW")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", srv.port)
    assert assoc.is_established
    code: list[int] = []
    stopper = threading.Thread(target=lambda: code.append(srv.stop()))
    stopper.start()
    for ds in ct_series(503, 5, rows=16, columns=16):
        assert assoc.send_c_store(ds).Status == 0  # still served while stopping
    assoc.release()
    stopper.join(60)
    assert code == [0]
