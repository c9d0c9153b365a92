"""C-MOVE of a study whose instances are partly sent as stored and partly converted.

The move's sub-association keeps its reactor paused and writes the as-stored
instances itself (engine/net/substore.py); a converted instance goes through
pynetdicom's own send_c_store, which reopens the reactor. The instances after
it must still go out: this once could wait for ever.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.net._support import Server, dcmtk, dcmtk_env, free_port
from tests.net.find_helpers import identifier

COMPRESSED = ("SC_rgb_jpeg_dcmtk.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm")


@pytest.fixture
def plain_destination(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp with its default contexts: uncompressed syntaxes only."""
    folder = tmp_path / "received"
    folder.mkdir()
    port = free_port()
    proc = subprocess.Popen([dcmtk("storescp"), "-aet", "PLAIN", "-od", str(folder), str(port)],
                            env=dcmtk_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(0.3)
    assert proc.poll() is None, "storescp did not start"
    yield port, folder
    proc.terminate()
    proc.wait(10)


def _study(tmp_path: Path, study: str) -> list[Path]:
    """Three compressed files and three uncompressed ones, in one study, interleaved by UID."""
    names = [n for pair in zip(COMPRESSED, ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm"),
                               strict=True) for n in pair]  # fmt: skip
    out = []
    for i, name in enumerate(names):
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.PatientID, ds.StudyInstanceUID = "MIXED", study
        ds.SeriesInstanceUID = f"{study}.{i}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{study}.{i}.1"
        path = tmp_path / f"{i}.dcm"
        ds.save_as(path)
        out.append(path)
    return out


def _store_as_they_are(port: int, files: list[Path]) -> None:
    """pynetdicom C-STORE proposing each file's own (SOP Class, transfer syntax)."""
    ae = AE(ae_title="SENDER")
    metas = [pydicom.dcmread(f, stop_before_pixels=True).file_meta for f in files]
    for m in metas:
        ae.add_requested_context(m.MediaStorageSOPClassUID, [m.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    try:
        for f in files:
            assert assoc.send_c_store(f).Status == 0, f.name
    finally:
        assoc.release()


def test_a_move_mixing_converted_and_stored_instances_sends_them_all(
    tmp_path: Path, plain_destination: tuple[int, Path]
) -> None:
    port, folder = plain_destination
    config = f'[remotes.PLAIN]\nhost = "127.0.0.1"\nport = {port}\n'
    server = Server(tmp_path, workers=1, config=config).start()
    try:
        study = generate_uid(prefix="1.2.826.0.1.3680043.10.54.")[:54]
        files = _study(tmp_path, study)
        _store_as_they_are(server.port, files)
        ae = AE(ae_title="MOVER")
        ae.dimse_timeout = ae.acse_timeout = 60
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS")
        assert assoc.is_established
        query = identifier("STUDY", {"StudyInstanceUID": study})
        statuses = [s for s, _ in assoc.send_c_move(
            query, "PLAIN", StudyRootQueryRetrieveInformationModelMove)]  # fmt: skip
        assoc.release()
        final = statuses[-1]
        assert final.Status == 0, final
        assert final.NumberOfCompletedSuboperations == len(files)
        got = {str(pydicom.dcmread(p).SOPInstanceUID) for p in folder.iterdir()}
        assert got == {f"{study}.{i}.1" for i in range(len(files))}
    finally:
        assert server.stop() == 0, server.log()
