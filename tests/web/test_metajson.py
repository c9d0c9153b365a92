"""The byte-level DICOM JSON encoder against pydicom's ``to_json_dict`` on real files.

Every file of the corpus (pydicom's test files, pydicom-data, pydicom's
character set files) that the archive accepts is stored, its metadata part
read back, and our JSON compared with pydicom's over the same bytes, with
the same bulk-data threshold and URIs, modulo the differences
:mod:`engine.web.metajson` documents (normalised by :func:`normalise`).
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from engine.archive import Archive, open_archive
from engine.errors import EngineError, MalformedDicomError
from engine.web.metajson import BULK_INLINE_MAX, PIXEL_DATA, bulk_value, metadata_to_json
from tests.corpus import corpus_id, real_files
from tests.scan._support import charset_files
from tests.web._util import corpus_path

Stored = tuple[Archive, str] | EngineError
URL = "http://h/dicom-web/studies/1/series/2/instances/3"
STRIPPED = {"AE", "CS", "DA", "DT", "TM", "AS", "IS", "DS", "UI"}


def uri_for(path: list[str]) -> str:
    return f"{URL}/bulkdata/{'/'.join(path)}"


# -- pydicom's view, normalised ----------------------------------------------------


def reference(data: bytes, has_pixel: bool, *, with_pixels: bool = False) -> dict[str, Any]:
    """pydicom's to_json_dict of the metadata part, with our BulkDataURI paths."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stop = not (with_pixels or _deflated(data))
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop)
        out = _ref_dataset(ds, [])
        if has_pixel and PIXEL_DATA not in out:
            ts = UID(ds.file_meta.TransferSyntaxUID)
            bits = ds.get("BitsAllocated", 16)
            vr = "OB" if ts.is_compressed or ts.is_deflated or bits <= 8 else "OW"
            out[PIXEL_DATA] = {"vr": vr, "BulkDataURI": uri_for([PIXEL_DATA])}
    return out


def _deflated(data: bytes) -> bool:
    return b"1.2.840.10008.1.2.1.99" in data[:1024]


def _ref_dataset(ds: Dataset, path: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for elem in ds:
        key = f"{int(elem.tag):08X}"
        if elem.VR == "SQ":
            items = [_ref_dataset(item, [*path, key, str(i)]) for i, item in enumerate(elem.value)]
            out[key] = {"vr": "SQ", "Value": items}
            continue

        out[key] = elem.to_json_dict(functools.partial(_ref_uri, [*path, key]), 1024)
    return out


def _ref_uri(path: list[str], _elem: DataElement) -> str:
    return uri_for(path)


def normalise(doc: dict[str, Any]) -> dict[str, Any]:
    """The documented, standard-allowed differences folded away (both sides)."""
    out = {}
    for key, elem in doc.items():
        if key.endswith("0000"):  # group lengths
            continue
        elem = dict(elem)
        vr, values = elem["vr"], elem.get("Value")
        if vr == "SQ":
            values = [normalise(item) for item in values or []]
        elif values is not None:
            values = [_value(vr, v) for v in values]
        if not values or all(v is None for v in values):
            elem.pop("Value", None)
        else:
            elem["Value"] = values
        out[key] = elem
    return out


def _value(vr: str, v: Any) -> Any:
    if vr == "PN" and isinstance(v, dict):
        v = {k: g for k, g in v.items() if g}
        return v or None
    if isinstance(v, str):
        v = v.strip("\0 ") if vr in STRIPPED else v
        return v or None
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


# -- the corpus ----------------------------------------------------------------------


def _corpus() -> list[Path]:
    return [*real_files(), *charset_files()]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Stored]]:
    """Per corpus file name: (archive, SOP Instance UID), or the archive's reason to refuse it."""
    archive = open_archive(tmp_path_factory.mktemp("metajson") / "a", durability="none")
    out: dict[str, Stored] = {}
    for path in _corpus():
        try:
            result = archive.store(path.read_bytes())
        except EngineError as exc:
            out.setdefault(corpus_id(path), exc)
            continue
        out.setdefault(corpus_id(path), (archive, result.sop_instance_uid))
    yield out
    archive.close()


def test_corpus_is_large_enough(stored: dict[str, Stored]) -> None:
    accepted = [v for v in stored.values() if isinstance(v, tuple)]
    assert len(accepted) >= 150, f"only {len(accepted)} corpus files stored"


@pytest.mark.parametrize("path", _corpus(), ids=corpus_id)
def test_matches_pydicom(path: Path, stored: dict[str, Stored]) -> None:
    entry = stored[corpus_id(path)]
    if isinstance(entry, MalformedDicomError):  # cut short: no bytes pydicom and we agree on
        return
    if isinstance(entry, EngineError):  # refused (no UIDs: DICOMDIR...): encode the file itself
        data = path.read_bytes()
        ours, theirs = (
            metadata_to_json(data, False, uri_for),
            reference(data, False, with_pixels=True),
        )
        if "BulkDataURI" in ours.get(PIXEL_DATA, {}):  # encapsulated: always by reference
            theirs[PIXEL_DATA] = ours[PIXEL_DATA]
        assert normalise(ours) == normalise(theirs)
        return
    archive, sop = entry
    data, has_pixel = archive.read_metadata(sop)
    ours = metadata_to_json(data, has_pixel, uri_for)
    assert normalise(ours) == normalise(reference(data, has_pixel))
    for path in _bulk_paths(ours, []):  # every BulkDataURI handed out finds its value again
        assert bulk_value(data, path) == _pydicom_value(data, path), path


def _bulk_paths(doc: dict[str, Any], path: list[str]) -> Iterator[list[str]]:
    for key, elem in doc.items():
        if "BulkDataURI" in elem and key != PIXEL_DATA:
            yield [*path, key]
        for i, item in enumerate(elem.get("Value", []) if elem["vr"] == "SQ" else []):
            yield from _bulk_paths(item, [*path, key, str(i)])


def _pydicom_value(data: bytes, path: list[str]) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        current: Any = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        for i in range(0, len(path) - 1, 2):
            current = current[int(path[i], 16)].value[int(path[i + 1])]
        return bytes(current[int(path[-1], 16)].value)


# -- generated datasets --------------------------------------------------------------

_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\^="),
                min_size=1, max_size=12)  # fmt: skip


def _part10(ds: Dataset, syntax: str) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian,
               little_endian=syntax != ExplicitVRBigEndian)  # fmt: skip
    return buf.getvalue()


@st.composite
def datasets(draw: st.DrawFn) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "1.2.3.4"
    ds.PatientName = draw(st.lists(_text, min_size=1, max_size=3).map("^".join))
    ds.ImageType = draw(st.lists(st.from_regex(r"[A-Z0-9_ ]{1,16}", fullmatch=True), max_size=4))
    ds.SliceThickness = draw(st.floats(-1e6, 1e6, allow_nan=False).map(lambda f: f"{f:.6g}"))
    ds.InstanceNumber = draw(st.integers(-(2**31), 2**31 - 1))
    ds.Rows = draw(st.integers(0, 65535))
    ds.RealWorldValueFirstValueMapped = draw(st.integers(0, 65535))
    ds.FrameIncrementPointer = draw(st.sampled_from([0x00181063, 0x00181065]))
    ds.add_new(0x00189219, "FD", draw(st.lists(st.floats(allow_nan=False), max_size=4)))
    ds.add_new(0x00091001, "OB", draw(st.binary(max_size=2 * BULK_INLINE_MAX)))
    item = Dataset()
    item.CodeValue, item.CodeMeaning = draw(_text), draw(_text)
    ds.AnatomicRegionSequence = draw(st.sampled_from([[], [item], [item, item]]))
    return ds


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ds=datasets(), syntax=st.sampled_from(_SYNTAXES))
def test_generated_matches_pydicom(ds: Dataset, syntax: str) -> None:
    data = _part10(ds, syntax)
    ours = metadata_to_json(data, False, uri_for)
    assert normalise(ours) == normalise(reference(data, False))


def test_empty_values_and_nulls() -> None:
    ds = Dataset()
    ds.PatientName = ""
    ds.ImageType = ["A", "", "C"]
    ds.ReferencedImageSequence = []
    ours = metadata_to_json(_part10(ds, ExplicitVRLittleEndian), False, uri_for)
    assert ours["00100010"] == {"vr": "PN"}
    assert ours["00080008"] == {"vr": "CS", "Value": ["A", None, "C"]}
    assert ours["00081140"] == {"vr": "SQ"}


def test_bulk_threshold_and_inline() -> None:
    ds = Dataset()
    ds.add_new(0x00091001, "OB", b"\x01" * BULK_INLINE_MAX)
    ds.add_new(0x00091002, "OB", b"\x02" * (BULK_INLINE_MAX + 2))
    ours = metadata_to_json(_part10(ds, ExplicitVRLittleEndian), False, uri_for)
    assert "InlineBinary" in ours["00091001"]
    assert ours["00091002"]["BulkDataURI"] == uri_for(["00091002"])
    inline = metadata_to_json(_part10(ds, ExplicitVRLittleEndian), False, None)
    assert "InlineBinary" in inline["00091002"]


def _fuzz_bases() -> list[bytes]:
    charset = Path(pydicom.data.get_charset_files("chrSQEncoding.dcm")[0])
    return [corpus_path("rtplan.dcm").read_bytes(), charset.read_bytes(),
            corpus_path("image_dfl.dcm").read_bytes(),
            _part10(Dataset.from_json(_CT_JSON), ImplicitVRLittleEndian)]  # fmt: skip


_CT_JSON = {"00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Wang^XiaoDong"}]},
            "00280010": {"vr": "US", "Value": [512]}}  # fmt: skip
_BASES = _fuzz_bases()


@settings(max_examples=300, deadline=None)
@given(which=st.integers(0, len(_BASES) - 1), data=st.data())
def test_damaged_bytes_give_json_or_malformed_error(which: int, data: st.DataObject) -> None:
    """Whatever the bytes after the DICM prefix: an object, or MalformedDicomError (never a 500)."""
    raw = bytearray(_BASES[which])
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(132, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(132, len(raw)))
    try:
        out = metadata_to_json(bytes(raw[:cut]), True, uri_for)
    except MalformedDicomError:
        return
    assert isinstance(out, dict)
