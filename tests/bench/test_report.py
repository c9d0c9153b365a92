"""Result files, the comparison of two runs, percentiles, targets."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from engine.bench.report import RESULT_SCHEMA, compare, load, metric, percentile, result, write_json
from engine.bench.target import Target
from engine.cli import main


def _result(rate: float, p99: float) -> dict:
    metrics = {
        "instances_per_s": metric(rate, "instances/s"),
        "latency_p99_ms": metric(p99, "ms", "lower"),
    }
    return result(
        "ingest", Target.parse("PACS@127.0.0.1:11112").as_json(), metrics, {}, ["bench", "x"]
    )


def test_result_carries_the_documented_fields(tmp_path: Path) -> None:
    data = _result(100, 5)
    path = tmp_path / "r.json"
    write_json(data, str(path))
    back = load(str(path))
    assert back == data
    assert back["schema"] == RESULT_SCHEMA and back["command"] == "pacs bench x"
    assert {"hostname", "cpus", "cpu_model", "platform"} <= set(back["machine"])
    assert back["target"] == {
        "ae_title": "PACS",
        "host": "127.0.0.1",
        "port": 11112,
        "http": None,
        "calling_ae_title": "PACSBENCH",
    }


def test_a_file_of_another_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_bytes(orjson.dumps({"schema": "something-else"}))
    with pytest.raises(ValueError, match="not a pacs-bench-result/1"):
        load(str(path))


def test_compare_shows_ratios_and_which_side_wins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_json(_result(100, 10), str(a))
    write_json(_result(250, 20), str(b))
    table = compare(load(str(a)), load(str(b)))
    assert table.row_count == 2
    assert main(["bench", "compare", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "2.50x" in text and "2.00x" in text
    assert "B better" in text and "B worse" in text  # more instances/s wins, more latency loses


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) == 0.0


@pytest.mark.parametrize(
    "text",
    ["PACS", "127.0.0.1:11112", "PACS@127.0.0.1", "PACS@:11112", "THIS_AE_TITLE_IS_TOO_LONG@h:1"],
)
def test_bad_targets_say_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError):
        Target.parse(text)


def test_target_with_http_root() -> None:
    t = Target.parse("ORTHANC@localhost:4242", "http://localhost:8042/dicom-web/")
    assert (t.ae_title, t.host, t.port, t.http) == (
        "ORTHANC",
        "localhost",
        4242,
        "http://localhost:8042/dicom-web",
    )


def test_unreachable_target_and_missing_corpus_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.net._support import free_port

    target = f"PACS@127.0.0.1:{free_port()}"
    assert main(["bench", "query", "--target", target, "--repeat", "1"]) == 1
    assert "refused" in capsys.readouterr().err.lower()
    assert main(["bench", "retrieve", "--target", target, "--corpus", str(tmp_path)]) == 1
    assert "pacs bench corpus" in capsys.readouterr().err
