"""Deterministic generated CT studies, for tests, benchmarks and ``pacs bench corpus``.

The pixels have anatomy-like structure (a body ellipse, organs, bone, air
outside) plus noise, so that they compress like real CT, not like zeros.
Everything derives from the seed: the same seed gives the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

UID_ROOT = "2.25."  # UUID-derived UIDs (PS3.5 B.2) need no registered root
_SURNAMES = (
    "Smith",
    "Garcia",
    "Muller",
    "Rossi",
    "Tanaka",
    "Nowak",
    "Dubois",
    "Silva",
    "Kim",
    "Olsen",
)
_GIVEN = ("Anna", "Ben", "Chloe", "David", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas")
_BODY_PARTS = ("HEAD", "CHEST", "ABDOMEN", "PELVIS")


def _uid(rng: np.random.Generator) -> str:
    return UID_ROOT + str(int.from_bytes(rng.bytes(16), "big"))


def ct_pixels(
    rng: np.random.Generator, rows: int = 512, columns: int = 512, z: float = 0.0
) -> np.ndarray:
    """One slice in Hounsfield-like units (stored as int16 with intercept -1024)."""
    y, x = np.mgrid[-1.0 : 1.0 : rows * 1j, -1.0 : 1.0 : columns * 1j]
    img = np.full((rows, columns), 0.0)  # air (-1024 HU after the intercept)
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 < 1.0
    img[body] = 1024 + 40
    for cx, cy, r, hu in ((-0.35, 0.0, 0.25, 60), (0.35, 0.05, 0.22, -700), (0.0, 0.45, 0.1, 700)):
        organ = (x - cx - 0.05 * np.sin(z)) ** 2 + (y - cy) ** 2 < r**2
        img[organ] = 1024 + hu
    img[body] += rng.normal(0, 12, size=int(body.sum()))
    out: np.ndarray = np.clip(img, 0, 4095).astype(np.int16)
    return out


@dataclass(frozen=True, slots=True)
class StudyPlan:
    patient_id: str
    patient_name: str
    study_uid: str
    study_date: str
    accession: str


def ct_series(
    seed: int,
    slices: int,
    *,
    rows: int = 512,
    columns: int = 512,
    study: StudyPlan | None = None,
    implicit: bool = False,
) -> Iterator[Dataset]:
    """Yield the instances of one CT series; `seed` fixes every byte."""
    rng = np.random.default_rng(seed)
    study = study or plan_study(rng)
    series_uid = _uid(rng)
    body_part = _BODY_PARTS[int(rng.integers(len(_BODY_PARTS)))]
    for i in range(slices):
        ds = _ct_header(rng, study, series_uid, body_part, i, rows, columns)
        ds.PixelData = ct_pixels(rng, rows, columns, z=i / 10).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        )
        yield ds


def plan_study(rng: np.random.Generator) -> StudyPlan:
    n = int(rng.integers(100000))
    name = f"{_SURNAMES[n % 10]}^{_GIVEN[(n // 10) % 10]}"
    date = f"20{10 + n % 15:02d}{1 + n % 12:02d}{1 + n % 28:02d}"
    return StudyPlan(f"PID{n:06d}", name, _uid(rng), date, f"ACC{int(rng.integers(10**7)):07d}")


def _ct_header(rng: np.random.Generator, study: StudyPlan, series_uid: str, body_part: str,
               index: int, rows: int, columns: int) -> Dataset:  # fmt: skip
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = _uid(rng)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.study_date
    ds.StudyTime = ds.SeriesTime = "101500"
    ds.AccessionNumber = study.accession
    ds.Modality = "CT"
    ds.Manufacturer = "pacs-engine synthetic"
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.StudyDescription = f"CT {body_part.title()}"
    ds.SeriesDescription = f"{body_part.title()} 1.0 mm"
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "F" if int(study.patient_id[3:]) % 2 else "M"
    ds.BodyPartExamined = body_part
    ds.SliceThickness = "1.0"
    ds.KVP = "120"
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [-250.0, -250.0, -float(index)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = series_uid
    ds.SliceLocation = -float(index)
    ref = Dataset()
    ref.ReferencedSOPClassUID = CTImageStorage
    ref.ReferencedSOPInstanceUID = study.study_uid
    ds.ReferencedImageSequence = Sequence([ref])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.PixelSpacing = [0.7, 0.7]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 1
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    return ds


def encode(ds: Dataset) -> bytes:
    """A generated dataset as Part 10 bytes."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
