"""`pacs bench corpus`: every file is valid DICOM that pydicom reads and decodes, UIDs are
unique, the same seed gives the same bytes, and CT compresses like CT rather than zeros."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import zstandard

from engine.bench.corpus import (
    SYNTAXES,
    CorpusSpec,
    load_manifest,
    parse_span,
    subset,
    write_corpus,
)
from engine.cli import main
from tests.bench.conftest import Corpus


def _read(root: Path, manifest: dict) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(root / f["path"]) for f in manifest["files"]]


def test_every_file_reads_and_its_pixels_decode(corpus: Corpus) -> None:
    datasets = _read(corpus.root, corpus.manifest)
    assert len(datasets) == corpus.manifest["instances"]
    for ds, row in zip(datasets, corpus.manifest["files"], strict=True):
        assert (
            ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == row["sop_instance_uid"]
        )
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
        assert ds.pixel_array.std() > 10, "pixels have structure and noise, not a constant"
    assert {ds.Modality for ds in datasets} == {"CT", "MR", "CR"}
    ct = next(ds for ds in datasets if ds.Modality == "CT")
    assert (ct.Rows, ct.Columns, ct.BitsAllocated) == (512, 512, 16)


def test_manifest_counts_what_is_on_disk(corpus: Corpus) -> None:
    m = corpus.manifest
    files = [p for p in corpus.root.rglob("*.dcm")]
    assert len(files) == m["instances"] == len(m["files"])
    assert sum(p.stat().st_size for p in files) == m["bytes"]
    datasets = _read(corpus.root, m)
    assert len({ds.StudyInstanceUID for ds in datasets}) == m["studies"] == len(m["study_list"])
    assert len({ds.SeriesInstanceUID for ds in datasets}) == m["series"]
    assert len({ds.PatientID for ds in datasets}) == m["patients"]
    assert load_manifest(corpus.root) == m


def test_uids_are_unique_and_valid(corpus: Corpus) -> None:
    datasets = _read(corpus.root, corpus.manifest)
    uids = [ds.SOPInstanceUID for ds in datasets]
    assert len(set(uids)) == len(uids)
    for ds in datasets:
        for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID):
            assert uid.is_valid and len(uid) <= 64


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    spec = CorpusSpec(seed=3, studies=2, modality="MR", slices=3)
    a = write_corpus(tmp_path / "a", spec, jobs=1)
    b = write_corpus(tmp_path / "b", spec, jobs=2)
    c = write_corpus(tmp_path / "c", CorpusSpec(seed=4, studies=2, modality="MR", slices=3), jobs=1)
    assert (tmp_path / "a/manifest.json").read_bytes() == (
        tmp_path / "b/manifest.json"
    ).read_bytes()
    for fa, fb in zip(a["files"], b["files"], strict=True):
        assert (tmp_path / "a" / fa["path"]).read_bytes() == (
            tmp_path / "b" / fb["path"]
        ).read_bytes()
    assert {f["sop_instance_uid"] for f in a["files"]}.isdisjoint(
        f["sop_instance_uid"] for f in c["files"]
    )


def test_ct_pixel_data_compresses_like_ct_not_like_zeros(corpus: Corpus) -> None:
    row = next(f for f in corpus.manifest["files"] if f["series"] == 0 and f["study"] == 0)
    ds = pydicom.dcmread(corpus.root / row["path"])
    assert ds.Modality == "CT"
    raw = ds.PixelData
    ratio = len(raw) / len(zstandard.compress(raw, 3))
    # real CT slices give about 2-5 with zstd; zeros would give hundreds
    assert 1.5 < ratio < 10, ratio


@pytest.mark.parametrize("syntax", ["rle", "jpeg2000", "jpeg-ls", "implicit"])
def test_lossless_syntaxes_decode_to_the_explicit_pixels(tmp_path: Path, syntax: str) -> None:
    spec = CorpusSpec(seed=5, studies=1, slices=2)
    plain = write_corpus(tmp_path / "plain", spec, jobs=1)
    coded = write_corpus(
        tmp_path / syntax, CorpusSpec(seed=5, studies=1, slices=2, syntax=syntax), jobs=1
    )
    for fp, fc in zip(plain["files"], coded["files"], strict=True):
        a = pydicom.dcmread(tmp_path / "plain" / fp["path"])
        b = pydicom.dcmread(tmp_path / syntax / fc["path"])
        assert b.file_meta.TransferSyntaxUID == SYNTAXES[syntax]
        assert b.SOPInstanceUID == a.SOPInstanceUID == fc["sop_instance_uid"]
        assert np.array_equal(a.pixel_array, b.pixel_array)


def test_jpeg_baseline_corpus_decodes(tmp_path: Path) -> None:
    m = write_corpus(tmp_path, CorpusSpec(seed=5, studies=1, slices=2, syntax="jpeg-baseline"))
    for ds in _read(tmp_path, m):
        assert ds.file_meta.TransferSyntaxUID == SYNTAXES["jpeg-baseline"]
        assert ds.pixel_array.shape == (512, 512) and ds.pixel_array.std() > 1


def test_multiframe_holds_every_slice_in_one_instance(tmp_path: Path) -> None:
    m = write_corpus(tmp_path, CorpusSpec(studies=1, slices=5, multiframe=True), jobs=1)
    (ds,) = _read(tmp_path, m)
    assert int(ds.NumberOfFrames) == 5 and ds.pixel_array.shape == (5, 512, 512)


@pytest.mark.parametrize("syntax", ["explicit", "implicit", "rle", "jpeg-ls"])
def test_small_instances_are_patched_copies_with_their_own_uids(
    tmp_path: Path, syntax: str
) -> None:
    spec = CorpusSpec(studies=3, slices=30, small=True, modality="MIXED", syntax=syntax)
    m = write_corpus(tmp_path, spec)
    datasets = _read(tmp_path, m)
    assert [ds.SOPInstanceUID for ds in datasets] == [f["sop_instance_uid"] for f in m["files"]]
    assert all(ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID for ds in datasets)
    assert all(ds.file_meta.TransferSyntaxUID == SYNTAXES[syntax] for ds in datasets)
    first = [ds for ds in datasets if ds.SeriesInstanceUID == datasets[0].SeriesInstanceUID]
    assert [int(ds.InstanceNumber) for ds in first] == list(range(1, len(first) + 1))
    assert all(ds.pixel_array.shape == (16, 16) for ds in datasets)


def test_cli_writes_the_corpus_and_refuses_nonsense(tmp_path: Path) -> None:
    assert (
        main(["bench", "corpus", str(tmp_path / "c"), "--studies", "1", "--slices", "2", "--small"])
        == 0
    )
    assert load_manifest(tmp_path / "c")["instances"] == 2
    assert main(["bench", "corpus", str(tmp_path / "d"), "--studies", "0"]) == 2


def test_a_span_of_files_keeps_only_the_studies_whole_in_it(corpus: Corpus) -> None:
    m = corpus.manifest
    first = m["study_list"][0]
    size = sum(se["instances"] for se in first["series"])
    part = subset(m, *parse_span(f":{size + 1}"))
    assert part["instances"] == size + 1 == len(part["files"])
    assert part["studies"] == 2  # the first whole, the second begun
    assert [st["StudyInstanceUID"] for st in part["study_list"]] == [first["StudyInstanceUID"]]
    assert subset(m, *parse_span("0:"))["study_list"] == m["study_list"]
    rest = subset(m, *parse_span(f"{size}:"))
    assert first not in rest["study_list"] and len(rest["study_list"]) == len(m["study_list"]) - 1
    for bad in ("5", ":", "a:b", "-1:3"):
        with pytest.raises(ValueError, match="START:END"):
            parse_span(bad)
