"""Helpers shared by the scanner tests: backends, outcomes, pydicom's view of a file."""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from engine.attributes import SCANNED
from engine.errors import EngineError
from engine.scan.result import ScanResult
from tests.conftest import native_module
from tests.corpus import real_files

ScanFn = Callable[..., ScanResult]

# Real files that pydicom reads leniently although they are cut short; the
# archive must refuse them (an acknowledged instance must be complete).
TRUNCATED = {
    "MR_truncated.dcm": (1488, "value of length 8192 runs past the end of the buffer"),
    "rtplan_truncated.dcm": (1410, "value of length 976 runs past the end of the buffer"),
    "emri_small_jpeg_2k_lossless_too_short.dcm": (
        2340,
        "no Sequence Delimitation Item before end of buffer",
    ),
}
NUMBER_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "US or SS"}


def scan_function(backend: str) -> ScanFn:
    """The scan function of `backend` ("native" or "python"), imported explicitly."""
    if backend == "native":
        module = native_module()
        assert module is not None
        return module.scan  # type: ignore[no-any-return]
    from engine.scan._scan_py import scan

    return scan


def charset_files() -> list[Path]:
    """pydicom's character set test files: real non-ASCII names in many encodings."""
    root = Path(pydicom.data.__file__).parent / "charset_files"
    return sorted(root.glob("*.dcm"))


def corpus() -> list[Path]:
    """Every real file the scanner must read: the shared corpus and the charset files."""
    return [*real_files(), *charset_files()]


def outcome(scan: ScanFn, buffer: bytes, transfer_syntax: str | None = None) -> tuple[str, ...]:
    """What `scan` does with `buffer`, comparable across backends (repr keeps NaN equal).

    Anything but an engine error propagates: that is a crash.
    """
    try:
        result = scan(buffer, transfer_syntax)
    except EngineError as exc:
        return (type(exc).__name__, str(getattr(exc, "offset", "")), str(exc))
    return ("ok", repr(result))


def components(value: str) -> str:
    """Each backslash-separated value stripped of padding, as pydicom strips them."""
    return "\\".join(part.strip(" \x00") for part in value.split("\\"))


def _text(value: Any) -> str:
    if isinstance(value, PersonName):
        return str(value)
    original = getattr(value, "original_string", None)
    if isinstance(original, bytes):
        return original.decode("latin-1")
    return str(original if original is not None else value)


def pydicom_attributes(ds: Dataset) -> dict[str, Any]:
    """The SCANNED attributes as pydicom reads them, normalised to the scanner's types."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom converts lazily, and warns on odd values
        return _pydicom_attributes(ds)


def _pydicom_attributes(ds: Dataset) -> dict[str, Any]:
    expected: dict[str, Any] = {}
    for attr in SCANNED:
        if attr.tag not in ds:
            continue
        elem = ds[attr.tag]
        value = elem.value
        if elem.VR in NUMBER_VRS:
            if value is None or value in (b"", ""):
                continue
            expected[attr.keyword] = tuple(value) if isinstance(value, MultiValue) else value
        elif elem.VR != "SQ":
            if value is None:
                expected[attr.keyword] = ""
            elif isinstance(value, MultiValue | list):
                expected[attr.keyword] = components("\\".join(_text(v) for v in value))
            else:
                expected[attr.keyword] = components(_text(value))
    return expected


def scanned_as_pydicom(result: ScanResult) -> dict[str, Any]:
    """The scanner's attributes with text normalised the way pydicom_attributes does."""
    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PersonName validates as it parses
        for keyword, value in result.attributes.items():
            out[keyword] = _normalised(keyword, value)
    return out


def _normalised(keyword: str, value: Any) -> Any:
    if isinstance(value, str):
        vr = next(a.vr for a in SCANNED if a.keyword == keyword)
        return components(str(PersonName(value)) if vr == "PN" else value)
    return value


@functools.cache
def read_with_pydicom(path: Path) -> Dataset:
    """pydicom's reading of a corpus file, warnings silenced (the corpus is what it is)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def write(ds: Dataset, syntax: str, *, with_fmi: bool = True) -> bytes:
    """`ds` encoded in transfer syntax `syntax`, as a Part 10 file or a bare dataset."""
    out = io.BytesIO()
    ds = ds.copy()
    if with_fmi:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.7")
        meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "1.2.3.4")
        meta.TransferSyntaxUID = syntax
        ds.file_meta = meta
        ds.save_as(out, enforce_file_format=True)
    else:
        ds.save_as(
            out,
            implicit_vr=syntax == "1.2.840.10008.1.2",
            little_endian=syntax != "1.2.840.10008.1.2.2",
        )
    return out.getvalue()


# -- hand-built encodings (PS3.5 7.1), for the malformed and edge-case tests ------

UNDEFINED = 0xFFFFFFFF
LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def _tag(tag: int, little: bool) -> bytes:
    order = "little" if little else "big"
    return (tag >> 16).to_bytes(2, order) + (tag & 0xFFFF).to_bytes(2, order)


def element(
    tag: int, vr: str, value: bytes = b"", *, length: int | None = None, little: bool = True
) -> bytes:
    """An Explicit VR element; `length` overrides the encoded length (UNDEFINED allowed)."""
    order = "little" if little else "big"
    size = len(value) if length is None else length
    if vr in LONG_VRS:
        return _tag(tag, little) + vr.encode() + b"\0\0" + size.to_bytes(4, order) + value
    return _tag(tag, little) + vr.encode() + size.to_bytes(2, order) + value


def implicit(tag: int, value: bytes = b"", *, length: int | None = None) -> bytes:
    """An Implicit VR Little Endian element."""
    size = len(value) if length is None else length
    return _tag(tag, True) + size.to_bytes(4, "little") + value


def item(content: bytes = b"", *, length: int | None = None, little: bool = True) -> bytes:
    """An Item (FFFE,E000); undefined length needs its own ITEM_END."""
    order = "little" if little else "big"
    size = len(content) if length is None else length
    return _tag(0xFFFEE000, little) + size.to_bytes(4, order) + content


ITEM_END = b"\xfe\xff\x0d\xe0\0\0\0\0"  # Item Delimitation Item, little endian
SEQUENCE_END = b"\xfe\xff\xdd\xe0\0\0\0\0"  # Sequence Delimitation Item, little endian


def file_meta(syntax: str, *, preamble: bool = True) -> bytes:
    """A minimal File Meta Information (PS3.10 7.1) declaring `syntax`."""
    uid = syntax.encode() + (b"\0" if len(syntax) % 2 else b"")
    body = element(0x00020001, "OB", b"\0\1")
    body += element(0x00020002, "UI", b"1.2.840.10008.5.1.4.1.1.7\0")
    body += element(0x00020003, "UI", b"1.2.3.4\0")
    body += element(0x00020010, "UI", uid)
    group = element(0x00020000, "UL", len(body).to_bytes(4, "little"))
    return (b"\0" * 128 + b"DICM" if preamble else b"") + group + body


def sq_nested(depth: int) -> bytes:
    """`depth` undefined-length sequences, each in an undefined-length item of the one above."""
    content = element(0x00100010, "PN", b"Deep")
    for _ in range(depth):
        content = (
            element(0x00081140, "SQ", length=UNDEFINED)
            + item(content, length=UNDEFINED)
            + ITEM_END
            + SEQUENCE_END
        )
    return content
