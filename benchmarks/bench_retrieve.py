"""The per-instance and per-match work of the retrieve and query SCPs, before and after.

``C-GET/C-MOVE sub-operation``: what the SCP does for one 512x512 CT slice
before the C-STORE-RQ goes out. Ours reads the record and keeps the stored
data set bytes (:func:`engine.net.retrieve.prepare` with the stored syntax
accepted); the baseline is the path it replaces: read the record,
``pydicom.dcmread`` the whole instance, ``pynetdicom``'s ``encode`` of the
Dataset, pixels included.

``C-FIND answer``: one STUDY-level match with the usual fourteen keys, from
the index to the encoded identifier. Ours (the fast path's):
:func:`engine.search.find_rows` and
:class:`engine.net.identifier.AnswerEncoder`'s bytes; "raw elements" (the
pynetdicom path's): :func:`engine.net.identifier.answer_dataset` and
pynetdicom's ``encode``; the baseline builds the Dataset
(:meth:`engine.archive.Archive.find`, :func:`engine.net.find.answer`) and
encodes it.

``C-GET/C-MOVE matches``: the instances a retrieve of one CT series names,
before its first C-STORE. Ours: :func:`engine.net.retrieve.resolve` over
plain dicts (:meth:`engine.archive.Archive.find_attrs`); the baseline made a
pydicom Dataset per match (:meth:`engine.archive.Archive.find`).

Each benchmark checks its output against the other path's before timing.
"""

from __future__ import annotations

import io
import itertools
import shutil
import warnings
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode

from engine import Archive, open_archive
from engine.config import Config
from engine.net.find import STUDY_ROOT_LEVELS, Identifier, answer, local_values
from engine.net.identifier import AnswerEncoder, Encoding, answer_dataset
from engine.net.retrieve import HIERARCHY, Match, prepare, resolve
from engine.net.substore import EncodedInstance
from engine.search import find_rows
from engine.synthetic import ct_series
from engine.synthetic import encode as encode_instance

SUB_OPERATION = "C-GET/C-MOVE sub-operation, 512x512 CT slice"
FIND_ANSWERS = "C-FIND, 200 STUDY answers"
RESOLVE = "C-GET/C-MOVE matches of a CT series"
STUDIES = 200
STUDY_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
              "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription",
              "ModalitiesInStudy", "ReferringPhysicianName", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances")  # fmt: skip


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, ct_slices: list[bytes]) -> Iterator[Archive]:
    path = tmp_path_factory.mktemp("bench_retrieve")
    a = open_archive(path / "archive", Config(durability="none"))
    for data in ct_slices:
        a.store(data)
    for seed in range(STUDIES):  # one small slice per study, for the query
        a.store(encode_instance(next(ct_series(1000 + seed, 1, rows=8, columns=8))))
    yield a
    a.close()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def slices(archive: Archive, ct_slices: list[bytes]) -> list[Match]:
    found = []
    for data in ct_slices:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        found.append(Match(ds.SOPInstanceUID, ds.SOPClassUID, ds.file_meta.TransferSyntaxUID))
    return found


def _dcmread_and_encode(archive: Archive, m: Match) -> bytes:
    """The replaced path: the whole instance decoded, then encoded again by pynetdicom."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(archive.get(m.sop_instance)))
    data = encode(ds, False, True)
    assert data is not None
    return data


def _stored_bytes(archive: Archive, m: Match) -> bytes:
    item = prepare(archive, m, {m.transfer_syntax: 1})
    assert isinstance(item, EncodedInstance)
    return item.encoded


@pytest.mark.parametrize("role", ["ours", "dcmread+encode"])
def test_sub_operation_payload(benchmark: Any, archive: Archive, slices: list[Match],
                               speedups: Any, role: str) -> None:  # fmt: skip
    assert _stored_bytes(archive, slices[0]) == _dcmread_and_encode(archive, slices[0])
    send = _stored_bytes if role == "ours" else _dcmread_and_encode
    turn = itertools.cycle(slices)
    data = benchmark(lambda: send(archive, next(turn)))
    assert len(data) > 512 * 512 * 2
    if not benchmark.disabled:  # --benchmark-disable: ran once as a test, nothing timed
        benchmark.extra_info["instances_per_s"] = 1 / benchmark.stats.stats.median
    speedups.record(SUB_OPERATION, role, benchmark)


def _identifier() -> Identifier:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in (*STUDY_KEYS, "RetrieveAETitle"):
        setattr(ds, keyword, None)
    return Identifier(ds, STUDY_ROOT_LEVELS)


def _answers_ours(archive: Archive, ident: Identifier) -> list[bytes | None]:
    columns, rows = find_rows(archive, ident.level, ident.query)
    local, how = local_values(ident, "PACS"), Encoding(True, True, as_bytes=True)
    encoder = AnswerEncoder(columns, ident.level, local, ident.unknown, how)
    return [encoder.encode(attrs) for attrs in rows]  # all ASCII here: none declined


def _answers_raw_elements(archive: Archive, ident: Identifier) -> list[bytes | None]:
    columns, rows = find_rows(archive, ident.level, ident.query)
    local, how = local_values(ident, "PACS"), Encoding(True, True)
    return [encode(answer_dataset(columns, attrs, ident.level, local, ident.unknown, how),
                   True, True) for attrs in rows]  # fmt: skip


def _answers_datasets(archive: Archive, ident: Identifier) -> list[bytes | None]:
    return [encode(answer(ds, ident, "PACS"), True, True)
            for ds in archive.find(ident.level, ident.query)]  # fmt: skip


FIND_ROLES = {"ours": _answers_ours, "raw elements": _answers_raw_elements,
              "Dataset per match": _answers_datasets}  # fmt: skip


@pytest.mark.parametrize("role", sorted(FIND_ROLES))
def test_find_answers(benchmark: Any, archive: Archive, speedups: Any, role: str) -> None:
    ident = _identifier()
    expected = _answers_datasets(archive, ident)
    assert len(expected) == STUDIES + 1
    assert _answers_ours(archive, ident) == _answers_raw_elements(archive, ident) == expected
    run = FIND_ROLES[role]
    answers = benchmark(lambda: run(archive, ident))
    assert answers == expected
    if not benchmark.disabled:
        benchmark.extra_info["ms_per_match"] = benchmark.stats.stats.median / len(answers) * 1e3
    speedups.record(FIND_ANSWERS, role, benchmark)


def _resolve_datasets(archive: Archive, ident: Identifier) -> list[Match]:
    """The replaced path: a pydicom Dataset per match."""
    query = {k: v for k, v in ident.query.items() if k in HIERARCHY and v}
    query.update(SOPInstanceUID="", SOPClassUID="", TransferSyntaxUID="")
    return [Match(str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.TransferSyntaxUID))
            for ds in archive.find("IMAGE", query)]  # fmt: skip


def _as_tuples(found: list[Match]) -> list[tuple[str, str, str]]:
    return [(m.sop_instance, m.sop_class, m.transfer_syntax) for m in found]


@pytest.mark.parametrize("role", ["ours", "Dataset per match"])
def test_retrieve_matches(benchmark: Any, archive: Archive, ct_slices: list[bytes],
                          speedups: Any, role: str) -> None:  # fmt: skip
    first = pydicom.dcmread(io.BytesIO(ct_slices[0]), stop_before_pixels=True)
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = first.StudyInstanceUID, first.SeriesInstanceUID
    ident = Identifier(ds, STUDY_ROOT_LEVELS)
    expected = _as_tuples(_resolve_datasets(archive, ident))
    assert len(expected) == len(ct_slices) and _as_tuples(resolve(archive, ident)) == expected
    run = resolve if role == "ours" else _resolve_datasets
    found = benchmark(lambda: run(archive, ident))
    assert _as_tuples(found) == expected
    speedups.record(RESOLVE, role, benchmark)
