"""C-GET and C-MOVE: stored instances come back equal (DCMTK getscu/movescu, pynetdicom)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests._helpers import dataset_diff
from tests.net._support import Server, identifier_args, run_dcmtk
from tests.net.conftest import CT_SLICES, Destination, Stored
from tests.net.find_helpers import identifier

PADDING = 0xFFFCFFFC  # PS3.10 7.2: Data Set Trailing Padding has no meaning (storescu drops it)
PIXEL_MODULE = frozenset({0x7FE00010, 0x00280004, 0x00280006, 0x00282110, 0x00282112,
                          0x00282114, PADDING})  # fmt: skip


def _read(path: Path, **kw: Any) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, **kw)


def _group_lengths(ds: Dataset) -> frozenset[int]:
    """(gggg,0000): retired (PS3.5 7.2); DCMTK's storescu does not send them."""
    return frozenset(int(e.tag) for e in ds if e.tag.element == 0)


def assert_bit_exact(src: Dataset, got: Dataset, name: str) -> None:
    diff = dataset_diff(src, got, skip=frozenset({0x7FE00010, PADDING}) | _group_lengths(src))
    assert diff is None, f"{name}: {diff}"
    assert bytes(got.PixelData) == bytes(src.PixelData), f"{name}: pixel data differs"


def assert_same_pixels(src: Dataset, got: Dataset, name: str) -> None:
    """After a conversion to an uncompressed syntax: same elements, same decoded pixels."""
    # the peer may take it in Implicit VR, where private elements lose their VR
    private = frozenset(int(e.tag) for e in src if e.tag.is_private)
    diff = dataset_diff(src, got, skip=PIXEL_MODULE | _group_lengths(src) | private)
    assert diff is None, f"{name}: {diff}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.array_equal(src.pixel_array, got.pixel_array), f"{name}: pixels differ"


def _decodable(ds: Dataset) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.pixel_array  # noqa: B018 -- decoding is the point
    except Exception:  # noqa: BLE001 -- any decoder failure
        return False
    return True


def pynetdicom_get(port: int, level: str, keys: dict[str, Any], files: list[Path],
                   model: Any) -> tuple[dict[str, tuple[Dataset, str]], Dataset]:  # fmt: skip
    """C-GET, proposing each file's own (SOP Class, transfer syntax) with the SCP role."""
    received: dict[str, tuple[Dataset, str]] = {}

    def on_store(event: Any) -> int:
        ds = event.dataset
        received[str(ds.SOPInstanceUID)] = (ds, str(event.context.transfer_syntax))
        return 0

    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(model)
    pairs = {(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID))
             for m in (_read(f, stop_before_pixels=True).file_meta for f in files)}  # fmt: skip
    for sop_class, ts in sorted(pairs):
        ae.add_requested_context(sop_class, [ts])
    roles = [build_role(sc, scp_role=True) for sc in sorted({sc for sc, _ in pairs})]
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS", ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])  # fmt: skip
    assert assoc.is_established
    final = Dataset()
    for status, _ in assoc.send_c_get(identifier(level, keys), model):
        if status and status.Status != 0xFF00:
            final = status
    assoc.release()
    return received, final


def test_pynetdicom_get_returns_every_file_bit_exact_in_its_syntax(
    server: Server, stored: Stored
) -> None:
    for uid, path in stored.corpus.items():
        src = _read(path)
        got, final = pynetdicom_get(server.port, "IMAGE",
                                    {"StudyInstanceUID": src.StudyInstanceUID,
                                     "SeriesInstanceUID": src.SeriesInstanceUID,
                                     "SOPInstanceUID": uid}, [path],
                                    PatientRootQueryRetrieveInformationModelGet)  # fmt: skip
        assert final.Status == 0, f"{path.name}: {final}"
        assert final.NumberOfCompletedSuboperations == 1
        ds, ts = got[uid]
        assert ts == src.file_meta.TransferSyntaxUID, path.name
        assert_bit_exact(src, ds, path.name)


@pytest.mark.parametrize("level", ["PATIENT", "STUDY", "SERIES"])
def test_pynetdicom_get_at_each_level(server: Server, stored: Stored, level: str) -> None:
    files = sorted(stored.ct.values())[:12]
    src = _read(files[0])
    keys = {"PATIENT": {"PatientID": src.PatientID},
            "STUDY": {"StudyInstanceUID": src.StudyInstanceUID},
            "SERIES": {"StudyInstanceUID": src.StudyInstanceUID,
                       "SeriesInstanceUID": src.SeriesInstanceUID}}[level]  # fmt: skip
    model = (PatientRootQueryRetrieveInformationModelGet if level == "PATIENT"
             else StudyRootQueryRetrieveInformationModelGet)  # fmt: skip
    got, final = pynetdicom_get(server.port, level, keys, files, model)
    assert final.Status == 0
    want = {str(d.SOPInstanceUID): d for d in map(_read, files)
            if d.SeriesInstanceUID == src.SeriesInstanceUID}  # fmt: skip
    assert set(want) <= set(got)
    for uid, ds in want.items():
        assert_bit_exact(ds, got[uid][0], uid)


def test_two_gets_on_one_association_both_send_every_instance(server: Server,
                                                              stored: Stored) -> None:  # fmt: skip
    """A second C-GET on one association sends every instance again (its own sub-operations)."""
    src = _read(next(iter(stored.ct.values())))
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0

    model = StudyRootQueryRetrieveInformationModelGet
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(model)
    ae.add_requested_context(src.SOPClassUID, [src.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS",
                         ext_neg=[build_role(src.SOPClassUID, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])  # fmt: skip
    assert assoc.is_established
    keys = {"StudyInstanceUID": src.StudyInstanceUID, "SeriesInstanceUID": src.SeriesInstanceUID}
    try:
        for n in (1, 2):  # pending responses are rate-limited: count what arrived
            statuses = [s.Status for s, _ in assoc.send_c_get(identifier("SERIES", keys), model)]
            assert statuses[-1] == 0 and len(received) == n * CT_SLICES
    finally:
        assoc.release()
    assert len(received) == 2 * CT_SLICES
    assert received[: len(received) // 2] == received[len(received) // 2 :]


def test_getscu_gets_every_file_converted_where_it_must_be(server: Server, stored: Stored,
                                                           tmp_path: Path) -> None:  # fmt: skip
    """getscu proposes uncompressed syntaxes only: compressed instances are decompressed."""
    for uid, path in stored.corpus.items():
        src = _read(path)
        out = tmp_path / uid
        out.mkdir()
        r = run_dcmtk("getscu", "-S", "-aec", "PACS", "-od", str(out),
                      *identifier_args({"QueryRetrieveLevel": "IMAGE",
                                        "StudyInstanceUID": src.StudyInstanceUID,
                                        "SeriesInstanceUID": src.SeriesInstanceUID,
                                        "SOPInstanceUID": uid}),
                      "127.0.0.1", str(server.port))  # fmt: skip
        assert r.returncode == 0, f"{path.name}: {r.stdout}{r.stderr}"
        files = list(out.iterdir())
        if not _decodable(src):  # JPEG-lossy.dcm: libjpeg refuses it, so conversion must fail
            assert not files and "OutOfResourcesSubOperations" in r.stdout + r.stderr
            continue
        assert len(files) == 1, f"{path.name}: {r.stdout}{r.stderr}"
        got = _read(files[0])
        if src.file_meta.TransferSyntaxUID.is_compressed:
            assert not got.file_meta.TransferSyntaxUID.is_compressed
            assert_same_pixels(src, got, path.name)
        else:
            assert_same_pixels(src, got, path.name)
            if src.file_meta.TransferSyntaxUID.is_little_endian:
                assert bytes(got.PixelData) == bytes(src.PixelData), path.name


def test_movescu_moves_a_study_to_storescp(server: Server, stored: Stored,
                                           destination: Destination) -> None:  # fmt: skip
    src = _read(sorted(stored.ct.values())[0])
    r = run_dcmtk("movescu", "-S", "-aec", "PACS", "-aem", "DEST",
                  *identifier_args({"QueryRetrieveLevel": "STUDY",
                                    "StudyInstanceUID": src.StudyInstanceUID}),
                  "127.0.0.1", str(server.port))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    moved = {str(d.SOPInstanceUID): d for d in map(_read, destination.folder.iterdir())}
    for path in stored.ct.values():
        want = _read(path)
        if want.StudyInstanceUID == src.StudyInstanceUID:
            assert_bit_exact(want, moved[str(want.SOPInstanceUID)], path.name)


def test_pynetdicom_move_of_compressed_files_keeps_their_syntax(
    server: Server, stored: Stored, destination: Destination
) -> None:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS")
    assert assoc.is_established
    for uid, path in stored.corpus.items():
        src = _read(path)
        query = identifier("IMAGE", {"PatientID": src.get("PatientID", ""),
                                     "StudyInstanceUID": src.StudyInstanceUID,
                                     "SeriesInstanceUID": src.SeriesInstanceUID,
                                     "SOPInstanceUID": uid})  # fmt: skip
        final = [s for s, _ in assoc.send_c_move(query, "DEST",
                                                 PatientRootQueryRetrieveInformationModelMove)
                 if s and s.Status != 0xFF00][-1]  # fmt: skip
        assert final.Status == 0, f"{path.name}: {final}"
    assoc.release()
    moved = {str(d.SOPInstanceUID): d for d in map(_read, destination.folder.iterdir())}
    for uid, path in stored.corpus.items():
        src = _read(path)
        got = moved[uid]
        assert got.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID, path.name
        assert_bit_exact(src, got, path.name)


def test_move_to_an_unknown_destination_is_a801(server: Server, stored: Stored) -> None:
    src = _read(sorted(stored.ct.values())[0])
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS")
    query = identifier("STUDY", {"StudyInstanceUID": src.StudyInstanceUID})
    statuses = [
        s.Status
        for s, _ in assoc.send_c_move(query, "NOWHERE", StudyRootQueryRetrieveInformationModelMove)
    ]
    assoc.release()
    assert statuses == [0xA801]
