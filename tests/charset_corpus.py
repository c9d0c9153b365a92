"""Instances in every character set pydicom decodes: its chr*.dcm files, and a few more.

pydicom's character-set files (``pydicom.data.get_charset_files("chr*")``)
are taken as they are, text bytes untouched; each gets UIDs and a Patient ID
of its own, since some share them (chrFren and chrFrenMulti, chrJapMulti and
chrJapMultiExplicitIR6). The sets they lack (GB 2312, GBK, JIS X 0212 and
five ISO 8859 parts) are added as generated slices whose names pydicom
encodes, except GB 2312, whose bytes are written out (pydicom leaves out
its escape sequence, ESC $ ) A; PS3.5 K.2 has it).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.data import get_charset_files
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from engine.synthetic import ct_series, encode


@dataclass(frozen=True)
class CharsetFile:
    """One instance, its Specific Character Set and its name as pydicom decodes them."""

    name: str  # the file's name
    path: Path
    charset: str | list[str]  # (0008,0005) as pydicom reads it
    patient_name: str
    patient_id: str
    study_uid: str

    @property
    def terms(self) -> tuple[str, ...]:
        return (self.charset,) if isinstance(self.charset, str) else tuple(self.charset)


# (file name, Specific Character Set, name): generated, for the sets pydicom has no file in
EXTRA = [
    ("gbk.dcm", "GBK", "Wang^XiaoDong=王^小東"),
    ("jis_x_0212.dcm", ["", "ISO 2022 IR 87", "ISO 2022 IR 159"], "Mori^Ogai=森^鷗外"),
    ("latin2.dcm", "ISO_IR 101", "Wałęsa^Lech"),
    ("latin3.dcm", "ISO_IR 109", "Għawdex^Ħanna"),
    ("latin4.dcm", "ISO_IR 110", "Šķēle^Ģirts"),
    ("latin5.dcm", "ISO_IR 148", "Çağlar^Şahin"),
    ("thai.dcm", "ISO_IR 166", "สมชาย^ใจดี"),
]
GB2312_NAME = "Zhang^XiaoDong=张^小东"
# PS3.5 K.2: each group's GB 2312 part after ESC $ ) A (GB 2312 in G1)
GB2312_BYTES = b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab"


def _read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _own_uids(ds: Dataset, patient_id: str) -> None:
    ds.PatientID = patient_id
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, generate_uid())
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def charset_files(folder: Path) -> list[CharsetFile]:
    """Write the instances into `folder`; one :class:`CharsetFile` each, pydicom's first."""
    out: list[CharsetFile] = []
    for source in sorted(Path(p) for p in get_charset_files("chr*.dcm")):
        ds = _read(source)
        if "SOPInstanceUID" not in ds or "PatientName" not in ds:
            continue  # chrSQEncoding*.dcm: a sequence only, no instance to store
        _own_uids(ds, source.stem)
        path = folder / source.name
        ds.save_as(path)  # the text elements stay raw: their bytes are the file's
        out.append(_described(source.name, path))
    for i, (name, charset, patient_name) in enumerate(
        [*EXTRA, ("gb2312.dcm", ["", "ISO 2022 IR 58"], "")]
    ):
        ds = next(ct_series(40 + i, 1, rows=8, columns=8))
        ds.SpecificCharacterSet = charset
        ds.PatientName = patient_name or GB2312_BYTES
        _own_uids(ds, Path(name).stem)
        path = folder / name
        path.write_bytes(encode(ds))
        out.append(_described(name, path, patient_name or GB2312_NAME))
    return out


def _described(name: str, path: Path, patient_name: str | None = None) -> CharsetFile:
    """`patient_name`: the name, where pydicom does not decode it (GB 2312)."""
    ds = _read(path)
    charset = ds.SpecificCharacterSet
    return CharsetFile(name, path, charset if isinstance(charset, str) else list(charset),
                       patient_name or str(ds.PatientName), str(ds.PatientID),
                       str(ds.StudyInstanceUID))  # fmt: skip
