"""Archive: store, get, get_metadata, find, delete and duplicates, on real files and folders."""

from __future__ import annotations

import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage

import engine
from engine.errors import (
    DuplicateInstanceError,
    InvalidInstanceError,
    InvalidUIDError,
    MalformedDicomError,
    MissingAttributeError,
    NotDicomError,
    NotFoundError,
    UnsupportedTransferSyntaxError,
)
from engine.synthetic import StudyPlan, ct_series, encode
from tests._helpers import (
    assert_same_instance,
    dataset_diff,
    deep_copy,
    iter_find,
    read,
    segment_sizes,
    small_ct,
    small_ct_bytes,
)
from tests.corpus import corpus_id, real_files, unreadable_files

REQUIRED = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID")
# Files of the corpus that end before their last element does (pydicom reads them leniently).
TRUNCATED = {
    "MR_truncated.dcm",
    "rtplan_truncated.dcm",
    "emri_small_jpeg_2k_lossless_too_short.dcm",
}
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


def expected_rejection(path: Path) -> tuple[type[Exception], str] | None:
    """The error a store of this corpus file must raise (and a word its message names), or None."""
    if path.name in TRUNCATED:
        return MalformedDicomError, "malformed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # values convert lazily: keep the reads inside
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in REQUIRED:
            value = str(ds.get(keyword, "") or "").rstrip("\x00 ")
            if not value:
                return MissingAttributeError, keyword
            if len(value) > 64 or not _UID.fullmatch(value):
                return InvalidUIDError, keyword
    return None


# -- the real-file corpus -------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One archive holding the whole corpus, stored in order; outcomes by path."""
    archive = engine.open_archive(tmp_path_factory.mktemp("corpus"), durability="none")
    outcome: dict[Path, Any] = {}
    newest: dict[str, Path] = {}
    for path in real_files():
        try:
            result = archive.store(path)
        except InvalidInstanceError as exc:
            outcome[path] = exc
        else:
            outcome[path] = result
            newest[result.sop_instance_uid] = path
    yield {"archive": archive, "outcome": outcome, "newest": newest}
    archive.close()


def test_corpus_is_big_enough() -> None:
    names = {p.name for p in real_files()}
    assert len(names) > 100
    for name in (
        "MR_small_bigendian.dcm",
        "image_dfl.dcm",
        "JPEG-LL.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_RLE.dcm",
        "emri_small.dcm",
        "SC_rgb.dcm",
        "JPEG-lossy.dcm",
    ):
        assert name in names


@pytest.mark.parametrize("path", real_files(), ids=corpus_id)
def test_real_file_round_trip(corpus: dict[str, Any], path: Path, tmp_path: Path) -> None:
    result = corpus["outcome"][path]
    rejection = expected_rejection(path)
    if rejection is not None:
        cls, word = rejection
        assert isinstance(result, cls), f"expected {cls.__name__}, got {result!r}"
        assert word.lower() in str(result).lower()
        return
    assert isinstance(result, engine.StoreResult), f"a valid file was refused: {result!r}"
    source = path.read_bytes()
    archive = corpus["archive"]
    if corpus["newest"][result.sop_instance_uid] != path:
        # a later corpus file has the same SOP Instance UID: check this one on its own
        archive = engine.open_archive(tmp_path, durability="none")
        archive.store(path)
    try:
        got = archive.get(result.sop_instance_uid)
        assert_same_instance(source, got)
        assert result.transfer_syntax == read(source).file_meta.TransferSyntaxUID
        meta = archive.get_metadata(result.sop_instance_uid)
        assert not PIXEL_TAGS & {int(t) for t in meta.keys()}  # noqa: SIM118
        src = read(source)  # elements after Pixel Data (trailing padding) are metadata too
        assert dataset_diff(src, meta, skip=PIXEL_TAGS) is None, dataset_diff(
            src, meta, skip=PIXEL_TAGS
        )
        assert dataset_diff(src.file_meta, meta.file_meta) is None
    finally:
        if archive is not corpus["archive"]:
            archive.close()


def test_corpus_counts(corpus: dict[str, Any]) -> None:
    archive = corpus["archive"]
    stored = [r for r in corpus["outcome"].values() if isinstance(r, engine.StoreResult)]
    stats = archive.stats()
    assert stats["instances"] == len(corpus["newest"])
    assert stats["duplicates"] == len(stored) - len(corpus["newest"])
    assert stats["studies"] == len({r.study_instance_uid for r in stored})
    assert stats["series"] == len({r.series_instance_uid for r in stored})
    assert archive.verify().ok


@pytest.mark.parametrize("path", unreadable_files(), ids=corpus_id)
def test_unreadable_corpus_file_is_rejected(tmp_path: Path, path: Path) -> None:
    with engine.open_archive(tmp_path) as archive:
        keep = archive.store(small_ct_bytes(1))
        before = segment_sizes(tmp_path), archive.stats()
        with pytest.raises((NotDicomError, MalformedDicomError)) as info:
            archive.store(path)
        assert str(info.value)
        assert (segment_sizes(tmp_path), archive.stats()) == before
        assert archive.get(keep.sop_instance_uid) == small_ct_bytes(1)


# -- generated rejects ------------------------------------------------------------------


def _with(**changes: Any) -> bytes:
    ds = small_ct(7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the very values we want
        for keyword, value in changes.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        return encode(ds)


def _unknown_syntax() -> bytes:
    data = small_ct_bytes(7)
    old = pydicom.uid.ExplicitVRLittleEndian.encode() + b"\x00"
    assert data.count(old) == 1
    return data.replace(old, b"1.2.3.4.5.6.7.8.9.1\x00")  # same length: the framing stays valid


REJECTS = {
    "random_bytes": (lambda: np.random.default_rng(5).bytes(3000), NotDicomError, "File Meta"),
    "empty": (lambda: b"", NotDicomError, ""),
    "text": (lambda: b"hello, this is not DICOM\n" * 20, NotDicomError, ""),
    "truncated_ct": (lambda: small_ct_bytes(7)[:-100], MalformedDicomError, "byte"),
    "truncated_in_header": (lambda: small_ct_bytes(7)[:300], MalformedDicomError, "byte"),
    "uid_65_chars": (lambda: _with(SOPInstanceUID="1." + "2" * 63), InvalidUIDError, "65"),
    "uid_leading_zero": (
        lambda: _with(SeriesInstanceUID="1.2.03.4"),
        InvalidUIDError,
        "SeriesInstanceUID",
    ),
    "uid_letters": (lambda: _with(StudyInstanceUID="1.2.abc"), InvalidUIDError, "StudyInstanceUID"),
    "no_sop_uid": (lambda: _with(SOPInstanceUID=None), MissingAttributeError, "SOPInstanceUID"),
    "no_series_uid": (
        lambda: _with(SeriesInstanceUID=None),
        MissingAttributeError,
        "SeriesInstanceUID",
    ),
    "no_study_uid": (
        lambda: _with(StudyInstanceUID=None),
        MissingAttributeError,
        "StudyInstanceUID",
    ),
    "empty_study_uid": (
        lambda: _with(StudyInstanceUID=""),
        MissingAttributeError,
        "StudyInstanceUID",
    ),
    "unknown_transfer_syntax": (
        _unknown_syntax,
        UnsupportedTransferSyntaxError,
        "1.2.3.4.5.6.7.8.9.1",
    ),
}


@pytest.mark.parametrize("case", sorted(REJECTS))
def test_invalid_instance_is_rejected_and_writes_nothing(tmp_path: Path, case: str) -> None:
    make, cls, word = REJECTS[case]
    data = make()
    with engine.open_archive(tmp_path) as archive:
        earlier = [small_ct_bytes(seed) for seed in (1, 2)]
        uids = [archive.store(d).sop_instance_uid for d in earlier]
        before = segment_sizes(tmp_path), archive.stats()
        with pytest.raises(cls) as info:
            archive.store(data)
        assert word in str(info.value)
        assert isinstance(info.value, InvalidInstanceError) and isinstance(info.value, ValueError)
        path = tmp_path / "input.dcm"
        path.write_bytes(data)
        with pytest.raises(cls):
            archive.store(path)
        assert (segment_sizes(tmp_path), archive.stats()) == before
        for uid, d in zip(uids, earlier, strict=True):
            assert archive.get(uid) == d
        assert archive.verify().ok


def test_missing_file_is_rejected(tmp_path: Path) -> None:
    with (
        engine.open_archive(tmp_path) as archive,
        pytest.raises(InvalidInstanceError, match="cannot read"),
    ):
        archive.store(tmp_path / "nope.dcm")


def test_bare_dataset_needs_its_transfer_syntax(tmp_path: Path) -> None:
    ds = small_ct(3)
    full = encode(ds)
    body = full[
        132 + 12 + int.from_bytes(full[140:144], "little") :
    ]  # after preamble and group 0002
    with engine.open_archive(tmp_path) as archive:
        with pytest.raises(NotDicomError, match="transfer syntax"):
            archive.store(body)
        r = archive.store(
            body, transfer_syntax=pydicom.uid.ExplicitVRLittleEndian, source_ae="MODALITY1"
        )
        out = read(archive.get(r.sop_instance_uid))
        assert out.file_meta.SourceApplicationEntityTitle == "MODALITY1"
        assert out.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert dataset_diff(read(full), out) is None


# -- duplicates, threads, config, datasets ----------------------------------------------------


def test_duplicate_keeps_the_newest(tmp_path: Path) -> None:
    ds = small_ct(11)
    first = encode(ds)
    changed = deep_copy(ds)
    changed.PatientName = "Changed^Name"
    changed.PixelData = bytes(len(ds.PixelData))
    second = encode(changed)
    with engine.open_archive(tmp_path) as archive:
        assert archive.store(first).duplicate is False
        r = archive.store(second)
        assert r.duplicate is True
        assert archive.get(ds.SOPInstanceUID) == second
        stats = archive.stats()
        assert (stats["instances"], stats["duplicates"]) == (1, 1)
        assert stats["dead_bytes"] >= len(first) - 128
        [hit] = iter_find(archive, "IMAGE", {"SOPInstanceUID": ds.SOPInstanceUID})
        assert hit.SOPInstanceUID == ds.SOPInstanceUID
        [study] = iter_find(
            archive, "STUDY", {"PatientName": "", "NumberOfStudyRelatedInstances": ""}
        )
        assert (str(study.PatientName), int(study.NumberOfStudyRelatedInstances)) == (
            "Changed^Name",
            1,
        )
    with engine.open_archive(tmp_path) as archive:
        assert archive.get(ds.SOPInstanceUID) == second
        archive.reindex()
        assert archive.get(ds.SOPInstanceUID) == second
        assert archive.stats()["instances"] == 1


def test_duplicate_policy_reject(tmp_path: Path) -> None:
    data = small_ct_bytes(12)
    with engine.open_archive(tmp_path, duplicate_policy="reject") as archive:
        uid = archive.store(data).sop_instance_uid
        before = segment_sizes(tmp_path), archive.stats()
        with pytest.raises(DuplicateInstanceError, match=uid):
            archive.store(data)
        assert (segment_sizes(tmp_path), archive.stats()) == before
        assert archive.get(uid) == data


def test_concurrent_stores_all_come_back(tmp_path: Path) -> None:
    datas = [small_ct_bytes(100 + i, 8, 8) for i in range(64)]
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def work(indexes: range) -> None:
        try:
            for i in indexes:
                results[i] = archive.store(datas[i])
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the main thread
            errors.append(exc)

    with engine.open_archive(tmp_path) as archive:
        threads = [threading.Thread(target=work, args=(range(t, 64, 8),)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert archive.stats()["instances"] == 64
        for i, d in enumerate(datas):
            assert archive.get(results[i].sop_instance_uid) == d
    with engine.open_archive(tmp_path) as archive:
        assert archive.verify().ok
        assert archive.verify().instances == 64


def test_durability_none(tmp_path: Path) -> None:
    datas = [small_ct_bytes(200 + i) for i in range(5)]
    with engine.open_archive(tmp_path, durability="none") as archive:
        assert archive.config.durability == "none"
        uids = [archive.store(d).sop_instance_uid for d in datas]
    with engine.open_archive(tmp_path, durability="none") as archive:
        assert [archive.get(u) for u in uids] == datas
        assert archive.verify().ok


def test_store_a_pydicom_dataset(tmp_path: Path) -> None:
    ds = small_ct(300)
    without_meta = deep_copy(ds)
    del without_meta.file_meta
    without_meta.SOPInstanceUID = ds.SOPInstanceUID + ".1"
    with engine.open_archive(tmp_path) as archive:
        r = archive.store(ds)
        assert r.transfer_syntax == ds.file_meta.TransferSyntaxUID
        assert dataset_diff(ds, read(archive.get(ds.SOPInstanceUID))) is None
        r2 = archive.store(without_meta)
        assert r2.transfer_syntax == pydicom.uid.ExplicitVRLittleEndian
        out = read(archive.get(r2.sop_instance_uid))
        assert dataset_diff(without_meta, out) is None
        assert out.file_meta.MediaStorageSOPInstanceUID == without_meta.SOPInstanceUID
    # storing did not change the caller's dataset
    assert not hasattr(without_meta, "file_meta")


# -- find, against a brute-force reading of the same datasets -----------------------------------

PATIENTS = [
    ("PID001", "Smith^Anna"),
    ("PID002", "Smith^Ben"),
    ("PID003", "Garcia^Chloe"),
    ("PID004", "Tanaka^David"),
]
DATES = [
    "20190314",
    "20200101",
    "20200615",
    "20211231",
    "20220102",
    "20230808",
    "20200615",
    "20210704",
]


def generated_set() -> list[Dataset]:
    """8 studies of 4 patients, 1-2 series each (some MR), 2-3 instances per series."""
    out = []
    for s, date in enumerate(DATES):
        pid, name = PATIENTS[s % len(PATIENTS)]
        plan = StudyPlan(pid, name, f"1.2.826.0.1.3680043.10.543.{s + 1}", date, f"ACC{s:04d}")
        for k in range(1 + s % 2):
            series = list(
                ct_series(1000 + 10 * s + k, 2 + (s + k) % 2, rows=4, columns=4, study=plan)
            )
            for ds in series:
                ds.SeriesNumber = k + 1
                ds.StudyDescription = f"Study {s}"  # one value per study, whatever the series
                if k == 1 and s % 4 == 1:
                    ds.Modality = "MR"
                    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
            out.extend(series)
    return out


def brute_records(datasets: list[Dataset]) -> dict[str, dict[str, dict[str, Any]]]:
    """Records by level, keyed by unique key, each holding its own and its parents' attributes."""
    levels: dict[str, dict[str, dict[str, Any]]] = {
        "PATIENT": {},
        "STUDY": {},
        "SERIES": {},
        "IMAGE": {},
    }
    for ds in datasets:
        pat = {
            "PatientID": ds.PatientID,
            "PatientName": str(ds.PatientName),
            "PatientBirthDate": ds.PatientBirthDate,
            "PatientSex": ds.PatientSex,
        }
        study = {
            **pat,
            "StudyInstanceUID": ds.StudyInstanceUID,
            "StudyDate": ds.StudyDate,
            "AccessionNumber": ds.AccessionNumber,
            "StudyDescription": ds.StudyDescription,
        }
        series = {
            **study,
            "SeriesInstanceUID": ds.SeriesInstanceUID,
            "Modality": ds.Modality,
            "SeriesNumber": int(ds.SeriesNumber),
        }
        image = {
            **series,
            "SOPInstanceUID": ds.SOPInstanceUID,
            "SOPClassUID": ds.SOPClassUID,
            "InstanceNumber": int(ds.InstanceNumber),
            "Rows": int(ds.Rows),
        }
        p = levels["PATIENT"].setdefault(
            ds.PatientID, {**pat, "studies": set(), "series": set(), "n": 0}
        )
        st = levels["STUDY"].setdefault(
            ds.StudyInstanceUID, {**study, "mods": set(), "series": set(), "n": 0}
        )
        se = levels["SERIES"].setdefault(ds.SeriesInstanceUID, {**series, "n": 0})
        levels["IMAGE"][ds.SOPInstanceUID] = image
        for rec in (p, st):
            rec["series"].add(ds.SeriesInstanceUID)
        p["studies"].add(ds.StudyInstanceUID)
        st["mods"].add(ds.Modality)
        for rec in (p, st, se):
            rec["n"] += 1
    for p in levels["PATIENT"].values():
        p.update(
            NumberOfPatientRelatedStudies=len(p["studies"]),
            NumberOfPatientRelatedSeries=len(p["series"]),
            NumberOfPatientRelatedInstances=p["n"],
        )
    for st in levels["STUDY"].values():
        st.update(
            ModalitiesInStudy="\\".join(sorted(st["mods"])),
            NumberOfStudyRelatedSeries=len(st["series"]),
            NumberOfStudyRelatedInstances=st["n"],
        )
    for se in levels["SERIES"].values():
        se["NumberOfSeriesRelatedInstances"] = se["n"]
    return levels


def brute_match(keyword: str, query: str, stored: Any) -> bool:
    if query == "":
        return True
    if keyword == "ModalitiesInStudy":
        return query in str(stored).split("\\")
    if isinstance(stored, int):
        return int(query) == stored
    stored = str(stored)
    if keyword.endswith("UID"):
        return stored in query.split("\\")
    fold = keyword.endswith("Name")  # PN matching ignores case by default
    text, q = (stored.lower(), query.lower()) if fold else (stored, query)
    if "*" in q or "?" in q:
        pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in q)
        return re.fullmatch(pattern, text, re.S) is not None
    if keyword.endswith("Date") and "-" in q:
        lo, _, hi = q.partition("-")
        return (not lo or lo <= text) and (not hi or text <= hi)
    return text == q


UNIQUE = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}


def _norm(value: Any) -> Any:
    if value is None or value == "":
        return ""
    if isinstance(value, pydicom.valuerep.IS | int):
        return int(value)
    if isinstance(value, pydicom.multival.MultiValue | list):
        return "\\".join(str(v) for v in value)
    return str(value)


def find_queries(levels: dict[str, dict[str, dict[str, Any]]]) -> list[tuple[str, dict[str, str]]]:
    studies = sorted(levels["STUDY"])
    series = sorted(levels["SERIES"])
    images = sorted(levels["IMAGE"])
    return [
        ("PATIENT", {}),
        ("PATIENT", {"PatientID": "PID002", "PatientName": ""}),
        (
            "PATIENT",
            {"PatientName": "smith*", "PatientBirthDate": "", "NumberOfPatientRelatedStudies": ""},
        ),
        (
            "PATIENT",
            {
                "PatientName": "*a",
                "NumberOfPatientRelatedSeries": "",
                "NumberOfPatientRelatedInstances": "",
            },
        ),
        ("STUDY", {}),
        ("STUDY", {"StudyDate": "20200101-20211231", "PatientID": "", "StudyDescription": ""}),
        ("STUDY", {"StudyDate": "-20200615"}),
        ("STUDY", {"StudyDate": "20220101-", "AccessionNumber": ""}),
        ("STUDY", {"StudyDate": "20200615"}),
        ("STUDY", {"StudyInstanceUID": f"{studies[0]}\\{studies[3]}\\1.2.3.999", "StudyDate": ""}),
        ("STUDY", {"PatientName": "S?ith^*", "AccessionNumber": ""}),
        ("STUDY", {"AccessionNumber": "ACC0003", "PatientName": ""}),
        (
            "STUDY",
            {
                "ModalitiesInStudy": "MR",
                "NumberOfStudyRelatedSeries": "",
                "NumberOfStudyRelatedInstances": "",
            },
        ),
        ("STUDY", {"PatientID": "PID001", "StudyDate": "20190101-20201231"}),
        ("STUDY", {"PatientID": "PID*", "ModalitiesInStudy": ""}),
        ("SERIES", {}),
        ("SERIES", {"Modality": "MR", "StudyInstanceUID": ""}),
        (
            "SERIES",
            {
                "StudyInstanceUID": studies[1],
                "SeriesNumber": "",
                "NumberOfSeriesRelatedInstances": "",
            },
        ),
        ("SERIES", {"SeriesInstanceUID": f"{series[0]}\\{series[-1]}", "Modality": ""}),
        ("SERIES", {"StudyDate": "20200101-20211231", "Modality": ""}),
        ("IMAGE", {"SeriesInstanceUID": series[2], "InstanceNumber": ""}),
        ("IMAGE", {"SOPInstanceUID": "\\".join(images[:3]), "SOPClassUID": ""}),
        ("IMAGE", {"StudyInstanceUID": studies[2], "SeriesInstanceUID": "", "Rows": ""}),
        ("IMAGE", {"PatientID": "PID003", "Modality": "CT"}),
        ("IMAGE", {"InstanceNumber": "2", "StudyInstanceUID": ""}),
    ]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Any:
    datasets = generated_set()
    archive = engine.open_archive(tmp_path_factory.mktemp("generated"), durability="none")
    for ds in datasets:
        archive.store(ds)
    yield archive, brute_records(datasets)
    archive.close()


def _expected(levels: Any, level: str, query: dict[str, str]) -> dict[str, dict[str, Any]]:
    unique = UNIQUE[level]
    keys = list(dict.fromkeys([*query, unique]))
    out = {}
    for key, rec in levels[level].items():
        if all(brute_match(kw, q, rec.get(kw)) for kw, q in query.items()):
            out[key] = {kw: _norm(rec.get(kw)) for kw in keys}
    return out


def _found(archive: Any, level: str, query: dict[str, str]) -> dict[str, dict[str, Any]]:
    out = {}
    for ds in iter_find(archive, level, query):
        row = {e.keyword: _norm(e.value) for e in ds}
        key = row[UNIQUE[level]]
        assert key not in out, f"{key} returned twice"
        out[key] = row
    return out


def test_generated_set_shape(generated: Any) -> None:
    archive, levels = generated
    stats = archive.stats()
    assert (stats["patients"], stats["studies"], stats["series"], stats["instances"]) == (
        len(levels["PATIENT"]),
        len(levels["STUDY"]),
        len(levels["SERIES"]),
        len(levels["IMAGE"]),
    )
    assert any("MR" in s["ModalitiesInStudy"] for s in levels["STUDY"].values())


@pytest.mark.parametrize("n", range(25))
def test_find_matches_brute_force(generated: Any, n: int) -> None:
    archive, levels = generated
    level, query = find_queries(levels)[n]
    expected = _expected(levels, level, query)
    found = _found(archive, level, query)
    assert sorted(found) == sorted(expected), (level, query)
    for key, row in found.items():
        assert set(row) == set(expected[key]), f"{level} {query}: keys {sorted(row)}"
        assert row == expected[key], (level, query, key)
    if level != "PATIENT" or query:
        assert expected or level == "IMAGE", "the query should match something"


def test_find_limit_and_offset(generated: Any) -> None:
    archive, levels = generated
    everything = [ds.StudyInstanceUID for ds in iter_find(archive, "STUDY", {})]
    assert sorted(everything) == sorted(levels["STUDY"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        page = [ds.StudyInstanceUID for ds in archive.find("STUDY", {}, limit=3, offset=2)]
    assert page == everything[2:5]


def test_find_rejects_a_bad_query(generated: Any) -> None:
    archive, _ = generated
    with pytest.raises(engine.InvalidQueryError):
        list(archive.find("WARD", {}))
    with pytest.raises(engine.InvalidQueryError):
        list(archive.find("STUDY", {"NoSuchKeyword": "x"}))


# -- delete ---------------------------------------------------------------------------


def _gone(archive: Any, uids: list[str], levels: Any, kind: str, key: str) -> None:
    for uid in uids:
        with pytest.raises(NotFoundError):
            archive.get(uid)
        with pytest.raises(NotFoundError):
            archive.get_metadata(uid)
    found = {ds.SOPInstanceUID for ds in iter_find(archive, "IMAGE", {})}
    assert not found & set(uids)
    unique = {
        "patient": "PatientID",
        "study": "StudyInstanceUID",
        "series": "SeriesInstanceUID",
    }.get(kind)
    if unique:
        level = {"patient": "PATIENT", "study": "STUDY", "series": "SERIES"}[kind]
        assert not list(iter_find(archive, level, {unique: key}))


@pytest.mark.parametrize("kind", ["instance", "series", "study", "patient"])
def test_delete(tmp_path: Path, kind: str) -> None:
    datasets = generated_set()
    levels = brute_records(datasets)
    victim = datasets[4]  # study 2 (PID003), first series
    key = {
        "instance": victim.SOPInstanceUID,
        "series": victim.SeriesInstanceUID,
        "study": victim.StudyInstanceUID,
        "patient": victim.PatientID,
    }[kind]
    field = {
        "instance": "SOPInstanceUID",
        "series": "SeriesInstanceUID",
        "study": "StudyInstanceUID",
        "patient": "PatientID",
    }[kind]
    doomed = [ds.SOPInstanceUID for ds in datasets if str(getattr(ds, field)) == key]
    kept = [ds for ds in datasets if ds.SOPInstanceUID not in doomed]
    with engine.open_archive(tmp_path) as archive:
        for ds in datasets:
            archive.store(ds)
        before = archive.stats()
        arg = {
            "instance": "sop_instance_uid",
            "series": "series_instance_uid",
            "study": "study_instance_uid",
            "patient": "patient_id",
        }[kind]
        assert archive.delete(**{arg: key}) == len(doomed)
        after = archive.stats()
        assert after["instances"] == before["instances"] - len(doomed)
        rest = brute_records(kept)
        assert (after["patients"], after["studies"], after["series"]) == (
            len(rest["PATIENT"]),
            len(rest["STUDY"]),
            len(rest["SERIES"]),
        )
        _gone(archive, doomed, levels, kind, key)
        assert archive.delete(**{arg: key}) == 0
    for step in ("reopen", "reindex"):
        with engine.open_archive(tmp_path) as archive:
            if step == "reindex":
                archive.reindex()
            _gone(archive, doomed, levels, kind, key)
            assert archive.stats()["instances"] == len(kept)
            for ds in kept[:: max(1, len(kept) // 5)]:
                assert dataset_diff(ds, read(archive.get(ds.SOPInstanceUID))) is None
            for level, query in find_queries(rest):
                assert _found(archive, level, query) == _expected(rest, level, query), (
                    step,
                    level,
                    query,
                )
            assert archive.verify().ok


def test_delete_then_store_again(tmp_path: Path) -> None:
    data = small_ct_bytes(400)
    with engine.open_archive(tmp_path) as archive:
        uid = archive.store(data).sop_instance_uid
        assert archive.delete(sop_instance_uid=uid) == 1
        assert archive.store(data).duplicate is False
    with engine.open_archive(tmp_path) as archive:
        archive.reindex()
        assert archive.get(uid) == data  # the store after the tombstone wins


def test_delete_needs_an_identifier(tmp_path: Path) -> None:
    with engine.open_archive(tmp_path) as archive, pytest.raises(ValueError):
        archive.delete()


def test_closed_archive_refuses(tmp_path: Path) -> None:
    archive = engine.open_archive(tmp_path)
    archive.close()
    with pytest.raises(engine.EngineError):
        archive.store(small_ct_bytes(1))
    with pytest.raises(engine.EngineError):
        archive.get("1.2.3")


def test_config_from_toml(tmp_path: Path) -> None:
    toml = tmp_path / "pacs.toml"
    toml.write_text('[archive]\ndurability = "none"\nduplicate_policy = "reject"\n')
    with engine.open_archive(tmp_path / "a", toml) as archive:
        assert (archive.config.durability, archive.config.duplicate_policy) == ("none", "reject")
    with pytest.raises(ValueError, match="durability"):
        engine.open_archive(tmp_path / "b", durability="sometimes")
    assert set(os.listdir(tmp_path)) == {"a", "pacs.toml"}  # the refused config created nothing
