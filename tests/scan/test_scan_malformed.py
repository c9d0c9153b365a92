"""Bad input: each case raises the same engine error, offset and reason in both backends."""

from __future__ import annotations

import zlib

import pytest

from engine.errors import MalformedDicomError, NotDicomError, UnsupportedTransferSyntaxError
from tests.scan._support import (
    SEQUENCE_END,
    UNDEFINED,
    ScanFn,
    element,
    file_meta,
    implicit,
    item,
    sq_nested,
)

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
NAME = element(0x00100010, "PN", b"Doe^John")  # 16 bytes


def _refused(scan: ScanFn, buffer: bytes, offset: int, reason: str, syntax: str = EXPLICIT) -> None:
    with pytest.raises(MalformedDicomError) as caught:
        scan(buffer, syntax)
    assert (caught.value.offset, caught.value.reason) == (offset, reason)


def test_value_length_past_end_of_buffer(scan: ScanFn) -> None:
    buffer = NAME + element(0x00100020, "LO", b"ID", length=100)
    _refused(scan, buffer, 16, "value of length 100 runs past the end of the buffer")


def test_long_vr_length_past_end_of_buffer(scan: ScanFn) -> None:
    buffer = NAME + element(0x7FE00010, "OW", b"\0" * 8, length=0x7FFFFFF0)
    _refused(scan, buffer, 16, f"value of length {0x7FFFFFF0} runs past the end of the buffer")


def test_implicit_length_past_end_of_buffer(scan: ScanFn) -> None:
    buffer = implicit(0x00100010, b"Doe^", length=0xFFFFFFF0)
    _refused(scan, buffer, 0, f"value of length {0xFFFFFFF0} runs past the end of the buffer",
             IMPLICIT)  # fmt: skip


def test_item_length_past_end_of_buffer(scan: ScanFn) -> None:
    buffer = element(0x00081140, "SQ", length=UNDEFINED) + item(b"\0" * 4, length=50)
    _refused(scan, buffer, 12, "value of length 50 runs past the end of the buffer")


def test_nesting_64_sequences_deep_is_accepted(scan: ScanFn) -> None:
    assert scan(sq_nested(64) + NAME, EXPLICIT).attributes == {"PatientName": "Doe^John"}


def test_nesting_65_sequences_deep_is_too_deep(scan: ScanFn) -> None:
    # each level is a 12-byte SQ header and an 8-byte item header
    _refused(scan, sq_nested(65), 64 * 20, "nesting too deep")


def test_nesting_thousands_deep_is_refused_without_recursion_error(scan: ScanFn) -> None:
    _refused(scan, sq_nested(5000), 64 * 20, "nesting too deep")


def test_sequence_without_delimiter(scan: ScanFn) -> None:
    buffer = NAME + element(0x00081140, "SQ", length=UNDEFINED) + item(NAME)
    _refused(scan, buffer, 16, "no Sequence Delimitation Item before end of buffer")


def test_item_without_delimiter(scan: ScanFn) -> None:
    buffer = element(0x00081140, "SQ", length=UNDEFINED) + item(NAME, length=UNDEFINED)
    _refused(scan, buffer, 12, "no Item Delimitation Item before end of buffer")


def test_encapsulated_pixel_data_without_delimiter(scan: ScanFn) -> None:
    buffer = NAME + element(0x7FE00010, "OB", length=UNDEFINED) + item() + item(b"\xff\xd8")
    _refused(scan, buffer, 16, "no Sequence Delimitation Item before end of buffer")


def test_truncated_element_header(scan: ScanFn) -> None:
    _refused(scan, NAME + b"\x10\x00\x20\x00L", 16, "truncated element header")


def test_truncated_long_vr_header(scan: ScanFn) -> None:
    # 8 bytes are there, but OB needs 12 (PS3.5 7.1.2)
    _refused(scan, NAME + b"\xe0\x7f\x10\x00OB\0\0\0\0", 16, "truncated element header")


def test_truncated_item_header(scan: ScanFn) -> None:
    buffer = element(0x00081140, "SQ", length=UNDEFINED) + b"\xfe\xff\x00\xe0"
    _refused(scan, buffer, 12, "truncated item header")


def test_truncated_header_inside_item(scan: ScanFn) -> None:
    buffer = element(0x00081140, "SQ", length=UNDEFINED) + item(length=UNDEFINED) + b"\x10\x00"
    _refused(scan, buffer, 20, "truncated element header")


def test_non_item_tag_inside_sequence(scan: ScanFn) -> None:
    buffer = element(0x00081140, "SQ", length=UNDEFINED) + NAME + SEQUENCE_END
    _refused(scan, buffer, 12, "expected an Item, found (0010,0010)")


def test_sequence_delimiter_inside_item(scan: ScanFn) -> None:
    buffer = element(0x00081140, "SQ", length=UNDEFINED) + item(length=UNDEFINED) + SEQUENCE_END
    _refused(scan, buffer, 20, "unexpected (FFFE,E0DD) inside an item")


def test_item_tag_at_top_level(scan: ScanFn) -> None:
    _refused(scan, NAME + item(b"xx"), 16, "unexpected (FFFE,E000) at top level")


def test_undefined_length_item_in_encapsulated_pixel_data(scan: ScanFn) -> None:
    buffer = element(0x7FE00010, "OB", length=UNDEFINED) + item() + item(length=UNDEFINED)
    _refused(scan, buffer, 20, "item of undefined length in encapsulated Pixel Data")


def test_non_item_in_encapsulated_pixel_data(scan: ScanFn) -> None:
    buffer = element(0x7FE00010, "OB", length=UNDEFINED) + item() + NAME
    _refused(scan, buffer, 20, "expected an Item, found (0010,0010)")


def test_undefined_length_in_file_meta(scan: ScanFn) -> None:
    buffer = b"\0" * 128 + b"DICM" + element(0x00020010, "UN", length=UNDEFINED)
    _refused(scan, buffer, 132, "undefined length in File Meta Information")


def test_truncated_file_meta(scan: ScanFn) -> None:
    buffer = file_meta(EXPLICIT) + b"\x02\x00\x12"
    _refused(scan, buffer, len(file_meta(EXPLICIT)), "truncated element header")


@pytest.mark.parametrize(
    "buffer",
    [b"", b"hello, world", b"\0" * 128 + b"DICX" + NAME, b"%PDF-1.7\n" + b"\0" * 300],
    ids=["empty", "text", "bad-prefix", "pdf"],
)
def test_not_dicom_without_transfer_syntax(scan: ScanFn, buffer: bytes) -> None:
    with pytest.raises(NotDicomError):
        scan(buffer)


def test_unknown_transfer_syntax_argument(scan: ScanFn) -> None:
    with pytest.raises(UnsupportedTransferSyntaxError) as caught:
        scan(NAME, "1.2.3.999")
    assert caught.value.uid == "1.2.3.999"


def test_unknown_transfer_syntax_in_file_meta(scan: ScanFn) -> None:
    with pytest.raises(UnsupportedTransferSyntaxError) as caught:
        scan(file_meta("1.2.3.4.5.6") + NAME, EXPLICIT)  # the File Meta Information wins
    assert caught.value.uid == "1.2.3.4.5.6"


def test_deflate_bomb_is_refused(scan: ScanFn) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = packer.compress(NAME + element(0x00091010, "OB", length=64 << 20)) + packer.compress(
        b"\0" * (64 << 20)
    ) + packer.flush()  # fmt: skip
    meta = file_meta("1.2.840.10008.1.2.1.99")
    cap = 64 * len(bomb) + (1 << 16)
    _refused(scan, meta + bomb, len(meta), f"deflated dataset inflates past {cap} bytes")


def test_invalid_deflate_stream(scan: ScanFn) -> None:
    meta = file_meta("1.2.840.10008.1.2.1.99")
    with pytest.raises(MalformedDicomError) as caught:
        scan(meta + b"\xff" * 64)
    assert caught.value.offset == len(meta)
    assert caught.value.reason.startswith("invalid deflate stream")


@pytest.mark.parametrize("cut", [0, 1, 8], ids=["empty", "one-byte", "eight-bytes"])
def test_cut_deflate_stream(scan: ScanFn, cut: int) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = packer.compress(NAME * 20) + packer.flush()
    meta = file_meta("1.2.840.10008.1.2.1.99")
    _refused(scan, meta + data[:cut], len(meta), "deflate stream ends before its final block")


def test_padding_after_deflate_stream_is_ignored(scan: ScanFn) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = packer.compress(NAME) + packer.flush()
    result = scan(file_meta("1.2.840.10008.1.2.1.99") + data + b"\0")
    assert result.deflated and result.attributes == {"PatientName": "Doe^John"}


def test_error_inside_deflated_dataset_counts_from_inflated_start(scan: ScanFn) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = packer.compress(NAME + element(0x00100020, "LO", b"ID", length=40)) + packer.flush()
    _refused(scan, file_meta("1.2.840.10008.1.2.1.99") + data, 16,
             "value of length 40 runs past the end of the buffer")  # fmt: skip
