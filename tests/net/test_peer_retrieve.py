"""Retrieve with a peer we did not write: Orthanc (issue 16).

Orthanc as C-FIND and C-MOVE SCU (its REST API drives ``/modalities``), and
as the C-MOVE destination of its own moves and of DCMTK ``movescu``'s. The
archive got each file's own bytes (pynetdicom sends them as they are), one
per transfer syntax of the corpus; what Orthanc keeps must be in that same
syntax, element for element (Orthanc writes what DCMTK parsed, so an
undefined length may come back defined: the wire bytes themselves are
checked by pynetdicom's C-GET below).

Orthanc 1.10 (Debian 12's) has no C-GET SCU. GDCM's ``gdcmscu`` 3.0.21
(Debian 12's) aborts at A-RELEASE against DCMTK's own storescp too
("ProtocolStream as nullptr is invalid") and its ``--get`` exits before
connecting: it cannot be a peer here.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet  # type: ignore[attr-defined]

from engine.part10 import dataset_offset
from engine.synthetic import ct_series, encode
from tests.net._support import Server, free_port, run_dcmtk
from tests.net._support import orthanc as start_orthanc
from tests.net.conftest import corpus_files
from tests.net.test_retrieve import assert_bit_exact, assert_same_pixels


@dataclass(frozen=True)
class Sent:
    """One instance as the archive got it: its file, data set bytes, syntax and study."""

    path: Path
    data_set: bytes
    syntax: str
    study: str


ORTHANC_PORT = free_port()


@pytest.fixture(scope="module")
def peer_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = f'[remotes.ORTHANC]\nhost = "127.0.0.1"\nport = {ORTHANC_PORT}\n'
    server = Server(tmp_path_factory.mktemp("peers"), workers=1, config=config).start()
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def sent(peer_server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Sent]:
    """The corpus (a file per transfer syntax) and generated CT, Explicit and Implicit VR,
    sent by pynetdicom as their files' own bytes: exactly what the archive stores."""
    folder = tmp_path_factory.mktemp("peer-ct")
    files = list(corpus_files().values())
    for i, ds in enumerate([*ct_series(31, 3, rows=32, columns=32),
                            *ct_series(32, 2, rows=32, columns=32, implicit=True)]):  # fmt: skip
        files.append(folder / f"ct{i}.dcm")
        files[-1].write_bytes(encode(ds))
    out: dict[str, Sent] = {}
    ae = AE(ae_title="PYNETDICOM")
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ts = str(ds.file_meta.TransferSyntaxUID)
        if (str(ds.SOPClassUID), ts) not in {(str(c.abstract_syntax), str(c.transfer_syntax[0]))
                                             for c in ae.requested_contexts}:  # fmt: skip
            ae.add_requested_context(ds.SOPClassUID, ts)
        data = path.read_bytes()
        out[str(ds.SOPInstanceUID)] = Sent(path, data[dataset_offset(data) :], ts,
                                           str(ds.StudyInstanceUID))  # fmt: skip
    _config.STORE_SEND_CHUNKED_DATASET = True  # the file's own bytes, not pydicom's re-encoding
    try:
        assoc = ae.associate("127.0.0.1", peer_server.port, ae_title="PACS")
        assert assoc.is_established
        try:
            for s in out.values():
                assert int(assoc.send_c_store(s.path).Status) == 0, s.path.name
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    return out


@pytest.fixture(scope="module")
def orthanc(peer_server: Server,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:  # fmt: skip
    """Orthanc on ORTHANC_PORT, knowing us as modality PACS; its REST client."""
    modalities = {"PACS": ["PACS", "127.0.0.1", peer_server.port]}
    with start_orthanc(tmp_path_factory.mktemp("orthanc"), ORTHANC_PORT, modalities) as client:
        yield client


def _data_set(part10: bytes) -> bytes:
    return part10[dataset_offset(part10) :]


def _same_instance(sent: Sent, received: bytes, converted: set[str]) -> None:
    """Received in the stored syntax: the same elements (a DCMTK-based peer writes what it
    parsed, so undefined lengths may become defined). Otherwise converted, and counted."""
    got = pydicom.dcmread(pydicom.filebase.DicomBytesIO(received))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = pydicom.dcmread(sent.path)
    if str(got.file_meta.TransferSyntaxUID) == sent.syntax:
        assert_bit_exact(original, got, sent.path.name)
    else:
        converted.add(sent.path.name)
        assert_same_pixels(original, got, sent.path.name)


def _orthanc_files(orthanc: httpx.Client) -> dict[str, bytes]:
    """SOP Instance UID -> the Part 10 file Orthanc keeps, for everything it holds."""
    out = {}
    for oid in orthanc.get("/instances").json():
        tags = orthanc.get(f"/instances/{oid}/simplified-tags").json()
        out[tags["SOPInstanceUID"]] = orthanc.get(f"/instances/{oid}/file").content
    return out


def _studies(sent: dict[str, Sent]) -> list[str]:
    return sorted({s.study for s in sent.values()})


def test_orthanc_finds_and_moves_from_us_and_receives_movescus(
    orthanc: httpx.Client, peer_server: Server, sent: dict[str, Sent]
) -> None:
    first, *rest = _studies(sent)
    # Orthanc as C-FIND SCU: it finds the study by its UID
    query = orthanc.post("/modalities/PACS/query",
                         json={"Level": "Study", "Query": {"StudyInstanceUID": first}})  # fmt: skip
    assert query.status_code == 200, query.text
    answers = orthanc.get(f"{query.json()['Path']}/answers?expand&simplify").json()
    assert [a["StudyInstanceUID"] for a in answers] == [first]
    # Orthanc as C-MOVE SCU, moving to itself
    moved = orthanc.post("/modalities/PACS/move", json={
        "Level": "Study", "Resources": [{"StudyInstanceUID": first}], "TargetAet": "ORTHANC",
        "Synchronous": True})  # fmt: skip
    assert moved.status_code == 200, moved.text
    # DCMTK movescu moving the rest to Orthanc
    for study in rest:
        r = run_dcmtk("movescu", "-S", "-aet", "MOVESCU", "-aec", "PACS", "-aem", "ORTHANC",
                      "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                      "127.0.0.1", str(peer_server.port))  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
    received = _orthanc_files(orthanc)
    assert set(received) == set(sent)
    converted: set[str] = set()
    for uid, s in sent.items():
        _same_instance(s, received[uid], converted)
    assert not converted, converted  # Orthanc accepts every stored syntax we proposed


def test_c_get_sends_each_instance_as_it_was_stored(peer_server: Server,
                                                    sent: dict[str, Sent]) -> None:  # fmt: skip
    """pynetdicom C-GET proposing every stored (SOP class, syntax) pair with the SCP role:
    each data set arrives as the bytes the archive got (a deflate stream of odd length
    padded to even with one NUL, as PS3.8 fragments must be and pydicom pads it)."""
    got: dict[str, tuple[bytes, str]] = {}

    def on_store(event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        got[uid] = (event.request.DataSet.getvalue(), str(event.context.transfer_syntax))
        return 0

    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    pairs = sorted({(pydicom.dcmread(s.path, stop_before_pixels=True).SOPClassUID, s.syntax)
                    for s in sent.values()})  # fmt: skip
    for sop_class, ts in pairs:
        ae.add_requested_context(sop_class, ts)
    roles = [build_role(c, scp_role=True) for c in sorted({c for c, _ in pairs})]
    assoc = ae.associate("127.0.0.1", peer_server.port, ae_title="PACS", ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])  # fmt: skip
    assert assoc.is_established
    try:
        for study in _studies(sent):
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = study
            answers = assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
            statuses = [int(s.Status) for s, _ in answers]
            assert statuses[-1] == 0, [hex(x) for x in statuses]
    finally:
        assoc.release()
    assert set(got) == set(sent)
    for uid, s in sent.items():
        data, ts = got[uid]
        assert ts == s.syntax, s.path.name
        padded = s.data_set + (b"\0" if len(s.data_set) % 2 else b"")
        assert data == padded, f"{s.path.name}: not the stored bytes"
