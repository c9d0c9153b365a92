"""engine.storage.format: every field of the headers round-trips; every kind of damage is named."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.storage import format as F
from engine.storage.format import RecordHeader, pack_record_header, unpack_record_header

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
UIDS = st.text(st.sampled_from("0123456789."), min_size=1, max_size=F.UID_MAX_LEN)


def header(**changes: int) -> RecordHeader:
    fields = dict(
        kind=F.KIND_INSTANCE,
        meta_codec=F.CODEC_ZSTD,
        pixel_codec=F.CODEC_RAW,
        uid_len=7,
        flags=F.FLAG_DEFLATED,
        meta_stored=1000,
        meta_raw=2000,
        pixel_stored=3000,
        pixel_raw=3000,
        fmi_len=200,
        pixel_at=900,
        stored_at_ns=1_700_000_000_000_000_000,
        meta_crc=0x12345678,
        pixel_crc=0x9ABCDEF0,
    )
    fields.update(changes)
    return RecordHeader(**fields)


@given(
    kind=st.sampled_from([F.KIND_INSTANCE, F.KIND_TOMBSTONE]),
    meta_codec=st.sampled_from(F.CODECS),
    pixel_codec=st.sampled_from(F.CODECS),
    flags=st.integers(0, 255),
    meta_stored=U32,
    meta_raw=U32,
    pixel_stored=U64,
    pixel_raw=U64,
    fmi_len=U32,
    pixel_at=U32,
    stored_at_ns=U64,
    meta_crc=U32,
    pixel_crc=U32,
    uid=UIDS,
)
def test_record_header_round_trips_every_field(uid: str, **fields: int) -> None:
    h = RecordHeader(uid_len=len(uid), **fields)
    packed = pack_record_header(h, uid.encode())
    assert len(packed) == F.RECORD_HEADER.size + len(uid)
    assert packed[:4] == F.RECORD_MAGIC
    back, back_uid = unpack_record_header(packed + b"trailing bytes are the record's parts")
    assert back == h
    assert back_uid == uid.encode()
    assert back.meta_span == F.RECORD_HEADER.size + len(uid) + h.meta_stored
    assert back.total == back.meta_span + h.pixel_stored


def test_header_layout_is_pinned() -> None:
    # docs/format.md describes these offsets; a change must bump FORMAT_VERSION
    assert F.RECORD_HEADER.size == 64 and F.SEGMENT_HEADER.size == 16
    packed = pack_record_header(header(), b"1.2.3.4")
    assert packed[4] == F.FORMAT_VERSION
    assert struct.unpack_from("<Q", packed, 44)[0] == header().stored_at_ns
    assert struct.unpack_from("<I", packed, 60)[0] == F.crc32c(packed[64:], F.crc32c(packed[:60]))


def test_segment_header_round_trips() -> None:
    for seg_id in (1, 42, 2**32 - 1):
        packed = F.pack_segment_header(seg_id)
        assert len(packed) == 16 and packed.startswith(F.SEGMENT_MAGIC)
        assert F.unpack_segment_header(packed) == (F.FORMAT_VERSION, seg_id)


def test_bad_segment_magic_is_reported() -> None:
    packed = bytearray(F.pack_segment_header(3))
    packed[0] ^= 0xFF
    with pytest.raises(ValueError, match="segment magic"):
        F.unpack_segment_header(bytes(packed))
    with pytest.raises(ValueError, match="truncated"):
        F.unpack_segment_header(F.pack_segment_header(3)[:10])


def test_segment_from_a_future_version_is_refused() -> None:
    packed = F.SEGMENT_HEADER.pack(F.SEGMENT_MAGIC, F.FORMAT_VERSION + 1, 3)
    with pytest.raises(ValueError, match="version"):
        F.unpack_segment_header(packed)


def _damaged(offset: int) -> bytes:
    packed = bytearray(pack_record_header(header(), b"1.2.3.4"))
    packed[offset] ^= 0x01
    return bytes(packed)


def test_bad_record_magic_is_reported() -> None:
    with pytest.raises(ValueError, match="magic"):
        unpack_record_header(_damaged(0))


def test_bad_record_version_is_reported() -> None:
    with pytest.raises(ValueError, match="version"):
        unpack_record_header(_damaged(4))


@pytest.mark.parametrize("offset", [5, 9, 12, 20, 40, 48, 52, 56, 60, 63, 64, 70])
def test_header_checksum_catches_any_flipped_byte(offset: int) -> None:
    # every field after the version, the stored checksum itself, and the UID
    with pytest.raises(ValueError, match=r"checksum|UID length|out of range"):
        unpack_record_header(_damaged(offset))


def test_every_single_bit_flip_in_a_header_is_caught() -> None:
    good = pack_record_header(header(), b"1.2.3.4")
    for offset in range(len(good)):
        for bit in range(8):
            bad = bytearray(good)
            bad[offset] ^= 1 << bit
            with pytest.raises(ValueError):
                unpack_record_header(bytes(bad))


def test_unknown_kind_and_codec_are_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        unpack_record_header(pack_record_header(header(kind=9), b"1.2.3.4"))
    with pytest.raises(ValueError, match="codec"):
        unpack_record_header(pack_record_header(header(pixel_codec=7), b"1.2.3.4"))


def test_short_input_is_refused() -> None:
    good = pack_record_header(header(), b"1.2.3.4")
    with pytest.raises(ValueError, match="truncated"):
        unpack_record_header(good[:63])
    with pytest.raises(ValueError, match="UID truncated"):
        unpack_record_header(good[:66])


def test_uid_length_is_bounded() -> None:
    with pytest.raises(AssertionError):
        pack_record_header(header(uid_len=65), b"1" * 65)
    raw = bytearray(pack_record_header(header(), b"1.2.3.4"))
    raw[8] = 0  # uid_len 0: refused before the checksum is even computed
    with pytest.raises(ValueError, match="UID length"):
        unpack_record_header(bytes(raw))


def test_crc32c_is_castagnoli() -> None:
    assert F.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert F.crc32c(b"6789", F.crc32c(b"12345")) == 0xE3069283
