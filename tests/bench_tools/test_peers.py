"""Every peer of benchmarks/peers.py starts, answers, stores, and reports its CPU time.

Orthanc, its DICOMweb plugin and DCMTK are part of the test environment
(scripts/test.sh installs them): a missing one fails here, it never skips.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import peers
import pytest
from loader import send, write_small
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind as StudyFind,
)


def _find_study(peer: peers.Peer, study_uid: str) -> list[Dataset]:
    ae = AE(ae_title=peers.CALLING_AE)
    ae.add_requested_context(StudyFind)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 60
    assoc = ae.associate("127.0.0.1", peer.dicom_port, ae_title=peer.ae_title)
    assert assoc.is_established, peer.log_tail()
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    query.PatientID = ""
    try:
        return [ident for status, ident in assoc.send_c_find(query, StudyFind)
                if status and status.Status in (0xFF00, 0xFF01)]  # fmt: skip
    finally:
        assoc.release()


def test_every_tool_a_target_needs_is_installed() -> None:
    assert peers.missing_tools(peers.TARGETS) == [], (
        "install them: apt-get install dcmtk orthanc orthanc-dicomweb (scripts/test.sh does)"
    )


@pytest.mark.parametrize("name", peers.TARGETS)
def test_peer_answers_echo_stores_and_reports_cpu(name: str, tmp_path: Path) -> None:
    import pydicom

    folders, _ = write_small(tmp_path / "in", seed=7, first_study=0, studies=1, per_study=2,
                             folders=1)  # fmt: skip
    study_uid = pydicom.dcmread(next(folders[0].iterdir())).StudyInstanceUID
    with peers.running(name, tmp_path / "peers", workers=1,
                       move_destinations={"BENCHMOVE": peers.free_port()}) as peer:  # fmt: skip
        assert peer.proc.poll() is None
        assert peers.echo(peer.dicom_port, peer.ae_title)
        assert peer.target == f"{peer.ae_title}@127.0.0.1:{peer.dicom_port}"

        wall, failures = send(peer, folders, processes=1, log_dir=tmp_path)

        assert failures == [] and wall > 0
        if "query" in peer.services:
            found = _find_study(peer, study_uid)
            # a set: pynetdicom's qrscp answers a STUDY query once per instance of the study
            assert {ds.StudyInstanceUID for ds in found} == {study_uid}
        else:  # a plain storage SCP: the files it wrote
            assert sum(1 for p in peer.work.joinpath("data").rglob("*") if p.is_file()) == 2
        if "http" in peer.services:
            assert peer.http_url is not None
            r = httpx.get(f"{peer.http_url}/studies", params={"StudyInstanceUID": study_uid},
                          headers={"Accept": "application/dicom+json"}, timeout=60)  # fmt: skip
            assert r.status_code == 200 and len(r.json()) == 1
        assert peer.cpu_s() >= 0.0
        if name.startswith(("pacs", "pynetdicom")):  # Python servers: start-up alone costs CPU
            assert peer.cpu_s() > 0.0
    assert peer.proc.poll() is not None  # stopped on leaving the block


def test_a_server_that_exits_at_start_is_an_error_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peers, "DCMQRSCP", "/usr/bin/false")  # exits at once, a binary that exists
    with pytest.raises(RuntimeError, match="exited with 1 before it answered"):
        peers.start_peer("dcmqrscp", tmp_path)


def test_orthanc_config_is_loopback_only_without_auth_with_dicomweb(tmp_path: Path) -> None:
    config = peers.orthanc_config(tmp_path, 4242, 8042, {"BENCHMOVE": 11113}, compression=True)
    assert config["RemoteAccessAllowed"] is False and config["AuthenticationEnabled"] is False
    assert config["Plugins"] == [peers.ORTHANC_DICOMWEB] and config["StorageCompression"] is True
    assert config["DicomModalities"] == {"BENCHMOVE": ["BENCHMOVE", "127.0.0.1", 11113]}
