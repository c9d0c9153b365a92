"""Archive.frames, read_metadata and find_attrs against pydicom's reading of the corpus."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.encaps import generate_frames

from engine.archive import Archive, open_archive
from engine.errors import NotFoundError
from tests.corpus import corpus_id, real_files


@pytest.fixture(scope="module")
def corpus_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Archive, dict[str, Path]]:
    archive = open_archive(tmp_path_factory.mktemp("frames") / "a", durability="none")
    stored: dict[str, Path] = {}
    for path in real_files():
        try:
            stored[archive.store(path).sop_instance_uid] = path
        except ValueError:
            continue
    yield archive, stored
    archive.close()


def _expected(ds: pydicom.Dataset) -> list[bytes] | None:
    try:
        n = int(ds.get("NumberOfFrames", 1) or 1)
    except ValueError:
        return None
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return [bytes(f) for f in generate_frames(ds.PixelData, number_of_frames=n)]
    size = len(ds.PixelData) // n
    if (
        ds.BitsAllocated == 1
        or size * 8 != ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated
    ):
        return None  # bit-packed or padded: checked through WADO-RS in tests/web
    return [bytes(ds.PixelData[i * size : (i + 1) * size]) for i in range(n)]


def test_frames_equal_pydicom_for_every_corpus_file(corpus_archive: tuple) -> None:
    archive, stored = corpus_archive
    checked = 0
    for uid, path in stored.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            if "PixelData" not in ds or ds.SOPInstanceUID != uid:
                continue  # a later file with the same UID replaced this one
            expected = _expected(ds)
        if expected is None:
            continue
        source = archive.frames(uid)
        assert [source.read(i + 1) for i in range(source.count)] == expected, corpus_id(path)
        checked += 1
    assert checked > 50


def test_read_metadata_has_no_pixels(corpus_archive: tuple) -> None:
    archive, stored = corpus_archive
    uid = next(iter(stored))
    data, has_pixel = archive.read_metadata(uid)
    assert data[128:132] == b"DICM" and b"\xe0\x7f\x10\x00" not in data[-64:]
    assert isinstance(has_pixel, bool)


def _source_or_none(archive: Archive) -> Any:
    def source(uid: str) -> Any:
        try:
            return archive.frames(uid)
        except NotFoundError:
            return None

    return source


def test_frame_out_of_range_and_missing_pixels(corpus_archive: tuple) -> None:
    archive, stored = corpus_archive
    source = next(s for s in map(_source_or_none(archive), stored) if s and s.count == 1)
    with pytest.raises(NotFoundError, match="not frame 2"):
        source.read(2)
    with pytest.raises(NotFoundError):
        archive.frames("1.2.3.4")


def test_find_attrs_equals_find(corpus_archive: tuple) -> None:
    archive, _ = corpus_archive
    query = {"PatientName": "*", "StudyDate": "", "ModalitiesInStudy": ""}
    plain = list(archive.find_attrs("STUDY", query))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom on odd stored values
        datasets = list(archive.find("STUDY", query))
    assert len(plain) == len(datasets) > 0
    for attrs, ds in zip(plain, datasets, strict=True):
        assert attrs["StudyInstanceUID"] == ds.StudyInstanceUID
        assert str(attrs.get("PatientName", "")) == str(ds.PatientName)
    assert list(archive.find_attrs("STUDY", query, limit=2, offset=1)) == plain[1:3]
