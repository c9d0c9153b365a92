"""C-FIND with DCMTK findscu and pynetdicom: answers match the files, exactly the requested keys."""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dsutils import decode

from engine.synthetic import ct_series
from tests.net._support import Server, identifier_args, run_dcmtk
from tests.net.conftest import CT_SLICES, Stored
from tests.net.find_helpers import MODELS, PATHS, c_find, find_association, identifier
from tests.reliability._raw import (
    FIND_CONTEXT,
    RawPeer,
    command_for,
    data_set,
    find_request,
    p_data,
)

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


@pytest.mark.parametrize("via", PATHS)
def test_pynetdicom_finds_every_corpus_file_with_its_attributes(server: Server, stored: Stored,
                                                               via: str) -> None:  # fmt: skip
    keys = ("PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID",
            "Modality", "StudyDate")  # fmt: skip
    for uid, path in stored.corpus.items():
        src = _read(path)
        matches, final = c_find(server.port, "IMAGE", {"SOPInstanceUID": uid,
                                                       **dict.fromkeys(keys, "")},
                                via=via)  # fmt: skip
        assert final == 0 and len(matches) == 1, path.name
        got = matches[0]
        for k in keys:
            want = str(src.get(k, "") or "").rstrip("^ ")  # PN: empty components
            assert str(got.get(k, "") or "").rstrip("^ ") == want, f"{path.name}: {k}"


@pytest.mark.parametrize("via", PATHS)
def test_wildcard_and_range_matching(server: Server, stored: Stored, via: str) -> None:
    src = _ct(stored)
    name = str(src.PatientName)
    matches, final = c_find(server.port, "STUDY", {"PatientName": name[:3].lower() + "*",
                                                   "StudyDate": f"{src.StudyDate}-",
                                                   "StudyInstanceUID": ""}, via=via)  # fmt: skip
    assert final == 0
    assert src.StudyInstanceUID in {m.StudyInstanceUID for m in matches}


@pytest.mark.parametrize("via", PATHS)
def test_a_bad_level_is_refused_with_a_comment(server: Server, via: str) -> None:
    matches, final = c_find(server.port, "FRAME", {"PatientID": ""}, via=via)
    assert not matches and final == 0xA900


@pytest.mark.parametrize("via", PATHS)
def test_c_cancel_stops_the_matches(server: Server, via: str) -> None:
    datasets = list(ct_series(400 + PATHS.index(via), 400, rows=2, columns=2))
    assoc = find_association(server.port, via, datasets[0].SOPClassUID, MODELS["S"])
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0
    query = identifier("IMAGE", {"SeriesInstanceUID": datasets[0].SeriesInstanceUID,
                                 "SOPInstanceUID": ""})  # fmt: skip
    # The fast path reads a C-CANCEL as soon as it has read the request, and
    # sends 400 small matches before pynetdicom has decoded the first: there
    # the cancel goes straight after the request (pynetdicom sends the
    # C-FIND-RQ when send_c_find is called). pynetdicom's SCP drops a cancel
    # that comes before its handler starts (Association._serve_request), so
    # there it goes on the first pending response. The server may still
    # finish first: try a few times, each with its own message ID, and
    # require one cancelled query.
    early = via == "fast"
    outcomes = []
    for msg_id in (7, 17, 27):
        responses = assoc.send_c_find(query, MODELS["S"], msg_id=msg_id)
        if early:
            assoc.send_c_cancel(msg_id, query_model=MODELS["S"])
        pending, final = 0, None
        for status, _ in responses:
            if status.Status == 0xFF00:
                pending += 1
                if pending == 1 and not early:
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


def _answers(port: int, via: str, syntax: str, queries: list[tuple[str, dict[str, Any]]],
             model: str = "S") -> list[list[Dataset]]:  # fmt: skip
    assoc = find_association(port, via, MODELS[model], syntaxes=[syntax])
    out = []
    try:
        for level, keys in queries:
            statuses, matches = [], []
            for status, ds in assoc.send_c_find(identifier(level, keys), MODELS[model]):
                statuses.append(int(status.Status))
                if ds is not None and status.Status in (0xFF00, 0xFF01):
                    matches.append(ds)
            assert statuses[-1] == 0 and len(statuses) == len(matches) + 1, (level, statuses)
            out.append(matches)
    finally:
        assoc.release()
    return out


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian,
                                    DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_both_paths_give_the_same_answers(server: Server, stored: Stored, syntax: str) -> None:
    """The fast path's C-FIND answers equal pynetdicom's, element for element, in every syntax."""
    src = _ct(stored)
    queries = [
        ("STUDY", {"PatientID": src.PatientID, "StudyInstanceUID": "", "StudyDate": "",
                   "PatientName": "", "ModalitiesInStudy": "", "RetrieveAETitle": "",
                   "InstanceAvailability": "", "NumberOfStudyRelatedInstances": "",
                   "AdmittingDiagnosesDescription": "", "SpecificCharacterSet": ""}),
        ("STUDY", {"PatientName": "*", "StudyInstanceUID": "", "PatientID": "",
                   "StudyDescription": "", "AccessionNumber": ""}),
        ("SERIES", {"StudyInstanceUID": src.StudyInstanceUID, "SeriesInstanceUID": "",
                    "Modality": "", "SeriesNumber": "", "NumberOfSeriesRelatedInstances": ""}),
        ("IMAGE", {"SeriesInstanceUID": src.SeriesInstanceUID, "SOPInstanceUID": "",
                   "InstanceNumber": "", "SOPClassUID": "", "Rows": None}),
    ]  # fmt: skip
    fast = _answers(server.port, "fast", syntax, queries)
    slow = _answers(server.port, "pynetdicom", syntax, queries)
    assert [len(m) for m in fast] == [len(m) for m in slow]
    assert len(fast[1]) > 1 and len(fast[3]) == CT_SLICES
    assert fast == slow


def test_a_cancel_for_another_request_is_ignored(server: Server, stored: Stored) -> None:
    """PS3.7 9.3.2.3: a C-CANCEL names the request it cancels; another's changes nothing."""
    src = _ct(stored)
    assoc = find_association(server.port, "fast", MODELS["S"])
    try:
        query = identifier("IMAGE", {"SeriesInstanceUID": src.SeriesInstanceUID,
                                     "SOPInstanceUID": ""})  # fmt: skip
        statuses = []
        for status, _ in assoc.send_c_find(query, MODELS["S"], msg_id=5):
            statuses.append(int(status.Status))
            if len(statuses) == 1:
                assoc.send_c_cancel(99, query_model=MODELS["S"])
        assert statuses == [0xFF00] * CT_SLICES + [0]
        again = [int(s.Status) for s, _ in assoc.send_c_find(query, MODELS["S"], msg_id=6)]
        assert again == [0xFF00] * CT_SLICES + [0]  # the stray cancel broke nothing
    finally:
        assoc.release()


# A Patient ID, then a sequence whose item runs past the end of the identifier
BROKEN_IDENTIFIER = (bytes.fromhex("08005200") + b"CS" + (6).to_bytes(2, "little") + b"STUDY "
                     + bytes.fromhex("10002000") + b"SQ\0\0" + b"\xff" * 4
                     + bytes.fromhex("feff00e0") + (16).to_bytes(4, "little") + b"abc")  # fmt: skip


def _find_peer(port: int) -> RawPeer:
    peer = RawPeer(port)
    peer.associate(via_pynetdicom=False, with_find=True)  # storage and C-FIND: the fast path
    return peer


def _read_find_responses(peer: RawPeer) -> tuple[int, Dataset]:
    """Read responses up to the final one: (pending responses, the final command set)."""
    pending = 0
    while True:
        kind, body = peer.read_pdu()
        assert kind == 0x04, f"PDU type {kind}"
        if not body[5] & 0x01:  # a data set PDV: the identifier of a pending response
            continue
        command = decode(BytesIO(body[6:]), True, True)
        if command.Status != 0xFF00:
            return pending, command
        pending += 1


def test_an_undecodable_identifier_gets_a900_and_the_association_goes_on(server: Server) -> None:
    peer = _find_peer(server.port)
    try:
        peer.send(find_request(BROKEN_IDENTIFIER, message_id=3))
        pending, final = _read_find_responses(peer)
        assert (pending, final.Status, final.MessageIDBeingRespondedTo) == (0, 0xA900, 3)
        assert "cannot decode identifier" in final.ErrorComment
        good = data_set(identifier("STUDY", {"StudyInstanceUID": ""}))
        peer.send(find_request(good, message_id=4))
        pending, final = _read_find_responses(peer)
        assert final.Status == 0 and pending > 1
    finally:
        peer.close()


@pytest.mark.parametrize("intrusion", ["data set", "store request", "abort"])
def test_anything_but_a_cancel_during_a_find_ends_it(server: Server, intrusion: str) -> None:
    """PS3.7 D.3.3.3: with one operation outstanding, only C-CANCEL may come while we answer."""
    every_image = data_set(identifier("IMAGE", {"SOPInstanceUID": ""}))
    extra = {"data set": p_data(FIND_CONTEXT, 0x02, every_image),
             "store request": p_data(FIND_CONTEXT, 0x03, command_for("1.2.3.4")),
             "abort": bytes.fromhex("070000000004") + bytes(4)}[intrusion]  # fmt: skip
    peer = _find_peer(server.port)
    try:
        # in one send: it is there before the first answer, whatever the machine's speed
        peer.send(find_request(every_image) + extra)
        while True:  # answers sent before the intrusion was read, then the abort or the close
            outcome = peer.outcome()
            if outcome != "data":
                break
        assert outcome in ({"closed"} if intrusion == "abort" else {"abort", "closed"})
    finally:
        peer.close()
    assert c_find(server.port, "STUDY", {"StudyInstanceUID": ""})[1] == 0  # the worker is fine
