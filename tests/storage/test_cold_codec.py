"""Compression at rest: 16-bit native pixels recompressed as byte planes, bit-exact back."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

import engine
from engine import codec
from engine.storage.format import CODEC_RAW, CODEC_ZSTD, CODEC_ZSTD_PLANES16
from tests.corpus import real_files

EXPLICIT, JPEG_BASELINE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"


@given(st.binary(max_size=4096).filter(lambda b: len(b) % 2 == 0))
def test_planes_round_trip_any_even_bytes(data: bytes) -> None:
    planes = codec.planes16(data)
    assert planes[: len(data) // 2] == data[0::2] and planes[len(data) // 2 :] == data[1::2]
    assert codec.interleave16(planes) == data
    stored = codec.encode(data, CODEC_ZSTD_PLANES16)
    assert codec.decode(stored, CODEC_ZSTD_PLANES16, len(data)) == data


def test_odd_lengths_and_a_lying_header_are_refused() -> None:
    with pytest.raises(ValueError, match="16-bit"):
        codec.planes16(b"abc")
    stored = codec.encode(b"\x01\x02" * 100, CODEC_ZSTD_PLANES16)
    for wrong in (202, 100):
        with pytest.raises(ValueError, match="header says"):
            codec.decode(stored, CODEC_ZSTD_PLANES16, wrong)


@pytest.mark.parametrize(("syntax", "bits", "length", "expected"), [
    (EXPLICIT, 16, 512, CODEC_ZSTD_PLANES16),
    (EXPLICIT, "16", 512, CODEC_ZSTD_PLANES16),
    (EXPLICIT, 8, 512, CODEC_ZSTD),       # 8-bit samples lose by planes
    (EXPLICIT, 32, 512, CODEC_ZSTD),
    (EXPLICIT, None, 512, CODEC_ZSTD),    # unknown: plain zstd, always safe
    (EXPLICIT, 16, 511, CODEC_ZSTD),
    (JPEG_BASELINE, 16, 512, CODEC_RAW),  # compressed already
])  # fmt: skip
def test_the_cold_codec_follows_the_samples(syntax: str, bits: object, length: int,
                                            expected: int) -> None:  # fmt: skip
    assert codec.cold_pixel_codec(syntax, bits, length) == expected


def test_compaction_gives_every_real_file_back_bit_exact(tmp_path: Path) -> None:
    """pydicom's and pydicom-data's files, stored, compacted (planes for the 16-bit ones,
    plain zstd for the rest), read back byte for byte."""
    stored: dict[str, bytes] = {}
    with engine.open_archive(tmp_path / "a", segment_max_bytes=1 << 20) as archive:
        for path in real_files():
            data = path.read_bytes()
            try:
                uid = archive.store(data).sop_instance_uid
            except engine.errors.InvalidInstanceError:
                continue  # refused with a reason (tests/reliability covers those)
            stored[uid] = archive.get(uid)
        archive.compact()
        codecs = {_pixel_codec(archive, uid) for uid in stored}
        for uid, data in stored.items():
            assert archive.get(uid) == data, uid
        assert archive.verify().ok
    assert len(stored) > 50
    assert {CODEC_ZSTD_PLANES16, CODEC_ZSTD} <= codecs


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "emri_small.dcm"])
def test_planes_store_real_16_bit_images_smaller_than_plain_zstd(tmp_path: Path,
                                                                 name: str) -> None:  # fmt: skip
    path = Path(str(get_testdata_file(name)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pixels = pydicom.dcmread(path).PixelData
    plain = len(zstandard.ZstdCompressor(level=codec.COLD_ZSTD_LEVEL).compress(pixels))
    with engine.open_archive(tmp_path, segment_max_bytes=1 << 16) as archive:
        uid = archive.store(path).sop_instance_uid
        archive.compact()
        header = _header(archive, uid)
        assert header.pixel_codec == CODEC_ZSTD_PLANES16
        assert header.pixel_stored < plain * 0.9
        assert archive.get(uid)[128:] == path.read_bytes()[128:]


def _header(archive: engine.Archive, uid: str) -> engine.storage.format.RecordHeader:
    loc = archive._locate(uid)
    return archive.reader.read_record(loc.segment_id, loc.offset, loc.total,
                                      with_pixel=False).header  # fmt: skip


def _pixel_codec(archive: engine.Archive, uid: str) -> int:
    return _header(archive, uid).pixel_codec
