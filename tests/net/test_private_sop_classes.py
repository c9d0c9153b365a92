"""Private SOP classes are stored and retrieved like the standard ones (issue 16).

Modalities send objects of SOP classes the standard does not name: Siemens
CSA Non-Image (``1.3.12.2.1107.5.9.1``), GE's ``1.2.840.113619.4.26``. An
archive that refuses their context loses them. Here they are sent by DCMTK
``storescu`` and pynetdicom, on the fast path and on pynetdicom's, fetched
back by C-GET (pynetdicom proposing the private classes with the SCP role)
and by C-MOVE to DCMTK ``storescp -pm`` (promiscuous: it accepts any
class), byte for byte; with ``[dicom] accept_unknown_sop_classes = false``
their contexts are refused as "abstract syntax not supported".
"""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityWorklistInformationFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from engine.part10 import dataset_offset
from tests.net._support import NODELAY, Server, dcmtk, dcmtk_env, free_port, storescu

SIEMENS_CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"
GE_PRIVATE = "1.2.840.113619.4.26"
PATHS = ["fast", "pynetdicom"]
STORESCU_PROFILE = f"""
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit

[[PresentationContexts]]
[PrivateContexts]
PresentationContext1 = {SIEMENS_CSA_NON_IMAGE}\\Uncompressed

[[Profiles]]
[Private]
PresentationContexts = PrivateContexts
"""


def _private_object(sop_class: str, study: str, n: int, ts: str) -> Dataset:
    """A non-image object of `sop_class` with a private block, as the vendors' are."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "PRIVATE-1"
    ds.PatientName = "Private^Classes"
    ds.Modality = "OT"
    ds.InstanceNumber = n
    block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    block.add_new(0x10, "OB", b"SV10\x04\x03\x02\x01" + bytes(range(256)) * 4)
    block.add_new(0x11, "LO", "private text, kept with its VR")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ts
    return ds


def _write(ds: Dataset, folder: Path) -> tuple[Path, bytes]:
    """The object as a Part 10 file, and its data set's bytes (what the wire carries)."""
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    return path, data[dataset_offset(data) :]


@dataclass
class Promiscuous:
    """DCMTK storescp -pm: the C-MOVE destination PROMISC, taking any SOP class."""

    port: int
    folder: Path


@pytest.fixture(scope="module")
def promiscuous(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Promiscuous]:
    folder = tmp_path_factory.mktemp("promisc")
    port = free_port()
    proc = subprocess.Popen([dcmtk("storescp"), "-pm", "+xa", "-aet", "PROMISC", "-od",
                             str(folder), str(port)], env=dcmtk_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(0.3)
    assert proc.poll() is None, "storescp did not start"
    yield Promiscuous(port, folder)
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def private_server(tmp_path_factory: pytest.TempPathFactory,
                   promiscuous: Promiscuous) -> Iterator[Server]:  # fmt: skip
    config = f'[remotes.PROMISC]\nhost = "127.0.0.1"\nport = {promiscuous.port}\n'
    server = Server(tmp_path_factory.mktemp("private"), workers=1, config=config).start()
    yield server
    assert server.stop() == 0, server.log()


def _storage_ae(path: str, *sop_classes: str) -> AE:
    """Explicit and Implicit VR in a context each: we accept one syntax per context."""
    ae = AE(ae_title="PYNETDICOM")
    for uid in sop_classes:
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
        ae.add_requested_context(uid, ImplicitVRLittleEndian)
    if path == "pynetdicom":  # a standard class the fast path does not serve
        ae.add_requested_context(ModalityWorklistInformationFind)
    return ae


def _get(port: int, path: str, study: str, *sop_classes: str) -> dict[str, tuple[bytes, str]]:
    """C-GET of `study`, the private classes proposed with the SCP role: uid -> (bytes, syntax)."""
    got: dict[str, tuple[bytes, str]] = {}

    def on_store(event: evt.Event) -> int:
        raw = event.request.DataSet
        assert isinstance(raw, io.BytesIO)
        uid = str(event.request.AffectedSOPInstanceUID)
        got[uid] = (raw.getvalue(), str(event.context.transfer_syntax))
        return 0x0000

    ae = _storage_ae(path, *sop_classes)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = [build_role(uid, scp_role=True) for uid in sop_classes]
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS", ext_neg=roles,
                         evt_handlers=[*NODELAY, (evt.EVT_C_STORE, on_store)])  # fmt: skip
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    try:
        statuses = [int(s.Status) for s, _ in
                    assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)]  # fmt: skip
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000, [hex(s) for s in statuses]
    return got


@pytest.mark.parametrize("path", PATHS)
def test_private_classes_are_stored_and_fetched_byte_for_byte(
    private_server: Server, tmp_path: Path, path: str
) -> None:
    study = generate_uid()
    sent: dict[str, tuple[bytes, str]] = {}
    objects = [_private_object(SIEMENS_CSA_NON_IMAGE, study, 1, ExplicitVRLittleEndian),
               _private_object(GE_PRIVATE, study, 2, ImplicitVRLittleEndian)]  # fmt: skip
    ae = _storage_ae(path, SIEMENS_CSA_NON_IMAGE, GE_PRIVATE)
    assoc = ae.associate("127.0.0.1", private_server.port, ae_title="PACS", evt_handlers=NODELAY)
    assert assoc.is_established
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        assert {SIEMENS_CSA_NON_IMAGE, GE_PRIVATE} <= accepted
        for ds in objects:
            file, data = _write(ds, tmp_path)
            sent[str(ds.SOPInstanceUID)] = (data, str(ds.file_meta.TransferSyntaxUID))
            assert int(assoc.send_c_store(file).Status) == 0
    finally:
        assoc.release()
    got = _get(private_server.port, path, study, SIEMENS_CSA_NON_IMAGE, GE_PRIVATE)
    assert got == sent  # the stored syntax, each byte as received


def test_storescu_sends_a_private_class_and_movescu_moves_it(
    private_server: Server, promiscuous: Promiscuous, tmp_path: Path
) -> None:
    study = generate_uid()
    ds = _private_object(SIEMENS_CSA_NON_IMAGE, study, 1, ExplicitVRLittleEndian)
    file, data = _write(ds, tmp_path)
    config = tmp_path / "private.cfg"  # storescu proposes classes it does not know from a profile
    config.write_text(STORESCU_PROFILE)
    r = storescu(private_server.port, [file], "-xf", str(config), "Private", aet="STORESCU")
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([dcmtk("movescu"), "-S", "-aec", "PACS", "-aem", "PROMISC",
                        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                        "127.0.0.1", str(private_server.port)],
                       capture_output=True, text=True, env=dcmtk_env(), timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    [moved] = [p for p in promiscuous.folder.iterdir() if str(ds.SOPInstanceUID) in p.name]
    received = moved.read_bytes()
    assert received[dataset_offset(received) :] == data
    assert pydicom.dcmread(moved).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


@pytest.mark.parametrize("path", PATHS)
def test_unknown_classes_can_be_refused(tmp_path: Path, path: str) -> None:
    server = Server(tmp_path, workers=1,
                    config="[dicom]\naccept_unknown_sop_classes = false\n").start()  # fmt: skip
    try:
        ae = _storage_ae(path, SIEMENS_CSA_NON_IMAGE, "1.2.840.10008.5.1.4.1.1.2")
        assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS", evt_handlers=NODELAY)
        assert assoc.is_established
        try:
            results = {str(cx.abstract_syntax): cx.result for cx in assoc.rejected_contexts}
            accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        finally:
            assoc.release()
        # PS3.8 9.3.3.2: result 3, abstract syntax not supported (provider rejection)
        results.pop(str(ModalityWorklistInformationFind), None)  # not served: refused too
        assert results == {SIEMENS_CSA_NON_IMAGE: 0x03}
        assert "1.2.840.10008.5.1.4.1.1.2" in accepted
    finally:
        assert server.stop() == 0, server.log()
