"""Both scanners against pydicom on real files, bare datasets and generated datasets."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from engine.errors import MalformedDicomError
from engine.scan.result import ScanResult
from tests.corpus import corpus_id
from tests.scan._support import (
    TRUNCATED,
    ScanFn,
    corpus,
    pydicom_attributes,
    read_with_pydicom,
    scanned_as_pydicom,
    write,
)

READABLE = [p for p in corpus() if p.name not in TRUNCATED]
UNCOMPRESSED = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]


def _check_pixel(result: ScanResult, buffer: bytes, ds: Dataset) -> None:
    if result.deflated or "PixelData" not in ds:
        assert result.pixel is None
        return
    span = result.pixel
    assert span is not None
    tag = buffer[span.element_start : span.element_start + 4]
    assert tag in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")
    if not span.encapsulated:
        assert buffer[span.value_start : span.end] == ds.PixelData
        return
    assert buffer[span.end - 8 : span.end] == b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    fragments = [buffer[off : off + length] for off, length in span.fragments]
    bot_length = int.from_bytes(ds.PixelData[4:8], "little")
    assert fragments == list(generate_fragments(ds.PixelData[8 + bot_length :]))
    assert sum(count for _, count in span.frames) == len(fragments)
    frames = [b"".join(fragments[first : first + count]) for first, count in span.frames]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # where pydicom has to guess, don't compare
        try:
            expected = list(
                generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames") or 1))
            )
        except (ValueError, UserWarning):
            return
    assert frames == expected


@pytest.mark.parametrize("path", READABLE, ids=corpus_id)
def test_real_file_matches_pydicom(scan: ScanFn, path: Path) -> None:
    buffer = path.read_bytes()
    result = scan(buffer)
    ds = read_with_pydicom(path)
    if "TransferSyntaxUID" in ds.file_meta:
        assert result.transfer_syntax == ds.file_meta.TransferSyntaxUID
    for keyword, value in result.fmi.items():
        assert value == str(ds.file_meta[keyword].value).strip(" \x00")
    assert scanned_as_pydicom(result) == pydicom_attributes(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.PixelData if "PixelData" in ds else None  # noqa: B018 -- convert before comparing
    _check_pixel(result, buffer, ds)


@pytest.mark.parametrize("name", sorted(TRUNCATED))
def test_truncated_real_files_are_refused(scan: ScanFn, name: str) -> None:
    path = next(p for p in corpus() if p.name == name)
    with pytest.raises(MalformedDicomError) as caught:
        scan(path.read_bytes())
    assert (caught.value.offset, caught.value.reason) == TRUNCATED[name]


@pytest.mark.parametrize("path", READABLE, ids=corpus_id)
def test_bare_dataset_scans_like_its_file(scan: ScanFn, path: Path) -> None:
    buffer = path.read_bytes()
    whole = scan(buffer)
    if whole.dataset_start == 0:
        pytest.skip("no File Meta Information to strip")
    bare = scan(buffer[whole.dataset_start :], whole.transfer_syntax)
    assert (bare.fmi_start, bare.dataset_start, bare.fmi) == (0, 0, {})
    assert bare.attributes == whole.attributes
    if whole.pixel is None:
        assert bare.pixel is None
        return
    assert bare.pixel is not None
    shift = whole.dataset_start
    assert bare.pixel.element_start + shift == whole.pixel.element_start
    assert bare.pixel.end + shift == whole.pixel.end
    assert [(o + shift, n) for o, n in bare.pixel.fragments] == whole.pixel.fragments
    assert bare.pixel.frames == whole.pixel.frames


def _generated() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.StudyDate = "20240131"
    ds.StudyTime = "101010.5"
    ds.Modality = "CT"
    ds.ReferringPhysicianName = "Müller^Jürgen"
    ds.StudyDescription = " leading space kept? no"
    ds.PatientName = "Doe^John"
    ds.PatientID = "PID-1"
    ds.PatientSex = ""
    ds.ReferencedStudySequence = Sequence([Dataset(), Dataset()])
    ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID = "1.2.3"
    inner = Dataset()
    inner.PatientName = "Nested^Never"  # not top level: must not be scanned
    ds.ReferencedStudySequence[1].OtherPatientIDsSequence = Sequence([inner])
    ds.add_new(0x00091010, "LO", "Private value")
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.3"
    ds.SeriesNumber = "7"
    ds.InstanceNumber = 12
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 4
    ds.Columns = 3
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(12, dtype="<u2").tobytes()
    return ds


@pytest.mark.parametrize("with_fmi", [True, False], ids=["file", "bare"])
@pytest.mark.parametrize("syntax", UNCOMPRESSED, ids=["implicit", "explicit", "big"])
def test_generated_dataset_in_each_uncompressed_syntax(
    scan: ScanFn, syntax: str, with_fmi: bool
) -> None:
    source = _generated()
    buffer = write(source, syntax, with_fmi=with_fmi)
    result = scan(buffer, None if with_fmi else syntax)
    assert result.transfer_syntax == syntax
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(buffer), force=not with_fmi)
    if not with_fmi:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    assert scanned_as_pydicom(result) == pydicom_attributes(source)
    assert result.attributes["PatientName"] == "Doe^John"
    assert result.attributes["ReferringPhysicianName"] == "Müller^Jürgen"
    assert result.attributes["PatientSex"] == ""
    assert result.attributes["Rows"] == 4
    assert result.pixel is not None
    assert buffer[result.pixel.value_start : result.pixel.end] == source.PixelData
    if syntax == ExplicitVRBigEndian:  # pydicom swaps OW words when it writes big endian
        return
    _check_pixel(result, buffer, ds)


def test_generated_deflated_dataset(scan: ScanFn) -> None:
    source = _generated()
    buffer = write(source, DeflatedExplicitVRLittleEndian)
    result = scan(buffer)
    assert result.deflated
    assert result.pixel is None
    assert scanned_as_pydicom(result) == pydicom_attributes(source)
