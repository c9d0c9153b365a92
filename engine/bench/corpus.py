"""``pacs bench corpus``: a deterministic corpus of realistic studies, written as Part 10 files.

Layout: ``DIR/<study>/<series>/<instance>.dcm`` (names are indexes, never
UIDs) and ``DIR/manifest.json`` (schema :data:`MANIFEST_SCHEMA`)::

    {"schema": "pacs-bench-corpus/1", "seed": 1, "modality": "CT",
     "syntax": "explicit", "transfer_syntax_uid": "1.2.840.10008.1.2.1",
     "small": false, "multiframe": false,
     "instances": 400, "bytes": 210000000, "studies": 2, "series": 2, "patients": 2,
     "study_list": [{"index": 0, "StudyInstanceUID": ..., "PatientID": ..., "PatientName": ...,
                     "StudyDate": ..., "AccessionNumber": ..., "StudyDescription": ...,
                     "ModalitiesInStudy": ["CT"],
                     "series": [{"SeriesInstanceUID": ..., "Modality": "CT",
                                 "SeriesDescription": ..., "instances": 200}]}],
     "files": [{"path": "0000/0/00000.dcm", "sop_instance_uid": ..., "bytes": 526000,
                "study": 0, "series": 0}]}

Everything derives from the seed (one numpy generator per series, seeded
from the corpus seed and the series' place), so the same arguments give the
same bytes, whatever the number of processes that wrote them.

Pixels: CT slices are :func:`engine.synthetic.ct_pixels` (body, organs, bone,
noise: they compress like real CT); MR is a smaller head-like phantom; CR and
DX are large single frames with a smooth chest-like gradient plus noise.
``--small`` writes 16x16 instances from one template whose fixed-width UIDs
and names are patched in place, so a million of them take minutes, not hours.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from engine.synthetic import ct_pixels, encode

MANIFEST_SCHEMA = "pacs-bench-corpus/1"
MODALITIES = ("CT", "MR", "CR", "DX", "MIXED")
SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
    "jpeg-baseline": JPEGBaseline8Bit,
}
# syntaxes pydicom cannot encode here go through DCMTK (+un: keep the SOP Instance UID)
DCMTK_ENCODERS = {
    "jpeg-ls": ["/usr/bin/dcmcjpls", "+un"],
    "jpeg-baseline": ["/usr/bin/dcmcjpeg", "+eb", "+un"],
}
SOP_CLASSES = {
    "CT": CTImageStorage,
    "MR": UID("1.2.840.10008.5.1.4.1.1.4"),
    "CR": UID("1.2.840.10008.5.1.4.1.1.1"),
    "DX": UID("1.2.840.10008.5.1.4.1.1.1.1"),
}
MULTIFRAME_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.7.3")  # Multi-frame Grayscale Word SC
PROJECTION_IMAGES_PER_SERIES = 2  # CR/DX series: a PA and a lateral view
SMALL_PIXELS = 16
UID_DIGITS = 39  # "2.25." + 39 digits: 44 characters, even, so every UID has the same width
_SIZES = {"CT": (512, 512), "MR": (256, 256), "CR": (2048, 2048), "DX": (2560, 2048)}
# names for the generated patients: varied, so that PatientName wildcards select a few
_SURNAMES = [
    "Abe",
    "Berg",
    "Costa",
    "Diallo",
    "Eriksen",
    "Fischer",
    "Gomez",
    "Haddad",
    "Ivanova",
    "Jensen",
    "Khan",
    "Lopez",
]
_GIVEN = ["Amir", "Bea", "Carla", "Dmitri", "Emma", "Femi", "Goran", "Hana", "Ivo", "Julia"]
_BODY_PARTS = {
    "CT": ("HEAD", "CHEST", "ABDOMEN", "PELVIS"),
    "MR": ("BRAIN", "KNEE", "SPINE"),
    "CR": ("CHEST", "HAND"),
    "DX": ("CHEST", "PELVIS"),
}


@dataclass(frozen=True, slots=True)
class CorpusSpec:
    """What ``pacs bench corpus`` writes; every field takes part in the bytes."""

    seed: int = 1
    studies: int = 2
    modality: str = "CT"
    slices: int = 200
    multiframe: bool = False
    syntax: str = "explicit"
    small: bool = False


@dataclass(frozen=True, slots=True)
class SeriesPlan:
    """One series to write: its place, its UIDs and attributes, its instance count."""

    study: int
    index: int
    seed: int
    modality: str
    instances: int
    attrs: dict[str, str]


def fixed_uid(rng: np.random.Generator) -> str:
    """A ``2.25.`` UID (PS3.5 B.2) of fixed width: 39 digits, the first never 0."""
    low = int.from_bytes(rng.bytes(16), "big") % (9 * 10 ** (UID_DIGITS - 1))
    return f"2.25.{10 ** (UID_DIGITS - 1) + low}"


def plan(spec: CorpusSpec) -> list[SeriesPlan]:
    """Every series of the corpus, with the patient and study attributes queries will match."""
    rng = np.random.default_rng([spec.seed, 0])
    n_patients = max(1, (spec.studies * 3 + 3) // 4)  # some patients have more than one study
    patients = [_patient(rng, i) for i in range(n_patients)]
    series: list[SeriesPlan] = []
    for s in range(spec.studies):
        patient = patients[int(rng.integers(n_patients))] if s >= n_patients else patients[s]
        modality = MODALITIES[s % 4] if spec.modality == "MIXED" else spec.modality
        body = _BODY_PARTS[modality][int(rng.integers(len(_BODY_PARTS[modality])))]
        study = dict(
            patient,
            StudyInstanceUID=fixed_uid(rng),
            StudyDate=_date(rng),
            StudyTime=f"{int(rng.integers(7, 19)):02d}3000",
            AccessionNumber=f"ACC{int(rng.integers(10**9)):09d}",
            StudyDescription=f"{modality} {body.title()}"[:16].ljust(16),
            BodyPartExamined=body,
        )
        n_series = 2 if spec.modality == "MIXED" and modality == "CT" else 1
        for k in range(n_series):
            kind = modality if k == 0 else "CR"  # a mixed CT study also holds a scout CR
            count = _instances(spec, kind)
            attrs = dict(
                study,
                SeriesInstanceUID=fixed_uid(rng),
                Modality=kind,
                SeriesNumber=str(k + 1),
                SeriesDescription=f"{body.title()} {'scout' if k else 'series'}",
            )
            series.append(SeriesPlan(s, k, int(rng.integers(2**63)), kind, count, attrs))
    return series


def _instances(spec: CorpusSpec, modality: str) -> int:
    if spec.multiframe and modality in ("CT", "MR"):
        return 1
    if modality in ("CR", "DX"):
        return min(spec.slices, PROJECTION_IMAGES_PER_SERIES)
    return spec.slices


def _patient(rng: np.random.Generator, i: int) -> dict[str, str]:
    n = int(rng.integers(10**6))
    name = f"{_SURNAMES[n % len(_SURNAMES)]}^{_GIVEN[(n // 12) % len(_GIVEN)]}"
    return {
        "PatientID": f"PID{i:07d}",
        "PatientName": name.ljust(16)[:16],
        "PatientBirthDate": f"19{30 + n % 60:02d}{1 + n % 12:02d}{1 + n % 28:02d}",
        "PatientSex": "FM"[n % 2],
    }


def _date(rng: np.random.Generator) -> str:
    year, month, day = (
        2010 + int(rng.integers(16)),
        int(rng.integers(1, 13)),
        int(rng.integers(1, 29)),
    )
    return f"{year}{month:02d}{day:02d}"


# -- pixels -------------------------------------------------------------------------


def pixels(
    rng: np.random.Generator, modality: str, rows: int, columns: int, z: float
) -> np.ndarray:
    """One frame for `modality`: structure plus noise (signed for CT, unsigned otherwise)."""
    if modality == "CT":
        return ct_pixels(rng, rows, columns, z)
    y, x = np.mgrid[-1.0 : 1.0 : rows * 1j, -1.0 : 1.0 : columns * 1j]
    if modality == "MR":
        head = (x / 0.7) ** 2 + (y / 0.85) ** 2
        img = np.where(head < 1.0, 600 + 300 * np.cos(6 * head + z), 0.0)
        img[head < 0.3] += 250
        noise = 20.0
    else:  # projection radiograph: lungs darker than the mediastinum, soft falloff
        img = 2400 - 900 * np.exp(-((np.abs(x) - 0.45) ** 2 / 0.08 + y**2 / 0.5))
        img += 300 * np.cos(18 * y) * (np.abs(x) < 0.8)
        noise = 30.0
    img += rng.normal(0, noise, size=img.shape)
    out: np.ndarray = np.clip(img, 0, 4095).astype(np.uint16)
    return out


# -- datasets -----------------------------------------------------------------------


def _dataset(
    series: SeriesPlan, index: int, sop_uid: str, rows: int, columns: int, frames: int, syntax: UID
) -> Dataset:
    a = series.attrs
    multiframe = frames > 1
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if series.modality in ("CT", "MR") else ""]
    ds.SOPClassUID = MULTIFRAME_SOP_CLASS if multiframe else SOP_CLASSES[series.modality]
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = a["StudyDate"]
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = a["StudyTime"]
    ds.AccessionNumber = a["AccessionNumber"]
    ds.Modality = series.modality
    ds.Manufacturer = "pacs-engine bench"
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.StudyDescription = a["StudyDescription"].rstrip()
    ds.SeriesDescription = a["SeriesDescription"]
    ds.PatientName = a["PatientName"].rstrip()
    ds.PatientID = a["PatientID"]
    ds.PatientBirthDate = a["PatientBirthDate"]
    ds.PatientSex = a["PatientSex"]
    ds.BodyPartExamined = a["BodyPartExamined"]
    ds.StudyInstanceUID = a["StudyInstanceUID"]
    ds.SeriesInstanceUID = a["SeriesInstanceUID"]
    ds.StudyID = "1"
    ds.SeriesNumber = a["SeriesNumber"]
    ds.InstanceNumber = index + 1
    if series.modality in ("CT", "MR") and not multiframe:
        ds.ImagePositionPatient = [-250.0, -250.0, -float(index)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = a["SeriesInstanceUID"]
        ds.SliceLocation = -float(index)
        ds.SliceThickness = "1.0"
    if multiframe:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.PixelSpacing = [0.7, 0.7]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 1 if series.modality == "CT" else 0
    if series.modality == "CT":
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def _size(spec: CorpusSpec, modality: str) -> tuple[int, int]:
    return (SMALL_PIXELS, SMALL_PIXELS) if spec.small else _SIZES[modality]


def _write_series(root: str, spec: CorpusSpec, series: SeriesPlan) -> list[dict[str, Any]]:
    """Write one series (in a worker process); its manifest rows."""
    rng = np.random.default_rng(series.seed)
    folder = Path(root) / f"{series.study:04d}" / str(series.index)
    folder.mkdir(parents=True, exist_ok=True)
    template = _Template(spec, series, folder) if spec.small else None
    files = []
    for i in range(series.instances):
        sop_uid = fixed_uid(rng)
        path = folder / f"{i:05d}.dcm"
        if template is not None:
            data = template.render(sop_uid, i)
        else:
            data = _instance(spec, series, i, sop_uid, rng, folder)
        path.write_bytes(data)
        files.append(
            {
                "path": str(path.relative_to(root)),
                "sop_instance_uid": sop_uid,
                "bytes": len(data),
                "study": series.study,
                "series": series.index,
            }
        )
    return files


def _instance(
    spec: CorpusSpec,
    series: SeriesPlan,
    index: int,
    sop_uid: str,
    rng: np.random.Generator,
    folder: Path,
) -> bytes:
    """One instance as Part 10 bytes in the corpus's transfer syntax."""
    rows, columns = _size(spec, series.modality)
    frames = spec.slices if spec.multiframe and series.modality in ("CT", "MR") else 1
    syntax = SYNTAXES[spec.syntax]
    native = syntax if spec.syntax in ("explicit", "implicit") else UID(ExplicitVRLittleEndian)
    ds = _dataset(series, index, sop_uid, rows, columns, frames, native)
    planes = [pixels(rng, series.modality, rows, columns, (index + f) / 10) for f in range(frames)]
    arr = np.stack(planes) if frames > 1 else planes[0]
    ds.PixelData = arr.tobytes()
    if spec.syntax in ("rle", "jpeg2000"):
        ds.compress(syntax, arr, generate_instance_uid=False)
    data = encode(ds)
    return _dcmtk_encode(spec.syntax, data, folder) if spec.syntax in DCMTK_ENCODERS else data


def _dcmtk_encode(syntax: str, data: bytes, folder: Path) -> bytes:
    tool = DCMTK_ENCODERS[syntax]
    if not Path(tool[0]).is_file():
        raise RuntimeError(f"{tool[0]} is missing: install DCMTK to write {syntax} corpora")
    with tempfile.TemporaryDirectory(dir=folder, prefix=".encode") as tmp:
        src, dst = Path(tmp) / "in.dcm", Path(tmp) / "out.dcm"
        src.write_bytes(data)
        subprocess.run([*tool, str(src), str(dst)], check=True, capture_output=True)
        return dst.read_bytes()


class _Template:
    """One small instance encoded once; each render patches fixed-width fields in its bytes.

    The template is made like any other instance (same syntax, same encoder),
    with a placeholder SOP Instance UID of the same width as every real one
    and InstanceNumber 99999, so patching never moves a byte.
    """

    PLACEHOLDER_UID = "2.25." + "9" * UID_DIGITS
    PLACEHOLDER_INDEX = 99998  # InstanceNumber 99999: five digits, wide enough for any series

    def __init__(self, spec: CorpusSpec, series: SeriesPlan, folder: Path) -> None:
        rng = np.random.default_rng(series.seed ^ 0x5A5A)
        self.data = _instance(
            spec, series, self.PLACEHOLDER_INDEX, self.PLACEHOLDER_UID, rng, folder
        )
        self.uid_at = list(_find_all(self.data, self.PLACEHOLDER_UID.encode()))
        # (0020,0013) InstanceNumber, explicit or implicit VR: its value is the next "99999"
        self.number_at = self.data.index(b"99999", self.data.index(b"\x20\x00\x13\x00"))
        assert len(self.uid_at) == 2, "the SOP Instance UID appears in the meta and the data set"

    def render(self, sop_uid: str, index: int) -> bytes:
        buf = bytearray(self.data)
        uid = sop_uid.encode()
        for at in self.uid_at:
            buf[at : at + len(uid)] = uid
        buf[self.number_at : self.number_at + 5] = f"{index + 1:5d}".encode()
        return bytes(buf)


def _find_all(data: bytes, needle: bytes) -> Iterator[int]:
    at = data.find(needle)
    while at >= 0:
        yield at
        at = data.find(needle, at + 1)


# -- the whole corpus ---------------------------------------------------------------


def write_corpus(
    root: Path, spec: CorpusSpec, *, jobs: int | None = None, progress: Any = None
) -> dict[str, Any]:
    """Write the corpus under `root` and its ``manifest.json``; return the manifest.

    Parameters
    ----------
    root
        Folder to write into (created; a corpus already there is replaced).
    spec
        What to write.
    jobs
        Processes that write series in parallel (default: the number of cores).
    progress
        Called with (instances written so far, instances in all) after each series.
    """
    if spec.modality not in MODALITIES:
        raise ValueError(f"unknown modality {spec.modality!r}: choose one of {MODALITIES}")
    if spec.syntax not in SYNTAXES:
        raise ValueError(f"unknown syntax {spec.syntax!r}: choose one of {sorted(SYNTAXES)}")
    if spec.studies < 1 or spec.slices < 1:
        raise ValueError("--studies and --slices must be at least 1")
    series = plan(spec)
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():  # a rerun must not leave files of an earlier corpus behind
        if old.is_dir() and old.name.isdigit():
            shutil.rmtree(old)
    files: list[dict[str, Any]] = []
    workers = jobs or os.cpu_count() or 1
    # many one-instance series (a scale corpus): hand them out in chunks, not one IPC each
    chunk = max(1, len(series) // (workers * 16))
    total = sum(s.instances for s in series)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        write = functools.partial(_write_series, str(root), spec)
        for rows in pool.map(write, series, chunksize=chunk):
            files.extend(rows)
            if progress is not None:
                progress(len(files), total)
    manifest = _manifest(spec, series, files)
    _write_atomic(root / "manifest.json", orjson.dumps(manifest))
    return manifest


def _manifest(
    spec: CorpusSpec, series: list[SeriesPlan], files: list[dict[str, Any]]
) -> dict[str, Any]:
    studies: dict[int, dict[str, Any]] = {}
    for s in series:
        a = s.attrs
        study = studies.setdefault(
            s.study,
            {
                k: a[k].rstrip()
                for k in (
                    "StudyInstanceUID",
                    "PatientID",
                    "PatientName",
                    "StudyDate",
                    "AccessionNumber",
                    "StudyDescription",
                )
            }
            | {"index": s.study, "ModalitiesInStudy": [], "series": []},
        )
        if s.modality not in study["ModalitiesInStudy"]:
            study["ModalitiesInStudy"].append(s.modality)
        study["series"].append(
            {
                "SeriesInstanceUID": a["SeriesInstanceUID"],
                "Modality": s.modality,
                "SeriesDescription": a["SeriesDescription"],
                "instances": s.instances,
            }
        )
    return {
        "schema": MANIFEST_SCHEMA,
        "seed": spec.seed,
        "modality": spec.modality,
        "syntax": spec.syntax,
        "transfer_syntax_uid": str(SYNTAXES[spec.syntax]),
        "small": spec.small,
        "multiframe": spec.multiframe,
        "slices": spec.slices,
        "instances": len(files),
        "bytes": sum(f["bytes"] for f in files),
        "studies": len(studies),
        "series": len(series),
        "patients": len({st["PatientID"] for st in studies.values()}),
        "study_list": [studies[k] for k in sorted(studies)],
        "files": files,
    }


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def load_manifest(root: Path) -> dict[str, Any]:
    """The manifest of a corpus written by :func:`write_corpus`."""
    path = root / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: write the corpus with `pacs bench corpus {root}`"
        )
    manifest: dict[str, Any] = orjson.loads(path.read_bytes())
    if manifest.get("schema") != MANIFEST_SCHEMA:
        raise ValueError(f"{path}: not a {MANIFEST_SCHEMA} manifest")
    return manifest


def parse_span(text: str) -> tuple[int, int | None]:
    """``START:END`` (either side may be empty) as a slice of the manifest's files."""
    start, colon, end = text.partition(":")
    if (
        not colon
        or not (start or end)
        or not (start or "0").isdigit()
        or not (end or "0").isdigit()
    ):
        raise ValueError(f"bad span {text!r}: write START:END, e.g. 0:10000 or 10000:")
    return int(start or 0), int(end) if end else None


def subset(manifest: dict[str, Any], start: int, end: int | None) -> dict[str, Any]:
    """The manifest of files[start:end]: for scale runs that ingest a corpus in steps.

    Its study list keeps only the studies whose every file lies in the span,
    so that queries built from it ask for what the archive holds in full.
    """
    files = manifest["files"][start:end]
    inside: dict[int, int] = {}
    for f in files:
        inside[f["study"]] = inside.get(f["study"], 0) + 1
    studies = [
        st
        for st in manifest["study_list"]
        if inside.get(st["index"], 0) == sum(se["instances"] for se in st["series"])
    ]
    touched = [st for st in manifest["study_list"] if st["index"] in inside]
    return manifest | {
        "files": files,
        "instances": len(files),
        "bytes": sum(f["bytes"] for f in files),
        "studies": len(touched),
        "series": len({(f["study"], f["series"]) for f in files}),
        "patients": len({st["PatientID"] for st in touched}),
        "study_list": studies,
        "span": [start, end],
    }
