"""STUDY-level find latency in an archive of 100,000 instances, against SQLite.

The corpus: STUDIES studies of SERIES_PER_STUDY series of INSTANCES_PER_SERIES
instances (100,000 instances), PATIENTS patients, study dates spread over
fifteen years, CT, MR and PT series. The headers are those of
``engine.synthetic.ct_series`` with 8x8 pixels: one template is encoded with
pydicom per modality, and each instance is that template with its UIDs,
patient, date, accession and instance number put in place (fixed-length
values are replaced in the bytes, the others as whole elements). Building
100,000 instances that way takes seconds, not minutes.

Ours is built once per session with ``durability="none"``, stored in
pipelined batches (``submit``, then ``wait``). The naive archive's SQLite gets
the same rows (one per instance, indexed on every queried column, see
naive_archive.py) in one bulk insert. Before anything is timed, every query's
answer is computed three ways (ours, SQLite, and straight from the corpus
plan) and must agree; each benchmark then asserts its own answer.
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from naive_archive import COLUMNS, STUDY_KEYS, NaiveArchive
from pydicom.uid import MRImageStorage, PositronEmissionTomographyImageStorage

from engine import Archive, open_archive
from engine.synthetic import StudyPlan, ct_series, encode

STUDIES = 5_000
SERIES_PER_STUDY = 2
INSTANCES_PER_SERIES = 10
PATIENTS = 2_000
SUBMIT_BATCH = 2_000  # instances per group commit while building
SEED = 11

_SURNAMES = ("Smith", "Smirnov", "Jones", "Brown", "Okafor", "Moreau", "Schmidt", "Novak", "Haddad",
             "Larsen", "Ferreira", "Ivanova", "Yamamoto", "Kowalski", "Petrov", "Nguyen", "Costa",
             "Lindqvist", "Horvat", "Baker")  # fmt: skip
_GIVEN = ("Ada", "Bruno", "Clara", "Dmitri", "Eva", "Felix", "Greta", "Hamid", "Iris", "Jan")
_MODALITY_PAIRS = ((("CT", "CT"), 55), (("MR", "MR"), 25), (("CT", "PT"), 15), (("MR", "CT"), 5))
_SOP_CLASS = {"MR": MRImageStorage, "PT": PositronEmissionTomographyImageStorage}

# Placeholders: each has the length of every value put in its place.
_STUDY_PH, _SERIES_PH, _SOP_PH = "2.25.1199999999", "2.25.129999999999", "2.25.1399999999999999"
_PID_PH, _ACC_PH, _DATE_PH = "PID999999", "ACC9999999", "19000101"
_NAME_PH, _NUMBER_PH = "Placeholder^Name", "9999"


def _study_uid(s: int) -> str:
    return f"2.25.11{s:08d}"


def _series_uid(s: int, k: int) -> str:
    return f"2.25.12{s:08d}{k:02d}"


def _sop_uid(s: int, k: int, i: int) -> str:
    return f"2.25.13{s:08d}{k:02d}{i:04d}"


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    """An Explicit VR Little Endian element with a 16-bit length, as pydicom writes it."""
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _text(value: str) -> bytes:
    raw = value.encode()
    return raw + b" " if len(raw) % 2 else raw  # PS3.5 6.2: pad to even length with a space


@dataclass(frozen=True, slots=True)
class Study:
    index: int
    uid: str
    patient_id: str
    patient_name: str
    date: str
    accession: str
    modalities: tuple[str, ...]  # one per series


def _plan() -> list[Study]:
    rng = random.Random(SEED)
    first = dt.date(2010, 1, 1).toordinal()
    days = dt.date(2024, 12, 31).toordinal() - first
    pairs, weights = zip(*_MODALITY_PAIRS, strict=True)
    out = []
    for s in range(STUDIES):
        p = rng.randrange(PATIENTS)
        name = f"{_SURNAMES[p % len(_SURNAMES)]}^{_GIVEN[p // len(_SURNAMES) % len(_GIVEN)]}"
        date = dt.date.fromordinal(first + rng.randrange(days + 1)).strftime("%Y%m%d")
        modalities = rng.choices(pairs, weights)[0]
        out.append(Study(s, _study_uid(s), f"PID{p:06d}", name, date, f"ACC{s:07d}", modalities))
    return out


def _templates() -> dict[str, bytes]:
    """One encoded 8x8 instance per modality, holding the placeholders."""
    plan = StudyPlan(_PID_PH, _NAME_PH, _STUDY_PH, _DATE_PH, _ACC_PH)
    out = {}
    for modality in ("CT", "MR", "PT"):
        ds = next(ct_series(SEED, 1, rows=8, columns=8, study=plan))
        ds.Modality = modality
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = _SOP_CLASS.get(
            modality, ds.SOPClassUID
        )
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _SOP_PH
        ds.SeriesInstanceUID = ds.FrameOfReferenceUID = _SERIES_PH
        ds.InstanceNumber = _NUMBER_PH
        data = encode(ds)
        for placeholder, count in ((_STUDY_PH, 2), (_SERIES_PH, 2), (_SOP_PH, 2), (_PID_PH, 1),
                                   (_ACC_PH, 1), (_DATE_PH, 3)):  # fmt: skip
            assert data.count(placeholder.encode()) == count, placeholder
        assert data.count(_element(0x0010, 0x0010, b"PN", _text(_NAME_PH))) == 1
        assert data.count(_element(0x0020, 0x0013, b"IS", _text(_NUMBER_PH))) == 1
        out[modality] = data
    return out


def _instances(plan: list[Study]) -> Iterator[tuple[bytes, tuple[str, ...]]]:
    """(Part 10 bytes, naive SQLite row) of every instance of the corpus."""
    templates = _templates()
    name_ph = _element(0x0010, 0x0010, b"PN", _text(_NAME_PH))
    number_ph = _element(0x0020, 0x0013, b"IS", _text(_NUMBER_PH))
    for st in plan:
        study = (
            (_STUDY_PH.encode(), st.uid.encode()), (_PID_PH.encode(), st.patient_id.encode()),
            (_ACC_PH.encode(), st.accession.encode()), (_DATE_PH.encode(), st.date.encode()),
            (name_ph, _element(0x0010, 0x0010, b"PN", _text(st.patient_name))),
        )  # fmt: skip
        for k, modality in enumerate(st.modalities):
            base = templates[modality]
            for old, new in study:
                base = base.replace(old, new)
            series = _series_uid(st.index, k)
            base = base.replace(_SERIES_PH.encode(), series.encode())
            for i in range(INSTANCES_PER_SERIES):
                sop = _sop_uid(st.index, k, i)
                data = base.replace(_SOP_PH.encode(), sop.encode()).replace(
                    number_ph, _element(0x0020, 0x0013, b"IS", _text(f"{i + 1:4d}"))
                )
                row = (sop, series, st.uid, st.patient_id, st.patient_name, st.date, st.accession,
                       modality, f"files/{st.uid}/{series}/{sop}.dcm")  # fmt: skip
                yield data, row


@dataclass
class Corpus:
    plan: list[Study]
    ours: Archive
    naive: NaiveArchive
    instances: int


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    plan = _plan()
    folder = tmp_path_factory.mktemp("find")
    ours = open_archive(folder / "ours", durability="none")
    naive = NaiveArchive(folder / "naive", fsync=False)
    rows = []
    pending = []
    for data, row in _instances(plan):
        pending.append(ours.submit(data))
        rows.append(row)
        if len(pending) == SUBMIT_BATCH:
            for p in pending:
                ours.wait(p)
            pending.clear()
    for p in pending:
        ours.wait(p)
    assert len(rows[0]) == len(COLUMNS)
    naive.index_rows(rows)
    n = STUDIES * SERIES_PER_STUDY * INSTANCES_PER_SERIES
    assert ours.stats()["instances"] == naive.count() == n
    yield Corpus(plan, ours, naive, n)
    ours.close()
    naive.close()
    shutil.rmtree(folder)


def _query(**matching: str) -> dict[str, str]:
    """Match on `matching`, return every study key the naive archive knows."""
    return {**{k: "" for k in STUDY_KEYS}, **matching}


@dataclass(frozen=True)
class Case:
    name: str
    query: dict[str, str]
    limit: int | None = None


def _cases(plan: list[Study]) -> list[Case]:
    some = plan[len(plan) // 3]
    return [
        Case("PatientID", _query(PatientID=some.patient_id)),
        Case("PatientName SMI*", _query(PatientName="SMI*")),
        Case("StudyDate one month", _query(StudyDate="20180301-20180331")),
        Case("AccessionNumber", _query(AccessionNumber=plan[len(plan) // 2].accession)),
        Case("ModalitiesInStudy PT", _query(ModalitiesInStudy="PT")),
        Case("universal limit 100", _query(), limit=100),
    ]


CASE_NAMES = [c.name for c in _cases(_plan())]
IMPLS = {"ours": "ours", "sqlite": "naive SQLite"}


def _truth(plan: list[Study], case: Case) -> set[str]:
    """The study UIDs a case must find, straight from the plan."""
    q = case.query
    out = set()
    for st in plan:
        if q["PatientID"] and st.patient_id != q["PatientID"]:
            continue
        if q["PatientName"] and not st.patient_name.upper().startswith(
            q["PatientName"].rstrip("*")
        ):
            continue
        if q["StudyDate"]:
            lo, hi = q["StudyDate"].split("-")
            if not lo <= st.date <= hi:
                continue
        if q["AccessionNumber"] and st.accession != q["AccessionNumber"]:
            continue
        if q["ModalitiesInStudy"] and q["ModalitiesInStudy"] not in st.modalities:
            continue
        out.add(st.uid)
    if case.limit is not None:
        out = set(sorted(out)[: case.limit])
    return out


def _find_ours(archive: Archive, case: Case) -> list[Any]:
    return list(archive.find("STUDY", case.query, limit=case.limit))


def _find_naive(naive: NaiveArchive, case: Case) -> list[Any]:
    return naive.find_studies(case.query, limit=case.limit)


def _as_table(datasets: list[Any]) -> dict[str, dict[str, str]]:
    return {
        str(ds.StudyInstanceUID): {k: str(ds.get(k, "")) for k in STUDY_KEYS} for ds in datasets
    }


@pytest.fixture(scope="session")
def expected(corpus: Corpus) -> dict[str, set[str]]:
    """Every case's answer, checked three ways before anything is timed."""
    out = {}
    for case in _cases(corpus.plan):
        truth = _truth(corpus.plan, case)
        assert truth, f"{case.name}: the corpus should have matches"
        ours, naive = (
            _as_table(_find_ours(corpus.ours, case)),
            _as_table(_find_naive(corpus.naive, case)),
        )
        assert set(ours) == truth, case.name
        assert ours == naive, case.name  # same studies, same returned values
        out[case.name] = truth
    return out


def _check(result: list[Any], want: set[str]) -> None:
    assert len(result) == len(want)
    assert {str(ds.StudyInstanceUID) for ds in result} == want


# ours and SQLite alternate, query by query, so that each pair sees the same machine load
@pytest.mark.parametrize(("name", "impl"), [(n, impl) for n in CASE_NAMES for impl in IMPLS])
def test_find(
    benchmark: Any,
    corpus: Corpus,
    expected: dict[str, set[str]],
    speedups: Any,
    name: str,
    impl: str,
) -> None:
    case = next(c for c in _cases(corpus.plan) if c.name == name)
    benchmark.group = f"find STUDY: {name}"
    if impl == "ours":
        result = benchmark(_find_ours, corpus.ours, case)
    else:
        result = benchmark(_find_naive, corpus.naive, case)
    _check(result, expected[name])
    benchmark.extra_info.update(instances=corpus.instances, studies=STUDIES, matches=len(result))
    speedups.record(f"find STUDY {name} ({len(result)} matches)", IMPLS[impl], benchmark)
