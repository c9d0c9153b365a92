"""C-FIND with DCMTK findscu and pynetdicom: answers match the files, exactly the requested keys."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE

from engine.synthetic import ct_series
from tests.net._support import NODELAY, Server, identifier_args, run_dcmtk
from tests.net.conftest import CT_SLICES, Stored
from tests.net.find_helpers import MODELS, c_find, identifier

ALWAYS = {"QueryRetrieveLevel", "SpecificCharacterSet"}


def _read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, stop_before_pixels=True)


def findscu(port: int, model: str, level: str, keys: dict[str, str | None],
            out: Path) -> list[Dataset]:  # fmt: skip
    """DCMTK findscu; its responses extracted (-X) and read back."""
    out.mkdir()
    r = run_dcmtk("findscu", f"-{model}", "-aec", "PACS", "-X", "-od", str(out),
                  *identifier_args({"QueryRetrieveLevel": level, **keys}),
                  "127.0.0.1", str(port))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return [_read(p) for p in sorted(out.glob("rsp*.dcm"))]


def _keywords(ds: Dataset) -> set[str]:
    return {e.keyword for e in ds} - ALWAYS


def _ct(stored: Stored) -> Dataset:
    return _read(sorted(stored.ct.values())[0])


@pytest.mark.parametrize("model", ["P", "S"])
def test_findscu_study_level_matches_the_files(server: Server, stored: Stored, tmp_path: Path,
                                               model: str) -> None:  # fmt: skip
    src = _ct(stored)
    keys = {"PatientID": src.PatientID, "StudyInstanceUID": "", "StudyDate": "",
            "AccessionNumber": "", "PatientName": "", "ModalitiesInStudy": "",
            "NumberOfStudyRelatedInstances": "", "AdmittingDiagnosesDescription": ""}  # fmt: skip
    rsp = findscu(server.port, model, "STUDY", keys, tmp_path / "out")
    assert len(rsp) == 1
    got = rsp[0]
    assert got.QueryRetrieveLevel == "STUDY"
    assert _keywords(got) == set(keys)  # exactly the requested keys
    assert got.StudyInstanceUID == src.StudyInstanceUID
    assert got.StudyDate == src.StudyDate and got.AccessionNumber == src.AccessionNumber
    assert str(got.PatientName) == str(src.PatientName)
    assert got.ModalitiesInStudy == "CT"
    assert int(got.NumberOfStudyRelatedInstances) == CT_SLICES
    assert got.AdmittingDiagnosesDescription == ""  # unsupported: empty (PS3.4 C.2.2.1.2)


def test_findscu_patient_level_in_the_patient_root_model(server: Server, stored: Stored,
                                                          tmp_path: Path) -> None:  # fmt: skip
    src = _ct(stored)
    keys = {"PatientID": src.PatientID, "PatientName": "", "PatientBirthDate": "",
            "PatientSex": "", "NumberOfPatientRelatedInstances": ""}  # fmt: skip
    rsp = findscu(server.port, "P", "PATIENT", keys, tmp_path / "out")
    assert len(rsp) == 1
    got = rsp[0]
    assert _keywords(got) == set(keys)
    assert str(got.PatientName) == str(src.PatientName)
    assert got.PatientBirthDate == src.PatientBirthDate and got.PatientSex == src.PatientSex


@pytest.mark.parametrize("model", ["P", "S"])
def test_findscu_series_and_image_levels(server: Server, stored: Stored, tmp_path: Path,
                                         model: str) -> None:  # fmt: skip
    src = _ct(stored)
    hierarchy = {"PatientID": src.PatientID} if model == "P" else {}
    series = findscu(server.port, model, "SERIES",
                     {**hierarchy, "StudyInstanceUID": src.StudyInstanceUID,
                      "SeriesInstanceUID": "", "Modality": "", "SeriesNumber": "",
                      "NumberOfSeriesRelatedInstances": ""}, tmp_path / "series")  # fmt: skip
    assert [s.SeriesInstanceUID for s in series] == [src.SeriesInstanceUID]
    assert series[0].Modality == "CT" and int(series[0].SeriesNumber) == int(src.SeriesNumber)
    assert int(series[0].NumberOfSeriesRelatedInstances) == CT_SLICES
    images = findscu(server.port, model, "IMAGE",
                     {**hierarchy, "StudyInstanceUID": src.StudyInstanceUID,
                      "SeriesInstanceUID": src.SeriesInstanceUID, "SOPInstanceUID": "",
                      "InstanceNumber": "", "SOPClassUID": ""}, tmp_path / "images")  # fmt: skip
    by_uid = {str(d.SOPInstanceUID): d for d in images}
    files = {str(d.SOPInstanceUID): d for d in map(_read, stored.ct.values())
             if d.SeriesInstanceUID == src.SeriesInstanceUID}  # fmt: skip
    assert set(by_uid) == set(files)
    for uid, d in by_uid.items():
        assert int(d.InstanceNumber) == int(files[uid].InstanceNumber)
        assert d.SOPClassUID == files[uid].SOPClassUID


def test_pynetdicom_finds_every_corpus_file_with_its_attributes(server: Server,
                                                               stored: Stored) -> None:  # fmt: skip
    keys = ("PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID",
            "Modality", "StudyDate")  # fmt: skip
    for uid, path in stored.corpus.items():
        src = _read(path)
        matches, final = c_find(server.port, "IMAGE", {"SOPInstanceUID": uid,
                                                       **dict.fromkeys(keys, "")})  # fmt: skip
        assert final == 0 and len(matches) == 1, path.name
        got = matches[0]
        for k in keys:
            want = str(src.get(k, "") or "").rstrip("^ ")  # PN: empty components
            assert str(got.get(k, "") or "").rstrip("^ ") == want, f"{path.name}: {k}"


def test_wildcard_and_range_matching(server: Server, stored: Stored) -> None:
    src = _ct(stored)
    name = str(src.PatientName)
    matches, final = c_find(server.port, "STUDY", {"PatientName": name[:3].lower() + "*",
                                                   "StudyDate": f"{src.StudyDate}-",
                                                   "StudyInstanceUID": ""})  # fmt: skip
    assert final == 0
    assert src.StudyInstanceUID in {m.StudyInstanceUID for m in matches}


def test_a_bad_level_is_refused_with_a_comment(server: Server) -> None:
    matches, final = c_find(server.port, "FRAME", {"PatientID": ""})
    assert not matches and final == 0xA900


def test_c_cancel_stops_the_matches(server: Server) -> None:
    datasets = list(ct_series(400, 400, rows=2, columns=2))
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(datasets[0].SOPClassUID)
    ae.add_requested_context(MODELS["S"])
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS", evt_handlers=NODELAY)
    assert assoc.is_established
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0
    query = identifier("IMAGE", {"SeriesInstanceUID": datasets[0].SeriesInstanceUID,
                                 "SOPInstanceUID": ""})  # fmt: skip
    # The server may legitimately finish before a cancel reaches it (400 small
    # matches go out fast on a loaded machine): try a few times, each with its
    # own message ID, and require one cancelled query.
    outcomes = []
    for msg_id in (7, 17, 27):
        pending, final = 0, None
        for status, _ in assoc.send_c_find(query, MODELS["S"], msg_id=msg_id):
            if status.Status == 0xFF00:
                pending += 1
                if pending == 1:
                    assoc.send_c_cancel(msg_id, query_model=MODELS["S"])
            else:
                final = int(status.Status)
        outcomes.append((final, pending))
        if final == 0xFE00:
            break
        assert (final, pending) == (0x0000, len(datasets)), outcomes  # finished first
    assert final == 0xFE00, outcomes
    assert pending < len(datasets)
    # the association is still good after a cancel
    matches = list(assoc.send_c_find(query, MODELS["S"], msg_id=8))
    assert sum(1 for s, _ in matches if s.Status == 0xFF00) == len(datasets)
    assoc.release()
