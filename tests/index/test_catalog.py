"""The LMDB hierarchy: counters, computed study keys, the study indexes, empty IDs, map growth."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import MRImageStorage

import engine
from engine.index import keys as K
from engine.query.plan import index_keys
from engine.synthetic import StudyPlan, ct_series, encode
from tests._helpers import deep_copy, iter_find, small_ct

STUDY_FIELDS = ("PatientID", "PatientName", "StudyDate", "AccessionNumber")


def counts(archive: engine.Archive) -> dict[str, int]:
    c = archive.catalog.counters()
    s = archive.stats()
    return {
        "patients": s["patients"],
        "studies": c.get("studies", 0),
        "series": c.get("series", 0),
        "instances": c.get("instances", 0),
        "duplicates": c.get("duplicates", 0),
    }


def expected_ix(archive: engine.Archive) -> set[bytes]:
    """Every ix_study key the stored studies call for, from their documents."""
    out = set()
    with archive.env.read() as txn:
        for study_uid in archive.catalog.all_keys(txn, "studies"):
            doc = archive.catalog.doc(txn, "studies", study_uid)
            assert doc is not None
            for field in STUDY_FIELDS:
                for norm in index_keys(field, doc["a"].get(field)):
                    out.add(K.ix_key(field, norm, study_uid))
            for modality in doc["mods"]:
                for norm in index_keys("ModalitiesInStudy", modality):
                    out.add(K.ix_key("ModalitiesInStudy", norm, study_uid))
    return out


def actual_ix(archive: engine.Archive) -> set[bytes]:
    with archive.env.read() as txn:
        cur = txn.cursor(db=archive.catalog.db["ix_study"])
        return {bytes(k) for k in cur.iternext(values=False)}


def assert_ix_consistent(archive: engine.Archive) -> None:
    expected, actual = expected_ix(archive), actual_ix(archive)
    assert actual - expected == set(), f"stale index keys: {sorted(actual - expected)[:5]}"
    assert expected - actual == set(), f"missing index keys: {sorted(expected - actual)[:5]}"
    with archive.env.read() as txn:
        studies = set(archive.catalog.all_keys(txn, "studies"))
    for key in actual:
        assert key.rpartition(K.SEP)[2].decode() in studies


def study(pid: str, name: str, uid: str, date: str, acc: str) -> StudyPlan:
    return StudyPlan(pid, name, uid, date, acc)


def make_series(seed: int, n: int, plan: StudyPlan, modality: str = "CT") -> list[Any]:
    out = list(ct_series(seed, n, rows=2, columns=2, study=plan))
    for ds in out:
        ds.StudyDescription = "Study"
        if modality != "CT":
            ds.Modality = modality
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    return out


def test_counters_follow_add_duplicate_and_delete(tmp_path: Path) -> None:
    plan = study("PID1", "Doe^Jane", "1.2.826.0.1.3680043.10.543.1", "20200101", "A1")
    ct = make_series(1, 3, plan)
    mr = make_series(2, 2, plan, "MR")
    with engine.open_archive(tmp_path) as archive:
        assert counts(archive) == dict(patients=0, studies=0, series=0, instances=0, duplicates=0)
        for ds in ct + mr:
            archive.store(ds)
        assert counts(archive) == dict(patients=1, studies=1, series=2, instances=5, duplicates=0)
        archive.store(ct[0])
        assert counts(archive) == dict(patients=1, studies=1, series=2, instances=5, duplicates=1)
        archive.delete(sop_instance_uid=ct[1].SOPInstanceUID)
        assert counts(archive) == dict(patients=1, studies=1, series=2, instances=4, duplicates=1)
        [row] = iter_find(
            archive,
            "STUDY",
            {
                "NumberOfStudyRelatedInstances": "",
                "NumberOfStudyRelatedSeries": "",
                "SOPClassesInStudy": "",
            },
        )
        assert (int(row.NumberOfStudyRelatedInstances), int(row.NumberOfStudyRelatedSeries)) == (
            4,
            2,
        )
        assert set(row.SOPClassesInStudy) == {ct[0].SOPClassUID, MRImageStorage}
        archive.delete(series_instance_uid=mr[0].SeriesInstanceUID)
        assert counts(archive) == dict(patients=1, studies=1, series=1, instances=2, duplicates=1)
        [row] = iter_find(archive, "STUDY", {"SOPClassesInStudy": ""})
        assert row.SOPClassesInStudy == ct[0].SOPClassUID
        archive.delete(patient_id="PID1")
        assert counts(archive) == dict(patients=0, studies=0, series=0, instances=0, duplicates=1)
        assert actual_ix(archive) == set()
        with archive.env.read() as txn:
            for db in (
                "instances",
                "series",
                "studies",
                "patients",
                "study_series",
                "series_instances",
                "patient_studies",
                "ix_study",
            ):
                assert txn.stat(archive.catalog.db[db])["entries"] == 0, db


def test_modalities_in_study_follow_series_deletion(tmp_path: Path) -> None:
    plan = study("PID2", "Roe^Richard", "1.2.826.0.1.3680043.10.543.2", "20210202", "A2")
    ct, mr, mr2 = (
        make_series(3, 2, plan),
        make_series(4, 2, plan, "MR"),
        make_series(5, 1, plan, "MR"),
    )
    with engine.open_archive(tmp_path) as archive:
        for ds in ct + mr + mr2:
            archive.store(ds)

        def modalities() -> str:
            [row] = iter_find(archive, "STUDY", {"ModalitiesInStudy": ""})
            value = row.ModalitiesInStudy
            return "\\".join(value) if not isinstance(value, str) else value

        assert modalities() == "CT\\MR"
        assert_ix_consistent(archive)
        archive.delete(series_instance_uid=mr[0].SeriesInstanceUID)
        assert modalities() == "CT\\MR"  # another MR series is left
        archive.delete(series_instance_uid=mr2[0].SeriesInstanceUID)
        assert modalities() == "CT"
        assert list(iter_find(archive, "STUDY", {"ModalitiesInStudy": "MR"})) == []
        assert len(list(iter_find(archive, "STUDY", {"ModalitiesInStudy": "CT"}))) == 1
        assert_ix_consistent(archive)
        archive.store(mr[0])
        assert modalities() == "CT\\MR"
        assert_ix_consistent(archive)


def test_study_indexes_stay_consistent_through_changes(tmp_path: Path) -> None:
    plans = [
        study(
            f"PID{i}",
            f"Name{i}^Given",
            f"1.2.826.0.1.3680043.10.543.3{i}",
            f"2019010{i + 1}",
            f"ACC{i}",
        )
        for i in range(4)
    ]
    series = [make_series(10 + i, 2, plans[i % 4], "MR" if i % 3 == 0 else "CT") for i in range(8)]
    with engine.open_archive(tmp_path) as archive:
        for s in series:
            for ds in s:
                archive.store(ds)
        assert_ix_consistent(archive)
        assert len(expected_ix(archive)) >= 4 * 5
        # a newer store changes study-level attributes: the old index keys must go
        changed = deep_copy(series[0][0])
        changed.PatientName = "Renamed^Person"
        changed.AccessionNumber = "NEWACC"
        archive.store(encode(changed))
        assert_ix_consistent(archive)
        hits = list(iter_find(archive, "STUDY", {"PatientName": "renamed*"}))
        assert [h.StudyInstanceUID for h in hits] == [plans[0].study_uid]
        assert list(iter_find(archive, "STUDY", {"AccessionNumber": "NEWACC"}))
        for s in series[1::2]:
            archive.delete(series_instance_uid=s[0].SeriesInstanceUID)
            assert_ix_consistent(archive)
        archive.delete(study_instance_uid=plans[2].study_uid)
        assert_ix_consistent(archive)
        archive.delete(sop_instance_uid=series[0][1].SOPInstanceUID)
        assert_ix_consistent(archive)
        before = actual_ix(archive)
    with engine.open_archive(tmp_path) as archive:
        archive.reindex()
        assert_ix_consistent(archive)
        assert actual_ix(archive) == before


def test_patient_with_empty_patient_id(tmp_path: Path) -> None:
    with_id = small_ct(20)
    anonymous = [small_ct(21 + i) for i in range(2)]
    for ds in anonymous:
        ds.PatientID = ""
    absent = small_ct(30)
    del absent.PatientID
    with engine.open_archive(tmp_path) as archive:
        for ds in [with_id, *anonymous, absent]:
            archive.store(ds)
        assert archive.stats()["patients"] == 2
        rows = {
            str(r.PatientID): r
            for r in iter_find(archive, "PATIENT", {"NumberOfPatientRelatedStudies": ""})
        }
        assert set(rows) == {"", with_id.PatientID}
        assert int(rows[""].NumberOfPatientRelatedStudies) == 3
        studies = list(iter_find(archive, "STUDY", {"PatientID": "", "StudyInstanceUID": ""}))
        assert len(studies) == 4
        assert_ix_consistent(archive)
        assert archive.delete(patient_id="") == 3
        assert archive.stats()["patients"] == 1
        assert archive.get(with_id.SOPInstanceUID)
        assert_ix_consistent(archive)


def _uid_variants(template_seed: int) -> tuple[bytes, Any]:
    ds = small_ct(template_seed, 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a long LO on purpose: it makes the index grow faster
        ds.SeriesDescription = "a long series description " * 100
        return encode(ds), ds


def test_index_map_grows_from_one_mebibyte(tmp_path: Path) -> None:
    template, ds = _uid_variants(40)
    sop, ser, stu = ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID

    def variant(i: int) -> bytes:
        data = template
        for uid, k in ((sop, i), (ser, i), (stu, i // 10)):
            data = data.replace(uid.encode(), (uid[:-7] + f"{k:07d}").encode())  # same length
        return data

    n = 2000
    with engine.open_archive(tmp_path, index_map_bytes=1 << 20, durability="none") as archive:
        assert archive.env.env.info()["map_size"] == 1 << 20
        uids = [archive.store(variant(i)).sop_instance_uid for i in range(n)]
        assert archive.env.env.info()["map_size"] >= 8 << 20  # at least three doublings
        assert archive.stats()["instances"] == n
        assert archive.stats()["studies"] == n // 10
    with engine.open_archive(tmp_path, index_map_bytes=1 << 20) as archive:
        assert archive.stats()["instances"] == n
        for i in (0, n // 2, n - 1):
            assert archive.get(uids[i]) == variant(i)
        assert len(list(iter_find(archive, "SERIES", {"SeriesDescription": ""}))) == n
        assert archive.verify().ok


@pytest.mark.parametrize("value", ["", "PID", "Ünïcödé"])
def test_patient_key_round_trips(value: str) -> None:
    assert K.patient_id_of(K.patient_key(value)) == value
    assert K.patient_key(value).encode()  # LMDB refuses the empty key; this never is


def test_location_and_segment_state_encodings() -> None:
    loc = K.Location(7, 2**40, 12345, 678, 1_700_000_000_000_000_000)
    packed = K.pack_instance(loc, {"series": "1.2", "study": "1.3", "a": {"Rows": 4}})
    assert K.unpack_location(packed) == loc
    assert K.unpack_instance(packed) == (loc, {"series": "1.2", "study": "1.3", "a": {"Rows": 4}})
    st = K.SegmentState(K.SEG_SEALED, 99, 50, 49, K.SEG_FLAG_COLD)
    assert K.unpack_segment(K.pack_segment(st)) == st
    assert K.seg_key(1) < K.seg_key(256) < K.seg_key(2**24)  # big endian: ids sort numerically
