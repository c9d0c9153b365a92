"""C-MOVE in two rounds: the association to the destination is opened for the first match's
SOP Class and transfer syntax before the rest of the answer is resolved; instances stored
otherwise go over a second association proposed for them. Every instance arrives as it was
stored, and the counts are the whole retrieve's in every response."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove,
)

from engine.part10 import dataset_offset
from engine.synthetic import ct_series
from tests.net._support import Server, free_port
from tests.net.find_helpers import identifier

MOVE = StudyRootQueryRetrieveInformationModelMove
COUNTS = ("NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
          "NumberOfFailedSuboperations", "NumberOfWarningSuboperations")  # fmt: skip


def _study(tmp_path: Path, study: str) -> dict[str, Path]:
    """Three CT slices in Explicit VR, two in Implicit VR, pydicom's RLE MR: one study."""
    files: dict[str, Path] = {}
    slices = list(ct_series(41, 5, rows=16, columns=16))
    mr = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    for n, ds in enumerate([*slices, mr]):
        ds.PatientID, ds.StudyInstanceUID = "ROUNDS", study
        ds.SeriesInstanceUID = f"{study}.{1 if n < 5 else 2}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{study}.{n + 1}"
        if 3 <= n < 5:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        elif n < 3:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = tmp_path / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files[ds.SOPInstanceUID] = path
    return files


def _store(port: int, files: dict[str, Path]) -> None:
    ae = AE(ae_title="SENDER")
    for path in files.values():
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    try:
        for path in files.values():
            assert assoc.send_c_store(path).Status == 0, path
    finally:
        assoc.release()


def test_a_move_of_instances_stored_three_ways_goes_in_two_rounds_as_stored(
    tmp_path: Path,
) -> None:
    dest_port = free_port()
    config = f'[remotes.ANY]\nhost = "127.0.0.1"\nport = {dest_port}\n'
    server = Server(tmp_path, workers=1, config=config).start()
    received: dict[str, tuple[int, str, bytes]] = {}
    lock = threading.Lock()

    def on_store(event: Any) -> int:
        with lock:
            received[str(event.request.AffectedSOPInstanceUID)] = (
                id(event.assoc), str(event.context.transfer_syntax),
                event.request.DataSet.getvalue())  # fmt: skip
        return 0

    scp = AE(ae_title="ANY")
    for cx in AllStoragePresentationContexts:
        scp.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    listener = scp.start_server(("127.0.0.1", dest_port), block=False,
                                evt_handlers=[(evt.EVT_C_STORE, on_store)])  # fmt: skip
    try:
        study = generate_uid(prefix="1.2.826.0.1.3680043.10.54.")[:50]
        files = _study(tmp_path, study)
        _store(server.port, files)
        ae = AE(ae_title="MOVER")
        ae.add_requested_context(MOVE)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS")
        assert assoc.is_established
        try:
            answers = [s for s, _ in assoc.send_c_move(
                identifier("STUDY", {"StudyInstanceUID": study}), "ANY", MOVE)]  # fmt: skip
        finally:
            assoc.release()
    finally:
        listener.shutdown()
        assert server.stop() == 0, server.log()
    final = answers[-1]
    assert final.Status == 0x0000, final
    assert final.NumberOfCompletedSuboperations == 6 and final.NumberOfFailedSuboperations == 0
    for pending in answers[:-1]:  # the whole retrieve's counts, the second round's included
        assert sum(int(pending.get(k, 0)) for k in COUNTS) == 6, pending
    assert set(received) == set(files)
    by_assoc: dict[int, set[str]] = {}
    for uid, (assoc_id, syntax, data) in received.items():
        raw = files[uid].read_bytes()
        stored = pydicom.dcmread(files[uid], stop_before_pixels=True).file_meta
        assert syntax == stored.TransferSyntaxUID, uid  # no conversion
        assert data == raw[dataset_offset(raw) :], uid  # byte for byte as stored
        by_assoc.setdefault(assoc_id, set()).add(f"{stored.MediaStorageSOPClassUID} {syntax}")
    rounds = sorted(by_assoc.values(), key=len)
    assert len(rounds) == 2 and len(rounds[0]) == 1  # the first match's pair, then the rest
    assert len(rounds[1]) == 2 and not rounds[0] & rounds[1]
