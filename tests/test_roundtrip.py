"""Hypothesis round trips: generated datasets store, read back bit-exact, are found, reindex."""

from __future__ import annotations

import datetime
import io
import tempfile
import warnings
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

import engine
from engine.attributes import UNIQUE_KEY, keywords_at
from tests._helpers import assert_same_instance, iter_find, read

SYNTAXES = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)
ROOT = "1.2.826.0.1.3680043.10.543."

# Names: letters of several scripts, "^" between components; no "=" (component
# groups), no wildcards, no backslash, no padding at either end.
_LETTERS = st.sampled_from(
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    + list("éüßçñøÅÖ")
    + list("日本語ΩλжЯ")
)
_WORD = st.text(_LETTERS, min_size=1, max_size=8)
NAMES = st.lists(_WORD, min_size=1, max_size=3).map("^".join)
PATIENT_IDS = st.text(
    st.sampled_from("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789-"), min_size=1, max_size=12
)
DATES = st.dates(datetime.date(1900, 1, 1), datetime.date(2099, 12, 31)).map(
    lambda d: d.strftime("%Y%m%d")
)


@st.composite
def instances(draw: Any) -> list[tuple[Dataset, bytes]]:
    """1-4 instances of 1-2 patients, each in a random uncompressed transfer syntax."""
    patients = draw(
        st.lists(
            st.tuples(PATIENT_IDS, NAMES, DATES), min_size=1, max_size=2, unique_by=lambda p: p[0]
        )
    )
    n = draw(st.integers(1, 4))
    base = draw(st.integers(1, 10**9))
    out = []
    for i in range(n):
        p = draw(st.integers(0, len(patients) - 1))
        pid, name, date = patients[p]
        rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 6))
        bits = draw(st.sampled_from([8, 16]))
        ds = Dataset()
        if not name.isascii() or draw(st.booleans()):
            ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = f"{ROOT}{base}.{i + 1}"
        ds.StudyDate = date
        ds.Modality = "CT"
        ds.PatientName = name
        ds.PatientID = pid
        ds.StudyInstanceUID = f"{ROOT}{base}.{p + 1}.1"  # one study per patient
        ds.SeriesInstanceUID = f"{ROOT}{base}.{p + 1}.2"
        ds.InstanceNumber = i + 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated = ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 0
        ds.PixelData = draw(
            st.binary(min_size=rows * cols * bits // 8, max_size=rows * cols * bits // 8)
        )
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = draw(st.sampled_from(SYNTAXES))
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(buf, enforce_file_format=True)
        out.append((ds, buf.getvalue()))
    return out


def everything(archive: Any) -> dict[str, list[tuple[tuple[str, str], ...]]]:
    """Every record at every level with every key the index keeps, as sorted tuples."""
    out = {}
    for level in ("PATIENT", "STUDY", "SERIES", "IMAGE"):
        query = dict.fromkeys([*keywords_at(level), UNIQUE_KEY[level]], "")
        rows = [
            tuple(sorted((e.keyword, str(e.value)) for e in ds))
            for ds in iter_find(archive, level, query)
        ]
        out[level] = sorted(rows)
    return out


@given(instances())
def test_generated_instances_round_trip(items: list[tuple[Dataset, bytes]]) -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        engine.open_archive(tmp, durability="none") as archive,
    ):
        for ds, data in items:
            result = archive.store(data)
            assert result.transfer_syntax == ds.file_meta.TransferSyntaxUID
        for ds, data in items:
            got = archive.get(ds.SOPInstanceUID)
            assert got[128:] == data[128:]  # as received, byte for byte
            assert_same_instance(data, got)
        by_patient: dict[str, set[str]] = {}
        for ds, _ in items:
            by_patient.setdefault(ds.PatientID, set()).add(ds.SOPInstanceUID)
        for pid, uids in by_patient.items():
            found = {d.SOPInstanceUID for d in iter_find(archive, "IMAGE", {"PatientID": pid})}
            assert found == uids
        for ds, _ in items:
            hits = list(
                iter_find(
                    archive,
                    "STUDY",
                    {"StudyDate": ds.StudyDate, "PatientID": ds.PatientID, "PatientName": ""},
                )
            )
            assert [h.StudyInstanceUID for h in hits] == [ds.StudyInstanceUID]
            assert str(hits[0].PatientName) == str(ds.PatientName)
            meta = archive.get_metadata(ds.SOPInstanceUID)
            assert str(meta.PatientName) == str(ds.PatientName)
        before = everything(archive)
        archive.reindex()
        assert everything(archive) == before
        assert read(archive.get(items[-1][0].SOPInstanceUID)).PatientID == items[-1][0].PatientID
