"""What the server refuses, and how: A-ASSOCIATE-RJ reasons and failure statuses with comments.

Each refusal is checked on both sides of the worker: the fast path (an
association proposing storage, verification and Query/Retrieve) and pynetdicom
(the same association plus a Modality Worklist context, which the fast path
does not serve).
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    ModalityWorklistInformationFind,
    Verification,
)

from engine.part10 import IMPLEMENTATION_VERSION_NAME, encode_fmi
from engine.synthetic import ct_series
from tests.net._support import Server, echo, outcome, run_dcmtk
from tests.net.find_helpers import c_find

PATHS = ["fast", "pynetdicom"]


def _ae(ae_title: str, path: str, *contexts: Any) -> AE:
    """An SCU whose association the worker serves on `path` ("fast" or "pynetdicom")."""
    ae = AE(ae_title=ae_title)
    for cx in contexts:
        ae.add_requested_context(*cx) if isinstance(cx, tuple) else ae.add_requested_context(cx)
    if path == "pynetdicom":  # a class the fast path does not serve takes it off the fast path
        ae.add_requested_context(ModalityWorklistInformationFind)
    return ae


def _check_path(assoc: Any, path: str) -> None:
    fast = assoc.acceptor.implementation_version_name == IMPLEMENTATION_VERSION_NAME
    assert fast == (path == "fast"), assoc.acceptor.implementation_version_name


def _store(port: int, ds: Dataset | Path, ae_title: str = "PYNETDICOM",
           path: str = "fast") -> Dataset:  # fmt: skip
    ae = _ae(ae_title, path, (CTImageStorage, ["1.2.840.10008.1.2.1"]))
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    try:
        _check_path(assoc, path)
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


@pytest.mark.parametrize("path", PATHS)
def test_an_unknown_calling_ae_title_is_rejected(server: Server, path: str) -> None:
    ae = _ae("INTRUDER", path, Verification)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    # PS3.8 9.3.4: rejected-permanent, service-user, calling AE title not recognized
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
    r = run_dcmtk("echoscu", "-aet", "INTRUDER", "-aec", "PACS", "127.0.0.1", str(server.port))
    assert r.returncode != 0 and "Calling AE Title Not Recognized" in r.stdout + r.stderr
    assert echo(server.port) == 0


@pytest.mark.parametrize("path", PATHS)
def test_a_malformed_dataset_gets_c000_with_a_comment(server: Server, tmp_path: Path,
                                                      path: str) -> None:  # fmt: skip
    """A Part 10 file whose data set breaks framing, sent as is (pynetdicom's chunked send)."""
    uid = "1.2.3.4.5.6.7"
    body = bytes.fromhex("08001600") + b"UI" + (60000).to_bytes(2, "little") + b"1.2.3"
    broken = tmp_path / "broken.dcm"
    fmi = encode_fmi(CTImageStorage, uid, "1.2.840.10008.1.2.1", None)
    broken.write_bytes(b"\0" * 128 + b"DICM" + fmi + body)
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = _store(server.port, broken, path=path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    assert status.Status == 0xC000
    assert status.ErrorComment and len(status.ErrorComment) <= 64
    assert echo(server.port) == 0  # the server stays up


@pytest.mark.parametrize("path", PATHS)
def test_missing_uid_gets_a900_with_a_comment(server: Server, path: str) -> None:
    ds = next(ct_series(500, 1, rows=8, columns=8))
    del ds.StudyInstanceUID
    status = _store(server.port, ds, path=path)
    assert status.Status == 0xA900
    assert "StudyInstanceUID" in status.ErrorComment


@pytest.mark.parametrize("path", PATHS)
def test_per_remote_permissions_are_enforced(server: Server, path: str) -> None:
    ds = next(ct_series(501, 1, rows=8, columns=8))
    status = _store(server.port, ds, ae_title="NOSTORE", path=path)
    assert status.Status == 0x0124 and "NOSTORE" in status.ErrorComment
    matches, final = c_find(server.port, "STUDY", {"StudyInstanceUID": ""}, ae_title="NOQUERY")
    assert not matches and final == 0x0124
    # the same AE may still query; NOQUERY may still store
    assert c_find(server.port, "STUDY", {"StudyInstanceUID": ""}, ae_title="NOSTORE")[1] == 0
    assert _store(server.port, ds, ae_title="NOQUERY", path=path).Status == 0


def test_too_many_associations_are_rejected_transiently(tmp_path: Path) -> None:
    """The limit counts fast-path and pynetdicom associations together, whichever came first."""
    srv = Server(tmp_path, workers=1, config="[server]\nmax_associations = 1\n").start()
    try:
        for first_path, second_path in [(a, b) for a in PATHS for b in PATHS]:
            first = _ae("FIRST", first_path, Verification).associate("127.0.0.1", srv.port,
                                                                     ae_title="PACS")
            assert first.is_established
            _check_path(first, first_path)
            second = _ae("SECOND", second_path, Verification).associate("127.0.0.1", srv.port,
                                                                        ae_title="PACS")
            assert second.is_rejected, (first_path, second_path, outcome(second, srv))
            rj = second.acceptor.primitive
            # PS3.8 9.3.4: rejected-transient, service-provider (presentation), local limit exceeded
            assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
            first.release()
            deadline = time.monotonic() + 10
            while echo(srv.port) != 0 and time.monotonic() < deadline:  # the first one has gone
                time.sleep(0.05)
    finally:
        assert srv.stop() == 0


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True)  # fmt: skip
    return r.returncode == 0


@pytest.mark.parametrize("path", PATHS)
def test_a_full_disk_gets_a700_and_the_server_stays_up(tmp_path: Path, path: str) -> None:
    disk = tmp_path / "tiny"
    if not _mount_tmpfs(disk, "6m"):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        srv = Server(tmp_path, workers=1, archive=disk / "archive").start()
        try:
            statuses: list[Any] = []
            for ds in ct_series(502, 40):  # 40 x 512 KB: more than the disk holds
                statuses.append(_store(srv.port, ds, path=path))
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


@pytest.mark.parametrize("path", PATHS)
def test_sigterm_lets_an_open_association_finish(tmp_path: Path, path: str) -> None:
    srv = Server(tmp_path, workers=1).start()
    assoc = _ae("SLOW", path, CTImageStorage).associate("127.0.0.1", srv.port, ae_title="PACS")
    assert assoc.is_established
    _check_path(assoc, path)
    code: list[int] = []
    stopper = threading.Thread(target=lambda: code.append(srv.stop()))
    stopper.start()
    for ds in ct_series(503, 5, rows=16, columns=16):
        assert assoc.send_c_store(ds).Status == 0  # still served while stopping
    assoc.release()
    stopper.join(60)
    assert code == [0]


@pytest.mark.parametrize("path", PATHS)
def test_a_called_ae_title_not_ours_is_rejected(server: Server, path: str) -> None:
    assoc = _ae("ECHOSCU", path, Verification).associate("127.0.0.1", server.port,
                                                          ae_title="WHATEVER")  # fmt: skip
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    # PS3.8 9.3.4: rejected-permanent, service-user, called AE title not recognized
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x07)
    r = run_dcmtk("echoscu", "-aet", "ECHOSCU", "-aec", "WHATEVER", "127.0.0.1", str(server.port))
    assert r.returncode != 0 and "Called AE Title Not Recognized" in r.stdout + r.stderr
    assert "called AE title 'WHATEVER' is not ours" in server.log()
    assert echo(server.port) == 0


def test_more_ae_titles_and_no_check(tmp_path: Path) -> None:
    """``[dicom] ae_titles`` adds titles we answer to; ``check_called_ae = false`` takes any."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    aliased = Server(tmp_path / "a", workers=1,
                     config='[dicom]\nae_titles = ["ALIAS"]\n').start()  # fmt: skip
    unchecked = Server(tmp_path / "b", workers=1, config="[dicom]\ncheck_called_ae = false\n")
    try:
        unchecked.start()
        for called, ok in [("PACS", True), ("ALIAS", True), ("WHATEVER", False)]:
            r = run_dcmtk("echoscu", "-aec", called, "127.0.0.1", str(aliased.port))
            assert (r.returncode == 0) == ok, (called, r.stdout + r.stderr)
        for path in PATHS:  # pynetdicom's own require_called_aet is off: our check is the one
            assoc = _ae("ECHOSCU", path, Verification).associate("127.0.0.1", unchecked.port,
                                                                  ae_title="ANY-SCP")  # fmt: skip
            assert assoc.is_established, path
            _check_path(assoc, path)
            assert assoc.send_c_echo().Status == 0
            assoc.release()
        assert run_dcmtk("echoscu", "127.0.0.1", str(unchecked.port)).returncode == 0
    finally:
        assert aliased.stop() == 0
        assert unchecked.proc is None or unchecked.stop() == 0
