"""compare.py, web_compare.py, forward_compare.py, backup_bench.py, replica_bench.py and scale.py
run end to end
at tiny sizes, with sane numbers.

``compare.py`` drives ``pacs bench``; it runs from this tree, or from the
checkout named by ``$PACS_BENCH_TREE`` while the bench tool lives elsewhere.
Its absence fails the test: the comparison is worth nothing without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import backup_bench
import compare
import forward_compare
import orjson
import peers
import pytest
import replica_bench
import report
import scale
import web_compare

ROOT = Path(__file__).resolve().parents[2]


def test_web_compare_gives_every_figure_for_us_and_orthanc(tmp_path: Path) -> None:
    out = tmp_path / "web.json"
    argv = ["--instances", "40", "--per-study", "10", "--slices", "6", "--rows", "32",
            "--repeat", "3", "--threads", "2", "--processes", "2", "--workers", "1",
            "--targets", "pacs,orthanc", "--work-dir", str(tmp_path / "work"),
            "--json", str(out)]  # fmt: skip

    assert web_compare.main(argv) == 0

    data = orjson.loads(out.read_bytes())
    assert data["ok"] and data["command"].startswith("python benchmarks/web_compare.py")
    assert data["machine"]["cores"] >= 1 and "Orthanc" in data["machine"]["versions"]["orthanc"]
    results = {r["target"]: r for r in data["results"]}
    assert set(results) == {"pacs", "orthanc"}
    ours, theirs = results["pacs"], results["orthanc"]
    assert set(ours["metrics"]) == set(theirs["metrics"])
    assert {k for k in ours["metrics"] if k.startswith("QIDO")} >= {
        "QIDO PatientID: p50 ms", "QIDO PatientID: p99 ms", "QIDO all, limit 100: p99 ms"}
    for r in (ours, theirs):
        assert r["errors"] == []
        assert all(v > 0 for k, v in r["metrics"].items() if not k.startswith("server CPU"))
        assert r["metrics"]["QIDO PatientID: p99 ms"] >= r["metrics"]["QIDO PatientID: p50 ms"]
        assert r["matches"]["all, limit 100"] == 5  # 4 small studies and the CT study
        assert r["matches"]["PatientID"] >= 1 and r["matches"]["AccessionNumber"] == 1
    for query in ours["matches"]:  # the same instances: the same studies found
        assert ours["matches"][query] == theirs["matches"][query], query
    assert not list((tmp_path / "work").iterdir())  # corpus and archives removed


def test_forward_compare_delivers_every_instance_through_us_and_orthanc(tmp_path: Path) -> None:
    out = tmp_path / "fwd.json"
    argv = ["--series", "2", "--slices", "5", "--rows", "32", "--workers", "1",
            "--work-dir", str(tmp_path / "work"), "--json", str(out)]  # fmt: skip

    assert forward_compare.main(argv) == 0

    data = orjson.loads(out.read_bytes())
    assert data["ok"] and data["instances"] == 10
    assert "Orthanc" in data["machine"]["versions"]["orthanc"]
    results = {r["target"]: r for r in data["results"]}
    assert list(results) == ["direct", "pacs", "orthanc"]
    assert all(r["errors"] == [] for r in results.values())
    drain = "queue drained/s (destination back)"  # ours alone: Orthanc's Lua has no queue
    for name in ("pacs", "orthanc"):  # every figure, and the end to end rate cannot beat the acks
        m = results[name]["metrics"]
        assert set(m) == set(forward_compare.METRICS) - ({drain} if name == "orthanc" else set())
        assert m["archive CPU ms/instance"] > 0
        assert 0 < m["forwarded/s (end to end)"] <= m["acknowledged/s"]
    assert results["pacs"]["metrics"][drain] > 0
    assert set(results["direct"]["metrics"]) == {"acknowledged/s", "forwarded/s (end to end)"}
    assert not list((tmp_path / "work").iterdir())  # corpus, archives and destinations removed


def test_backup_bench_gives_every_step_against_the_disk(tmp_path: Path) -> None:
    out = tmp_path / "backup.json"
    argv = ["--slices", "20", "--rows", "64", "--more", "50", "--work-dir", str(tmp_path / "w"),
            "--json", str(out)]  # fmt: skip
    assert backup_bench.main(argv) == 0
    data = orjson.loads(out.read_bytes())
    steps = data["rows"]
    assert list(steps) == ["disk (write + fsync)", "backup (full)", "backup (incremental)",
                           "restore"]  # fmt: skip
    assert data["instances"] == 30 and all(f["MB/s"] > 0 for f in steps.values())
    assert 0 < steps["backup (incremental)"]["MB"] < steps["backup (full)"]["MB"]
    assert not list((tmp_path / "w").iterdir())


def test_replica_bench_measures_lag_cost_and_promotion(tmp_path: Path) -> None:
    out = tmp_path / "replica.json"
    argv = ["--series", "2", "--slices", "10", "--rows", "32", "--workers", "1", "--rounds", "1",
            "--promote-instances", "40", "--per-study", "4", "--work-dir", str(tmp_path / "w"),
            "--replica-cores", "1", "--json", str(out)]  # fmt: skip
    ours = os.sched_getaffinity(0)
    assert replica_bench.main(argv) == 0
    assert os.sched_getaffinity(0) == ours  # given back
    data = orjson.loads(out.read_bytes())
    assert data["ok"]
    assert [r["kind"] for r in data["runs"]] == [replica_bench.ALONE, replica_bench.FOLLOWED]
    alone, followed = data["runs"]
    assert alone["rate"] > 0 and alone["replica_cpu_ms"] is None
    # 20 tiny slices may cost the replica less than a clock tick (10 ms) on a core of its own
    assert followed["replica_cpu_ms"] >= 0 and followed["lag_p99_s"] >= 0
    promotion = data["promotion"]
    assert promotion["errors"] == [] and promotion["promote"]["instances"] == 40
    assert 0 < promotion["promote_command_s"] <= promotion["first_store_s"]
    assert not list((tmp_path / "w").iterdir())


def test_forward_compare_refuses_a_target_that_cannot_forward(tmp_path: Path) -> None:
    assert forward_compare.main(["--targets", "dcmqrscp", "--work-dir", str(tmp_path)]) == 2


def test_compare_runs_every_target_through_pacs_bench(tmp_path: Path) -> None:
    tree = Path(os.environ.get("PACS_BENCH_TREE") or ROOT)
    assert (tree / "engine" / "bench" / "cli.py").is_file(), (
        f"`pacs bench` (engine/bench) is missing from {tree}: set PACS_BENCH_TREE to its checkout"
    )
    out = tmp_path / "compare.json"
    argv = ["--studies", "1", "--small", "--slices", "12", "--associations", "1",
            "--repeat", "2", "--workers", "1", "--bench-tree", str(tree),
            "--work-dir", str(tmp_path / "work"), "--json", str(out)]  # fmt: skip

    code = compare.main(argv)

    data = orjson.loads(out.read_bytes())
    results = {r["target"]: r for r in data["results"]}
    assert list(results) == list(peers.TARGETS)
    assert data["instances"] == 12
    assert code == 0, {t: r["errors"] for t, r in results.items() if r["errors"]}
    for name, r in results.items():
        m = r["metrics"]
        assert m["ingest.instances_per_s"] > 0 and m["ingest.failures"] == 0, name
        assert m["ingest.server_cpu_ms_per_instance"] >= 0, name
        if "query" in peers.SERVICES[name]:
            assert m["query.find.study_by_patient_id.p50_ms"] > 0, name
            assert m["query.find.instances_of_series.matches"] == 12, name
        if "retrieve" in peers.SERVICES[name]:
            for op in compare.RETRIEVES:  # each alone, with the server's CPU (0: under a tick)
                assert m[f"retrieve.{op}.instances"] == 12, (name, op)
                assert m[f"retrieve.{op}.server_cpu_ms_per_instance"] >= 0, (name, op)
        if "http" in peers.SERVICES[name]:
            assert m["retrieve.wado.instances"] == 12 and m["query.qido.all_studies.p50_ms"] > 0
        else:
            assert not any(".qido." in k or ".wado." in k for k in m), name
    header, cells = compare.rows([compare.Result(t, r["metrics"], r["higher_is_better"])
                                  for t, r in results.items()])  # fmt: skip
    assert header == ["metric", *peers.TARGETS]
    rate = next(c for c in cells if c[0] == "ingest.instances_per_s")
    assert all("x)" in cell for cell in rate[2:])  # every other target has its ratio to us


def test_compare_ingest_alone_at_two_association_counts_with_the_storage_at_rest(
    tmp_path: Path,
) -> None:
    """Issue 17's run: storescu at 1 and 2 associations, 2 rounds each on a fresh server,
    the median kept, then what the corpus takes on disk once the target is at rest."""
    out = tmp_path / "ingest.json"
    argv = ["--targets", "pacs,storescp", "--studies", "1", "--small", "--slices", "8",
            "--phases", "ingest,storage", "--associations", "1,2", "--rounds", "2",
            "--sender", "storescu", "--workers", "1", "--work-dir", str(tmp_path / "work"),
            "--json", str(out)]  # fmt: skip

    code = compare.main(argv)

    data = orjson.loads(out.read_bytes())
    results = {r["target"]: r for r in data["results"]}
    assert code == 0, {t: r["errors"] for t, r in results.items() if r["errors"]}
    assert data["settings"]["rounds"] == 2 and data["settings"]["associations"] == [1, 2]
    for name, r in results.items():
        m = r["metrics"]
        for n in (1, 2):
            assert m[f"ingest.x{n}.instances"] == 8 and m[f"ingest.x{n}.failures"] == 0, name
            assert m[f"ingest.x{n}.server_cpu_ms_per_instance"] >= 0, name
        assert "ingest.instances_per_s" not in m  # named per association count
        assert not any(k.startswith(("query.", "retrieve.")) for k in m), name
        assert 0 < m["storage.at_rest_mb"] <= m["storage.after_ingest_mb"], name
        assert m["storage.ratio"] == pytest.approx(m["storage.corpus_mb"] / m["storage.at_rest_mb"])
    summary = compare.headline([compare.Result(t, r["metrics"]) for t, r in results.items()])
    assert summary[:3] == ["ingest.x1.instances_per_s", "ingest.x1.server_cpu_ms_per_instance",
                           "ingest.x1.latency_p50_ms"]  # fmt: skip
    assert "ingest.x2.instances_per_s" in summary and "storage.ratio" in summary


def test_compare_keeps_the_round_of_median_rate() -> None:
    rounds = [{"instances_per_s": (v, True), "seconds": (1 / v, False)} for v in (300, 100, 200)]
    assert compare._median_round(rounds)["instances_per_s"][0] == 200
    assert compare._median_round(rounds[:2])["instances_per_s"][0] == 100  # the lower middle


@pytest.mark.parametrize("argv", [["--associations", "0"], ["--associations", "1,x"],
                                  ["--phases", "query"], ["--phases", "ingest,nothing"]])
def test_compare_refuses_bad_counts_and_phases(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        compare.build_parser().parse_args(argv)


def test_scale_reaches_the_target_count_and_resumes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    argv = ["--target-count", "40", "--checkpoints", "20", "--chunk", "20", "--per-study", "10",
            "--processes", "2", "--repeat", "2", "--workers", "1", "--state-dir", str(state),
            "--json", str(tmp_path / "scale.json")]  # fmt: skip

    assert scale.main(argv) == 0

    data = orjson.loads((tmp_path / "scale.json").read_bytes())
    assert data["checkpoints"] == [20, 40]
    ours, theirs = data["progress"]["pacs"], data["progress"]["orthanc"]
    assert ours["stored"] == 40 and set(ours["checkpoints"]) == {"20", "40"}
    assert 20 <= theirs["stored"] <= 40  # as far as it got in our time, one chunk at least
    for point in ours["checkpoints"].values():
        assert point["ingest_instances_per_s"] > 0 and point["server_disk_bytes"] > 0
        assert point["qido"]["QIDO PatientID: p50 ms"] > 0
        assert point["matches"]["PatientID"] >= 1 and point["matches"]["AccessionNumber"] == 1

    # the same state folder, a higher target: pacs goes on from 40 on the archive it kept
    assert scale.main([*argv[:1], "60", *argv[2:]]) == 0

    data = orjson.loads((tmp_path / "scale.json").read_bytes())
    ours = data["progress"]["pacs"]
    assert ours["stored"] == 60 and set(ours["checkpoints"]) == {"20", "40", "60"}
    assert ours["checkpoints"]["60"]["matches"]["all, limit 100"] == 6  # 60 instances, 10 a study


def test_a_section_of_benchmarks_md_is_replaced_and_the_others_kept(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    report.update_section("compare", "first", path)
    report.update_section("scale", "kept", path)
    report.update_section("compare", "second", path)

    text = path.read_text()
    assert text.startswith("# Side-by-side benchmarks")
    assert "second" in text and "first" not in text and "kept" in text
    assert text.index("compare:start") < text.index("scale:start")


@pytest.mark.parametrize(("ours", "theirs", "higher", "expected"), [
    (200.0, 100.0, True, 2.0),    # twice their rate
    (5.0, 20.0, False, 4.0),      # a quarter of their latency
    (10.0, 5.0, False, 0.5),      # twice their latency: we lose
    (0.0, 5.0, True, None),       # nothing to compare
])  # fmt: skip
def test_ratio_above_one_means_we_win(ours: float, theirs: float, higher: bool,
                                      expected: float | None) -> None:  # fmt: skip
    assert report.ratio_to_us(ours, theirs, higher_is_better=higher) == expected


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert report.percentile(values, 50) == 50.0
    assert report.percentile(values, 99) == 99.0
    assert report.percentile([7.0], 99) == 7.0 and report.percentile([], 50) == 0.0
