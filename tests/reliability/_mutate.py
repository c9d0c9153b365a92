"""Malformed DICOM files, mutated from real ones (pydicom, pydicom-data) and generated CT.

:func:`malformed_files` is deterministic: the same seed gives the same
bytes. Each file is one mutation of one source, named after both. Some
mutations can leave a file valid (a bit flip in a pixel, a cut after the
last element); the tests accept a correct store for those.

The element walk (:func:`elements`) reads the top level of an Explicit VR
Little Endian data set only, which is what the targeted mutations need.
"""

from __future__ import annotations

import functools
import io
import random
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from engine.synthetic import ct_series, encode
from tests.corpus import real_files

EXPLICIT_LE = str(ExplicitVRLittleEndian)
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
            b"UT", b"UV"}  # fmt: skip
SOURCE_MAX_BYTES = 512 << 10  # keep the corpus part quick to mutate and to send
BOMB_INFLATED_BYTES = 256 << 20  # a deflated data set of 256 MiB of zeros: ~250 KiB on disk
UNDEFINED = 0xFFFFFFFF


@dataclass(frozen=True)
class Element:
    offset: int  # of the tag
    vr: bytes
    length_at: int  # where the length field starts
    length_bytes: int  # 2 or 4
    value_at: int
    length: int


@dataclass(frozen=True)
class Malformed:
    name: str
    data: bytes
    transfer_syntax: str  # what the source's File Meta said (before the mutation)


def fmi_end(data: bytes) -> int:
    """First byte after the File Meta Information (its group length says where)."""
    return 144 + int.from_bytes(data[140:144], "little")


def elements(data: bytes, start: int) -> list[Element]:
    """The top-level elements of an Explicit VR Little Endian data set from `start`."""
    out = []
    at = start
    while at + 8 <= len(data):
        vr = data[at + 4 : at + 6]
        if vr in LONG_VRS:
            (length,) = struct.unpack_from("<I", data, at + 8)
            el = Element(at, vr, at + 8, 4, at + 12, length)
        else:
            (length,) = struct.unpack_from("<H", data, at + 6)
            el = Element(at, vr, at + 6, 2, at + 8, length)
        out.append(el)
        if length == UNDEFINED:
            break  # an undefined-length sequence: the walk stops at the top level's first one
        at = el.value_at + length
    return out


def _set_length(data: bytes, el: Element, length: int) -> bytes:
    out = bytearray(data)
    fmt = "<I" if el.length_bytes == 4 else "<H"
    mask = 0xFFFFFFFF if el.length_bytes == 4 else 0xFFFF
    struct.pack_into(fmt, out, el.length_at, length & mask)
    return bytes(out)


# -- mutations: (rng, Part 10 bytes) -> bytes -------------------------------------------


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(0, len(data))]


def flip_bits(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(1, 17)):
        at = rng.randrange(128, len(out))
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def length_past_end(rng: random.Random, data: bytes) -> bytes:
    el = rng.choice(elements(data, fmi_end(data)) or elements(data, 132))
    limit = 0xFFFFFFFE if el.length_bytes == 4 else 0xFFFF
    return _set_length(data, el, rng.choice([limit, len(data), len(data) - el.value_at + 1]))


def undefined_length(rng: random.Random, data: bytes) -> bytes:
    """0xFFFFFFFF on an element that may not have it (a UI, a native OW, an UT)."""
    els = [e for e in elements(data, fmi_end(data)) if e.length_bytes == 4 and e.vr != b"SQ"]
    if not els:  # no long element: turn a short one into a long one with an undefined length
        el = rng.choice(elements(data, fmi_end(data)))
        out = bytearray(data)
        out[el.offset + 4 : el.offset + 6] = b"UT"
        header = bytes(out[: el.length_at]) + b"\0\0" + struct.pack("<I", UNDEFINED)
        return header + data[el.value_at :]
    return _set_length(data, rng.choice(els), UNDEFINED)


def bogus_vr(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        el = rng.choice(elements(data, fmi_end(data)))
        out[el.offset + 4 : el.offset + 6] = rng.choice([b"ZZ", b"\0\0", b"sq", b"\xff\xff", b"OX",
                                                         b"UN", b"SQ", b"OB"])  # fmt: skip
    return bytes(out)


def _nested(depth: int, delimited: bool) -> bytes:
    """A private sequence nested `depth` deep, undefined lengths, delimiters if `delimited`."""
    head = b"\x09\x00\x10\x10SQ\0\0" + struct.pack("<I", UNDEFINED)  # (0009,1010) SQ
    item = b"\xfe\xff\x00\xe0" + struct.pack("<I", UNDEFINED)  # (FFFE,E000) item
    end_item = b"\xfe\xff\x0d\xe0\0\0\0\0"
    end_seq = b"\xfe\xff\xdd\xe0\0\0\0\0"
    inner = head + item
    opening = inner * depth
    closing = (end_item + end_seq) * depth if delimited else b""
    return opening + closing


def _insert_after_group_8(data: bytes, extra: bytes) -> bytes:
    """Put `extra` between groups 0008 and 0010 (where a (0009,xxxx) belongs)."""
    for el in elements(data, fmi_end(data)):
        group = int.from_bytes(data[el.offset : el.offset + 2], "little")
        if group > 0x0009:
            return data[: el.offset] + extra + data[el.offset :]
    return data + extra


def deep_nesting(rng: random.Random, data: bytes) -> bytes:
    depth = rng.choice([65, 200, 1000, 20000])
    return _insert_after_group_8(data, _nested(depth, delimited=True))


def missing_delimiters(rng: random.Random, data: bytes) -> bytes:
    nested = _nested(rng.choice([1, 3, 10]), delimited=False)
    if rng.random() < 0.5:
        return data + nested  # runs to the end of the file
    return _insert_after_group_8(data, nested)  # swallows every element after it


def truncated_fmi(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(128, fmi_end(data))]


def wrong_group_length(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    real = int.from_bytes(data[140:144], "little")
    struct.pack_into("<I", out, 140, rng.choice([0, 1, real - 7, real + 13, len(data), UNDEFINED]))
    return bytes(out)


def bad_transfer_syntax(rng: random.Random, data: bytes) -> bytes:
    syntax = rng.choice(["1.2.3.4", "1.2.840.10008.1.2.4.999", "not a uid", "",
                         "1.2.840.10008.1.2.1" + "9" * 60])  # fmt: skip
    return _meta(data[: fmi_end(data)], syntax) + data[fmi_end(data) :]


def bad_uid(rng: random.Random, data: bytes) -> bytes:
    ds = _read(data)
    keyword = rng.choice(["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
    setattr(ds, keyword, rng.choice(["../../etc/passwd", "1.2.abc", "1." + "2" * 80, "",
                                     "1.2.3\x00.4", "01.2.3"]))  # fmt: skip
    return _write(ds)


def huge_image(rng: random.Random, data: bytes) -> bytes:
    ds = _read(data)
    ds.Rows = ds.Columns = rng.choice([65535, 40000, 1 << 15])
    if rng.random() < 0.5:
        ds.NumberOfFrames = rng.choice([1 << 20, 65535])
    return _write(ds)


def odd_value_lengths(rng: random.Random, data: bytes) -> bytes:
    els = [e for e in elements(data, fmi_end(data)) if e.length_bytes == 2 and e.length > 1]
    return _set_length(data, rng.choice(els), rng.choice([1, 3, 5]))


def not_dicom(rng: random.Random, data: bytes) -> bytes:
    return rng.choice([b"", b"DICM", bytes(132), bytes(128) + b"DICM", rng.randbytes(2000),
                       b"<html>not an image</html>", data[132:]])  # fmt: skip


def deflate_bomb(rng: random.Random, data: bytes) -> bytes:
    """Deflated Explicit VR Little Endian: a private OB of zeros far past the ratio we allow,
    or a deflate stream that is cut short or is not one."""
    return rng.choice(_deflated_variants(data[: fmi_end(data)]))


def _deflated_variants(fmi: bytes) -> list[bytes]:
    meta = _deflated_meta(fmi)
    body = _bomb_stream()
    return [meta + body, meta + body[: len(body) // 2], meta + bytes(range(256)) * 4,
            meta + zlib.compress(b"\x08\x00\x18\x00UI\x04\x001.2\0")[2:-4]]  # fmt: skip


@functools.cache
def _bomb_stream() -> bytes:
    element = b"\x09\x00\x10\x10OB\0\0" + struct.pack("<I", BOMB_INFLATED_BYTES)
    zip_ = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [zip_.compress(element)]
    zeros = bytes(1 << 20)
    for _ in range(BOMB_INFLATED_BYTES >> 20):
        chunks.append(zip_.compress(zeros))
    chunks.append(zip_.flush())
    return b"".join(chunks)


def _deflated_meta(fmi: bytes) -> bytes:
    return _meta(fmi, str(DeflatedExplicitVRLittleEndian))


def _meta(fmi: bytes, syntax: str) -> bytes:
    """The File Meta Information `fmi` (preamble included) with another transfer syntax."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = pydicom.filereader._read_file_meta_info(io.BytesIO(fmi[132:]))
        meta.TransferSyntaxUID = syntax
        buf = io.BytesIO()
        pydicom.filewriter.write_file_meta_info(buf, meta, enforce_standard=False)
    return bytes(128) + b"DICM" + buf.getvalue()


MUTATIONS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    f.__name__: f
    for f in (truncate, flip_bits, length_past_end, undefined_length, bogus_vr, deep_nesting,
              missing_delimiters, truncated_fmi, wrong_group_length, bad_transfer_syntax, bad_uid,
              huge_image, odd_value_lengths, not_dicom, deflate_bomb)
}  # fmt: skip
EXPLICIT_ONLY = {"length_past_end", "undefined_length", "bogus_vr", "deep_nesting",
                 "missing_delimiters", "odd_value_lengths"}  # fmt: skip
THROUGH_PYDICOM = {"bad_uid", "huge_image"}  # rewritten by pydicom: sources with a whole File Meta


# -- sources ----------------------------------------------------------------------


def _read(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), force=True)


def _write(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@functools.cache
def sources() -> tuple[tuple[str, bytes, str], ...]:
    """(name, Part 10 bytes, transfer syntax): generated CT, then small real files."""
    out = []
    for i, ds in enumerate(ct_series(4242, 6, rows=64, columns=64)):
        out.append((f"ct{i}", encode(ds), EXPLICIT_LE))
    for path in real_files():
        data = path.read_bytes()
        if len(data) > SOURCE_MAX_BYTES or data[128:132] != b"DICM":
            continue
        syntax = str(_read(data).file_meta.get("TransferSyntaxUID", ""))
        out.append((path.name, data, syntax))
    return tuple(out)


def malformed_files(seed: int, count: int) -> Iterator[Malformed]:
    """`count` malformed files, round-robin over the mutations, sources picked by the seed."""
    srcs = sources()
    explicit = [s for s in srcs if s[2] == EXPLICIT_LE]
    names = list(MUTATIONS)
    generated = [s for s in srcs if s[0].startswith("ct")]
    for i in range(count):
        rng = random.Random(seed * 1_000_003 + i)
        mutation = names[i % len(names)]
        pool = srcs
        if mutation in EXPLICIT_ONLY:
            pool = explicit
        if mutation in THROUGH_PYDICOM:
            pool = generated
        name, data, syntax = rng.choice(pool)
        with warnings.catch_warnings(), pydicom.config.disable_value_validation():
            warnings.simplefilter("ignore")
            mutated = MUTATIONS[mutation](rng, data)
        yield Malformed(f"{i:05d}-{mutation}-{Path(name).stem}", mutated, syntax)
