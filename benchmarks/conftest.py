"""Session fixtures for the benchmarks: realistic instances built once with pydicom."""

from __future__ import annotations

import fnmatch
import io
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from engine import __version__
from engine.scan import BACKEND
from engine.synthetic import ct_series, encode

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
ROOT = "1.2.826.0.1.3680043.8.498"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def ct_header(sop_class: str = CT_IMAGE_STORAGE) -> Dataset:
    """About 70 elements of a CT slice as scanners write them, with three sequences."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceCreationDate, ds.InstanceCreationTime = "20240131", "101512.250"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, f"{ROOT}.1.1.42"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240131"
    ds.StudyTime, ds.SeriesTime, ds.AcquisitionTime, ds.ContentTime = (
        "100501", "100930.5", "101002.125", "101512.25"
    )  # fmt: skip
    ds.AccessionNumber, ds.Modality, ds.Manufacturer = "ACC0012345", "CT", "ACME Medical"
    ds.InstitutionName, ds.ReferringPhysicianName = "General Hospital", "Smith^Anna^^Dr."
    ds.StationName, ds.StudyDescription = "CT01", "CT CHEST ABDOMEN PELVIS W CONTRAST"
    ds.ProcedureCodeSequence = Sequence([_code("CTCAP", "L", "CT chest abdomen pelvis")])
    ds.SeriesDescription, ds.ManufacturerModelName = "Axial 1.25mm", "Scanner 9000"
    ds.ReferencedImageSequence = Sequence()
    for i in range(2):
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = sop_class, f"{ROOT}.1.9.{i}"
        ds.ReferencedImageSequence.append(ref)
    ds.PatientName, ds.PatientID, ds.IssuerOfPatientID = "Doe^Jane", "PID0099812", "HOSP"
    ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = "19700412", "F", "053Y"
    ds.PatientWeight = "71.5"
    ds.ContrastBolusAgent, ds.BodyPartExamined = "IODINE", "CHEST"
    ds.SliceThickness, ds.KVP, ds.DataCollectionDiameter = "1.25", "120", "500"
    ds.SoftwareVersions, ds.ReconstructionDiameter = "9.1.2", "360"
    ds.GantryDetectorTilt, ds.TableHeight, ds.RotationDirection = "0", "145.5", "CW"
    ds.ExposureTime, ds.XRayTubeCurrent, ds.Exposure = "500", "250", "125"
    ds.ConvolutionKernel, ds.PatientPosition = "STANDARD", "FFS"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{ROOT}.2.1", f"{ROOT}.3.1"
    ds.StudyID, ds.SeriesNumber, ds.AcquisitionNumber, ds.InstanceNumber = "S1", "3", "1", "42"
    ds.ImagePositionPatient = ["-180.0", "-180.0", "-52.5"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = f"{ROOT}.4.1", "SN"
    ds.SliceLocation = "-52.5"
    ds.AnatomicRegionSequence = Sequence([_code("T-D3000", "SRT", "Chest")])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 512
    ds.PixelSpacing = ["0.703125", "0.703125"]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = ["40", "400"], ["400", "1500"]
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.add_new(0x00090010, "LO", "ACME_PRIVATE")
    ds.add_new(0x00091001, "LO", "recon-v2")
    ds.add_new(0x00091002, "OB", b"\x01\x02" * 64)
    return ds


def part10(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    """`ds` as a Part 10 file in `syntax`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = (
        ds.SOPClassUID, ds.SOPInstanceUID
    )  # fmt: skip
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="session")
def ct_slice() -> bytes:
    """A 512x512 16-bit CT slice, Explicit VR Little Endian (about 0.5 MB)."""
    ds = ct_header()
    rng = np.random.default_rng(42)
    ds.PixelData = rng.integers(0, 4096, (512, 512), dtype="<u2").tobytes()
    return part10(ds)


@pytest.fixture(scope="session")
def multiframe() -> bytes:
    """A 500-frame 128x128 16-bit enhanced CT, Explicit VR Little Endian (about 16 MB)."""
    ds = ct_header(ENHANCED_CT_STORAGE)
    ds.Rows = ds.Columns = 128
    ds.NumberOfFrames = 500
    ds.PixelData = np.zeros((500, 128, 128), dtype="<u2").tobytes()
    return part10(ds)


@pytest.fixture(scope="session")
def encapsulated_multiframe() -> bytes:
    """500 JPEG Baseline frames (stand-in bitstreams: SOI, 2 kB, EOI) with a Basic Offset Table."""
    ds = ct_header(ENHANCED_CT_STORAGE)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.NumberOfFrames = 500
    frames = [b"\xff\xd8" + bytes([i % 251]) * 2048 + b"\xff\xd9" for i in range(500)]
    ds.PixelData = encapsulate(frames, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return part10(ds, JPEGBaseline8Bit)


# -- storage-core benchmarks (bench_store, bench_get, bench_find) --------------------------

# bench_store/get/find import the naive archive as a sibling module.
sys.path.insert(0, str(Path(__file__).parent))

CT_SLICES = 200  # one store round: a CT series
CT_SEED = 2


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Collect ``bench_*.py`` when given the folder (pyproject's python_files names tests only)."""
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    if parent.session.isinitpath(file_path) or any(
        fnmatch.fnmatch(file_path.name, pattern) for pattern in parent.config.getini("python_files")
    ):
        return None  # pytest collects it already
    module: pytest.Module = pytest.Module.from_parent(parent, path=file_path)
    return module


def pytest_benchmark_update_machine_info(
    config: pytest.Config, machine_info: dict[str, Any]
) -> None:
    """Say which engine and scan backend ran, in every saved result."""
    machine_info["pacs_engine"] = {"version": __version__, "scan_backend": BACKEND}


@pytest.fixture(scope="session")
def ct_slices() -> list[bytes]:
    """One engine.synthetic CT series: 512x512 16-bit slices, Part 10, ~513 KiB each."""
    return [encode(ds) for ds in ct_series(CT_SEED, CT_SLICES)]


class Speedups:
    """Ours and a baseline per comparison, all from this run; the ratios print at the end.

    Ratios are baseline / ours, of the medians and (where known) of the
    minima: on a shared machine the minimum is the better estimate of the
    cost of the code itself.
    """

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, tuple[float, float | None]]] = {}

    def record(self, comparison: str, role: str, result: Any) -> None:
        """Record `result` as `role` ("ours" or a baseline's name).

        `result` is the ``benchmark`` fixture after its run, a list of round
        times in seconds, or one time in seconds (a median).
        """
        if isinstance(result, int | float):
            stat: tuple[float, float | None] = (float(result), None)
        elif isinstance(result, list):
            stat = (statistics.median(result), min(result))
        elif not result.disabled:
            stat = (result.stats.stats.median, result.stats.stats.min)
        else:
            return
        self.rows.setdefault(comparison, {})[role] = stat

    def lines(self) -> list[str]:
        out = []
        for comparison, roles in self.rows.items():
            if "ours" not in roles:
                continue
            ours_median, ours_min = roles["ours"]
            for role, (median, minimum) in roles.items():
                if role == "ours":
                    continue
                line = (
                    f"{comparison:48s} ours {ours_median * 1e3:9.3f} ms  {role:25s} "
                    f"{median * 1e3:9.3f} ms  median {median / ours_median:5.2f}x"
                )
                if minimum is not None and ours_min is not None:
                    line += f"  min {minimum / ours_min:5.2f}x"
                out.append(line)
        return out


_SPEEDUPS = Speedups()


@pytest.fixture(scope="session")
def speedups() -> Speedups:
    """Where a benchmark records its result (or its baseline's) for the end-of-run ratios."""
    return _SPEEDUPS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = _SPEEDUPS.lines()
    if lines:
        terminalreporter.section("speed-up over the baselines (baseline / ours, this run)")
        for line in lines:
            terminalreporter.write_line(line)
