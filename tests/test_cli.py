"""The `pacs` command, run as a real process: output, files written, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from engine.synthetic import ct_series, encode
from tests.corpus import real_files

# The console script lives next to the interpreter that runs the tests: a venv's
# bin/ need not be on PATH (scripts/test.sh runs `.venv/bin/python -m pytest`),
# and a `pacs` found on PATH could be another install's (issue 15).
PACS = Path(sys.executable).with_name("pacs")


def pacs(archive: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert PACS.is_file(), f"no `pacs` console script at {PACS}: run `pip install -e .[test]`"
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(
        [str(PACS), "-A", str(archive), *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two generated CT series, a real file, and two files that must be rejected."""
    root = tmp_path_factory.mktemp("incoming")
    for seed in (1, 2):
        for i, ds in enumerate(ct_series(seed, 4, rows=32, columns=32)):
            (root / f"s{seed}" / f"{i}.dcm").parent.mkdir(exist_ok=True)
            (root / f"s{seed}" / f"{i}.dcm").write_bytes(encode(ds))
    ct = next(p for p in real_files() if p.name == "CT_small.dcm")
    shutil.copy(ct, root / "CT_small.dcm")
    (root / "notes.txt").write_text("not DICOM at all")
    (root / "truncated.dcm").write_bytes(encode(next(ct_series(3, 1, rows=32, columns=32)))[:700])
    return root


def test_ingest_reports_stored_and_rejected_with_reasons(tmp_path: Path, folder: Path) -> None:
    r = pacs(tmp_path / "a", "ingest", str(folder))
    assert r.returncode == 3, r.stderr  # partial success: two files rejected
    assert "stored 9 instances" in r.stdout
    assert "rejected 2" in r.stdout
    assert "NotDicomError" in r.stdout and "notes.txt" in r.stdout
    assert "truncated.dcm" in r.stdout
    assert "MB/s" in r.stdout
    assert "ingest" in r.stderr  # the progress bar goes to stderr


def test_clean_ingest_exits_zero_and_counts_duplicates(tmp_path: Path, folder: Path) -> None:
    assert pacs(tmp_path / "a", "ingest", str(folder / "s1")).returncode == 0
    again = pacs(tmp_path / "a", "ingest", str(folder / "s1"))
    assert again.returncode == 0
    assert "(4 duplicates replaced)" in again.stdout


def test_find_json_answers_what_the_files_say(tmp_path: Path, folder: Path) -> None:
    pacs(tmp_path / "a", "ingest", str(folder))
    r = pacs(tmp_path / "a", "find", "STUDY", "PatientID", "StudyDate", "ModalitiesInStudy",
             "NumberOfStudyRelatedInstances", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = {row["StudyInstanceUID"]: row for row in json.loads(r.stdout)}
    expected: dict[str, tuple[str, int]] = {}
    for path in folder.rglob("*.dcm"):
        if path.name == "truncated.dcm":
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        pid, n = expected.get(ds.StudyInstanceUID, (ds.PatientID, 0))
        expected[ds.StudyInstanceUID] = (pid, n + 1)
    assert set(rows) == set(expected)
    for uid, (pid, n) in expected.items():
        assert rows[uid]["PatientID"] == pid
        assert int(rows[uid]["NumberOfStudyRelatedInstances"]) == n


def test_find_with_an_unknown_key_is_a_usage_error(tmp_path: Path, folder: Path) -> None:
    r = pacs(tmp_path / "a", "find", "STUDY", "PatientNmae=X")
    assert r.returncode == 2
    assert "PatientNmae" in r.stderr


def test_export_writes_the_stored_bytes(tmp_path: Path, folder: Path) -> None:
    pacs(tmp_path / "a", "ingest", str(folder / "s1"))
    study = pydicom.dcmread(folder / "s1" / "0.dcm").StudyInstanceUID
    r = pacs(tmp_path / "a", "export", study, str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "exported 4 instances" in r.stdout
    originals = {pydicom.dcmread(p).SOPInstanceUID: p for p in (folder / "s1").glob("*.dcm")}
    for exported in (tmp_path / "out").glob("*.dcm"):
        ds = pydicom.dcmread(exported)
        assert ds.PixelData == pydicom.dcmread(originals[ds.SOPInstanceUID]).PixelData
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 4


def test_export_of_an_unknown_uid_is_a_usage_error(tmp_path: Path) -> None:
    r = pacs(tmp_path / "a", "export", "1.2.3.4", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "1.2.3.4" in r.stderr


def test_delete_verify_compact_reindex_stats(tmp_path: Path, folder: Path) -> None:
    archive = tmp_path / "a"
    pacs(archive, "ingest", str(folder / "s1"), str(folder / "s2"))
    study = pydicom.dcmread(folder / "s1" / "0.dcm").StudyInstanceUID
    r = pacs(archive, "delete", "--study", study)
    assert r.returncode == 0 and "deleted 4 instances" in r.stdout, r.stderr
    assert pacs(archive, "delete", "--study", study).returncode == 2  # nothing left to delete
    r = pacs(archive, "verify")
    assert r.returncode == 0 and "clean" in r.stdout, r.stdout
    assert "verify (segments)" in r.stderr and "2/2" in r.stderr  # progress, on stderr
    r = pacs(archive, "compact")
    # the ingest's segment (4 live, 4 dead) and the delete's (tombstones only)
    assert r.returncode == 0 and "compacted 2 segments: 4 records kept" in r.stdout, r.stdout
    r = pacs(archive, "reindex")
    assert r.returncode == 0 and "4 instances" in r.stdout, r.stdout
    assert "reindex (segments)" in r.stderr
    stats = json.loads(pacs(archive, "stats", "--json").stdout)
    assert stats["instances"] == 4 and stats["studies"] == 1
    assert stats["cold_segments"] == stats["segments"] == 2
    assert stats["dead_bytes"] == 0


def test_verify_fails_with_exit_one_on_a_flipped_byte(tmp_path: Path, folder: Path) -> None:
    archive = tmp_path / "a"
    pacs(archive, "ingest", str(folder / "s1"))
    segment = next((archive / "segments").glob("*.seg"))
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x40  # inside some record's pixel part
    segment.write_bytes(bytes(data))
    r = pacs(archive, "verify")
    assert r.returncode == 1
    assert "checksum mismatch" in r.stdout


def test_module_entry_point_matches_console_script(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "engine.cli", "-A", str(tmp_path / "a"), "stats", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["instances"] == 0
