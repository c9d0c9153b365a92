"""`pacs bench query` against our server (C-FIND and QIDO-RS) and DCMTK's dcmqrscp."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.bench.query import QUERY_TYPES, StudyValues, mix
from tests.bench.conftest import Corpus, Peer, run_bench

REPEAT = "3"


def _values(result: dict) -> dict[str, float]:
    return {k: v["value"] for k, v in result["metrics"].items()}


def _check_sane(m: dict[str, float], prefix: str, kinds: tuple[str, ...], corpus: Corpus) -> None:
    manifest = corpus.manifest
    for kind in kinds:
        assert m[f"{prefix}.{kind}.failures"] == 0, kind
        assert 0 < m[f"{prefix}.{kind}.p50_ms"] <= m[f"{prefix}.{kind}.p99_ms"], kind
        assert 0 < m[f"{prefix}.{kind}.client_cpu_share"] < 1, kind
        assert m[f"{prefix}.{kind}.matches"] >= 1, kind
    assert m[f"{prefix}.all_studies.matches"] == manifest["studies"]
    # REPEAT=3 over three studies: each study's first series is asked for once
    first_series = [st["series"][0]["instances"] for st in manifest["study_list"]]
    assert m[f"{prefix}.instances_of_series.matches"] == pytest.approx(
        sum(first_series) / len(first_series), abs=1e-5
    )
    series = [len(st["series"]) for st in manifest["study_list"]]
    assert m[f"{prefix}.series_of_study.matches"] == pytest.approx(
        sum(series) / len(series), abs=1e-5
    )


def test_query_pacs_over_dimse_and_qido(loaded_pacs: Peer, corpus: Corpus, tmp_path: Path) -> None:
    assert loaded_pacs.http is not None
    code, result = run_bench(
        tmp_path,
        "query",
        "--target",
        loaded_pacs.target,
        "--http",
        loaded_pacs.http,
        "--repeat",
        REPEAT,
        "--corpus",
        str(corpus.root),
    )
    assert code == 0, result["details"]["failures"]
    m = _values(result)
    _check_sane(m, "find", QUERY_TYPES, corpus)
    _check_sane(m, "qido", QUERY_TYPES[1:], corpus)
    assert m["find.patient_by_id.matches"] == 1
    assert m["find.study_by_modality.matches"] >= 1


def test_query_values_discovered_without_a_manifest(
    loaded_pacs: Peer, corpus: Corpus, tmp_path: Path
) -> None:
    code, result = run_bench(tmp_path, "query", "--target", loaded_pacs.target, "--repeat", REPEAT)
    assert code == 0, result["details"]["failures"]
    assert result["details"]["values_from"] == "broad query"
    assert _values(result)["find.all_studies.matches"] == corpus.manifest["studies"]


def test_query_dcmqrscp(loaded_dcmqrscp: Peer, corpus: Corpus, tmp_path: Path) -> None:
    code, result = run_bench(
        tmp_path,
        "query",
        "--target",
        loaded_dcmqrscp.target,
        "--repeat",
        REPEAT,
        "--corpus",
        str(corpus.root),
    )
    assert code == 0, result["details"]["failures"]
    _check_sane(_values(result), "find", QUERY_TYPES, corpus)


def test_qido_wildcard_goes_out_as_a_literal_star() -> None:
    # RFC 3986 2.2: "*" is reserved, and Orthanc's DICOMweb plugin matches "%2A" literally
    values = StudyValues("1.2.3", "PID1", "Tanaka^Chloe", "20140301", "CT", "1.2.3.4")
    (wildcard,) = [q for q in mix(values) if q.kind == "study_by_name_wildcard"]
    assert wildcard.qido_query_string() == "?PatientName=Tan*"
    (series,) = [q for q in mix(values) if q.kind == "instances_of_series"]
    assert series.qido_path() == "/studies/1.2.3/series/1.2.3.4/instances"
    assert series.qido_query_string() == ""


def test_query_values_from_a_span_come_from_whole_studies(
    loaded_pacs: Peer, corpus: Corpus, tmp_path: Path
) -> None:
    first = corpus.manifest["study_list"][0]
    size = sum(se["instances"] for se in first["series"])
    code, result = run_bench(
        tmp_path, "query", "--target", loaded_pacs.target, "--repeat", "2",
        "--corpus", str(corpus.root), "--files", f"0:{size}",
    )  # fmt: skip
    assert code == 0, result["details"]["failures"]
    assert result["details"]["studies_used"] == 1
    m = _values(result)
    assert m["find.instances_of_series.matches"] == first["series"][0]["instances"]
