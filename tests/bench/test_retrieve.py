"""`pacs bench retrieve`: C-GET, C-MOVE (to the tool's own receiver) and WADO-RS of whole series,
with its own clients and with DCMTK's getscu and movescu (--dcmtk)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.conftest import MOVE_DEST, Corpus, Peer, run_bench


def _check_sane(result: dict, prefix: str, corpus: Corpus) -> None:
    m = {k: v["value"] for k, v in result["metrics"].items()}
    assert m[f"{prefix}.instances"] == corpus.manifest["instances"]
    assert m[f"{prefix}.failures"] == 0
    assert m[f"{prefix}.instances_per_s"] > 0 and m[f"{prefix}.mb_per_s"] > 0
    assert 0 < m[f"{prefix}.first_instance_p50_ms"] <= m[f"{prefix}.series_p50_ms"]


def test_retrieve_from_pacs(loaded_pacs: Peer, corpus: Corpus, tmp_path: Path) -> None:
    assert loaded_pacs.http is not None
    code, result = run_bench(
        tmp_path,
        "retrieve",
        "--target",
        loaded_pacs.target,
        "--http",
        loaded_pacs.http,
        "--corpus",
        str(corpus.root),
        "--move-dest",
        MOVE_DEST,
        "--move-port",
        str(loaded_pacs.move_port),
        "--dcmtk",
    )
    assert code == 0, result["details"]["failures"]
    for prefix in ("get", "move", "wado", "getscu", "movescu"):
        _check_sane(result, prefix, corpus)
    # C-GET counts data sets (the files less their meta headers), WADO-RS whole bodies (the
    # files plus part headers), C-MOVE the manifest's sizes
    corpus_mb = corpus.manifest["bytes"] / 1e6
    mb = {p: result["metrics"][f"{p}.megabytes"]["value"] for p in ("get", "move", "wado")}
    assert 0.95 * corpus_mb < mb["get"] < corpus_mb
    assert corpus_mb < mb["wado"] < 1.05 * corpus_mb
    assert mb["move"] == pytest.approx(corpus_mb, rel=1e-6)
    assert result["details"]["series"] == corpus.manifest["series"]


def test_retrieve_from_dcmqrscp(loaded_dcmqrscp: Peer, corpus: Corpus, tmp_path: Path) -> None:
    code, result = run_bench(
        tmp_path,
        "retrieve",
        "--target",
        loaded_dcmqrscp.target,
        "--corpus",
        str(corpus.root),
        "--move-dest",
        MOVE_DEST,
        "--move-port",
        str(loaded_dcmqrscp.move_port),
        "--dcmtk",
    )
    assert code == 0, result["details"]["failures"]
    for prefix in ("get", "move", "getscu", "movescu"):
        _check_sane(result, prefix, corpus)


def test_retrieve_series_discovered_without_a_manifest(
    loaded_pacs: Peer, corpus: Corpus, tmp_path: Path
) -> None:
    code, result = run_bench(tmp_path, "retrieve", "--target", loaded_pacs.target, "--series", "2")
    assert code == 0, result["details"]["failures"]
    assert result["details"]["series"] == 2
    assert result["metrics"]["get.instances"]["value"] > 0


def test_a_getscu_run_that_fails_is_a_failure_not_a_figure(
    loaded_pacs: Peer, corpus: Corpus, tmp_path: Path
) -> None:
    """getscu against an AE title the server refuses: it exits non-zero, and the tool says so."""
    target = "NOTPACS@" + loaded_pacs.target.split("@", 1)[1]
    code, result = run_bench(tmp_path, "retrieve", "--target", target, "--corpus",
                             str(corpus.root), "--only", "getscu")  # fmt: skip
    assert code != 0
    failures = result["details"]["failures"]
    assert failures and all(f.startswith("getscu ") and "exited with" in f for f in failures)
    assert result["metrics"]["getscu.instances"]["value"] == 0
