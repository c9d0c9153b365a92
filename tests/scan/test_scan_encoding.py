"""Valid but unusual encodings: each choice documented in engine/scan/_scan_py.py."""

from __future__ import annotations

import struct

import pytest

from engine.scan.result import PixelSpan
from tests.scan._support import (
    ITEM_END,
    SEQUENCE_END,
    UNDEFINED,
    ScanFn,
    element,
    file_meta,
    implicit,
    item,
)

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
BIG = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
NAME = element(0x00100010, "PN", b"Doe^John")
JIS_NAME = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B"  # PS3.5 H.3.1


def test_file_meta_without_preamble(scan: ScanFn) -> None:
    meta = file_meta(EXPLICIT, preamble=False)
    result = scan(meta + NAME)
    assert (result.fmi_start, result.dataset_start) == (0, len(meta))
    assert result.fmi["MediaStorageSOPInstanceUID"] == "1.2.3.4"
    assert result.attributes == {"PatientName": "Doe^John"}


def test_file_meta_transfer_syntax_wins_over_argument(scan: ScanFn) -> None:
    result = scan(file_meta(IMPLICIT) + implicit(0x00100010, b"Doe^John"), EXPLICIT)
    assert result.transfer_syntax == IMPLICIT
    assert result.attributes == {"PatientName": "Doe^John"}


@pytest.mark.parametrize(
    ("dataset", "syntax"),
    [(NAME, EXPLICIT), (implicit(0x00100010, b"Doe^John"), IMPLICIT)],
    ids=["explicit", "implicit"],
)
def test_file_meta_without_transfer_syntax_guesses_from_first_element(
    scan: ScanFn, dataset: bytes, syntax: str
) -> None:
    meta = b"\0" * 128 + b"DICM" + element(0x00020003, "UI", b"1.2.3.4\0")
    result = scan(meta + dataset)
    assert result.transfer_syntax == syntax
    assert result.attributes == {"PatientName": "Doe^John"}


def test_declared_implicit_but_explicit_first_element_is_read_explicit(scan: ScanFn) -> None:
    assert scan(NAME, IMPLICIT).attributes == {"PatientName": "Doe^John"}


def test_odd_length_values_are_accepted(scan: ScanFn) -> None:
    buffer = element(0x00100010, "PN", b"Doe") + element(0x00100020, "LO", b"ID1")
    assert scan(buffer, EXPLICIT).attributes == {"PatientName": "Doe", "PatientID": "ID1"}


def test_unknown_two_letter_vr_has_a_16_bit_length(scan: ScanFn) -> None:
    buffer = element(0x00091010, "XX", b"abcd") + NAME
    assert scan(buffer, EXPLICIT).attributes == {"PatientName": "Doe^John"}


def test_unknown_vr_on_scanned_tag_uses_dictionary_vr(scan: ScanFn) -> None:
    assert scan(element(0x00280010, "XX", b"\x00\x02"), EXPLICIT).attributes == {"Rows": 512}


def test_element_without_vr_in_explicit_item_is_read_implicit(scan: ScanFn) -> None:
    inner = implicit(0x00100010, b"Nested^Name")
    buffer = element(0x00081140, "SQ", length=UNDEFINED) + item(inner, length=UNDEFINED)
    buffer += ITEM_END + SEQUENCE_END + NAME
    assert scan(buffer, EXPLICIT).attributes == {"PatientName": "Doe^John"}


def test_undefined_length_un_holds_implicit_little_endian_items(scan: ScanFn) -> None:
    inner = implicit(0x00100010, b"Nested") + implicit(0x00081140, length=UNDEFINED)
    inner += item(implicit(0x00100020, b"X1"), length=UNDEFINED) + ITEM_END + SEQUENCE_END
    un = element(0x00091010, "UN", length=UNDEFINED, little=False)
    buffer = un + item(inner, length=UNDEFINED) + ITEM_END + SEQUENCE_END
    buffer += element(0x00280010, "US", b"\x02\x00", little=False)
    assert scan(buffer, BIG).attributes == {"Rows": 512}


def test_un_encoded_scanned_attribute_uses_dictionary_vr(scan: ScanFn) -> None:
    buffer = element(0x00100010, "UN", b"Doe^John") + element(0x00280011, "UN", b"\x00\x01")
    assert scan(buffer, EXPLICIT).attributes == {"PatientName": "Doe^John", "Columns": 256}


def test_attributes_inside_sequences_are_not_scanned(scan: ScanFn) -> None:
    defined = element(0x00081140, "SQ", item(element(0x00100020, "LO", b"IN")))
    undefined = element(0x00081150, "SQ", length=UNDEFINED) + item(NAME) + SEQUENCE_END
    assert scan(defined + undefined, EXPLICIT).attributes == {}


def test_empty_text_is_empty_and_empty_binary_is_left_out(scan: ScanFn) -> None:
    buffer = element(0x00100010, "PN") + element(0x00280010, "US")
    assert scan(buffer, EXPLICIT).attributes == {"PatientName": ""}


def test_binary_value_of_wrong_size_is_left_out(scan: ScanFn) -> None:
    assert scan(element(0x00280010, "US", b"\x01\x02\x03"), EXPLICIT).attributes == {}


def test_multiple_binary_values_give_a_tuple(scan: ScanFn) -> None:
    buffer = element(0x00280010, "US", struct.pack("<3H", 1, 2, 65535))
    assert scan(buffer, EXPLICIT).attributes == {"Rows": (1, 2, 65535)}


@pytest.mark.parametrize(
    ("vr", "raw", "value"),
    [
        ("SS", struct.pack(">h", -2), -2),
        ("UL", struct.pack(">I", 4000000000), 4000000000),
        ("SL", struct.pack(">i", -7), -7),
        ("FL", struct.pack(">f", 1.5), 1.5),
        ("FD", struct.pack(">2d", 0.1, -2.5), (0.1, -2.5)),
    ],
)
def test_big_endian_numbers(scan: ScanFn, vr: str, raw: bytes, value: object) -> None:
    buffer = element(0x00280010, vr, raw, little=False)  # encoded VR wins over the dictionary's
    assert scan(buffer, BIG).attributes == {"Rows": value}


def test_text_padding_is_stripped(scan: ScanFn) -> None:
    buffer = element(0x00080016, "UI", b"1.2.3\0") + element(0x00100020, "LO", b"  A\\B ")
    attributes = scan(buffer, EXPLICIT).attributes
    assert attributes == {"SOPClassUID": "1.2.3", "PatientID": "A\\B"}


def test_last_of_duplicate_tags_wins(scan: ScanFn) -> None:
    buffer = NAME + element(0x00100010, "PN", b"Roe^Jane")
    assert scan(buffer, EXPLICIT).attributes == {"PatientName": "Roe^Jane"}


@pytest.mark.parametrize(
    ("charset", "raw", "text"),
    [
        (b"ISO_IR 100", "Müller^Jürgen".encode("latin-1"), "Müller^Jürgen"),
        (b"ISO_IR 192", "王^小東".encode(), "王^小東"),
        (b"ISO_IR 144", "Люкceмбypг".encode("iso8859-5"), "Люкceмбypг"),  # noqa: RUF001
        (b"\\ISO 2022 IR 87", JIS_NAME, "Yamada^Tarou=山田^太郎"),
        # PS3.5 H.3.2 / I.2 / K.2: JIS X 0212, KS X 1001 and GB 2312 as ISO 2022 extensions
        (b"\\ISO 2022 IR 87\\ISO 2022 IR 159",
         b"Mori^Ogai=\x1b$B?9\x1b(B^\x1b$(Dl?\x1b$B30\x1b(B", "Mori^Ogai=森^鷗外"),
        (b"\\ISO 2022 IR 149", b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7",
         "Hong^Gildong=洪^吉洞"),
        # pydicom keeps ESC $ ) A in the text it decodes: the index must not
        (b"\\ISO 2022 IR 58", b"Wang^XiaoDong=\x1b$)A\xcd\xf5^\x1b$)A\xd0\xa1\xb6\xab",
         "Wang^XiaoDong=王^小东"),
        (b"GBK", "Wang^XiaoDong=王^小東".encode("gbk"), "Wang^XiaoDong=王^小東"),
        (b"GB18030", "Wang^XiaoDong=王^小东".encode("gb18030"), "Wang^XiaoDong=王^小东"),
    ],
    ids=["latin1", "utf8", "cyrillic", "iso2022-jis", "iso2022-jis-x-0212", "iso2022-ks-x-1001",
         "iso2022-gb2312", "gbk", "gb18030"],
)  # fmt: skip
def test_text_is_decoded_in_specific_character_set(
    scan: ScanFn, charset: bytes, raw: bytes, text: str
) -> None:
    buffer = element(0x00080005, "CS", charset) + element(0x00100010, "PN", raw)
    assert scan(buffer, EXPLICIT).attributes["PatientName"] == text


def test_group_length_and_private_elements_are_skipped(scan: ScanFn) -> None:
    buffer = element(0x00080000, "UL", b"\0\0\0\0") + element(0x00090010, "LO", b"ACME")
    buffer += element(0x00091001, "OB", b"\xde\xad") + NAME
    assert scan(buffer, EXPLICIT).attributes == {"PatientName": "Doe^John"}


def test_padding_after_pixel_data_is_allowed(scan: ScanFn) -> None:
    pixel = element(0x7FE00010, "OW", b"\1\0\2\0")
    buffer = NAME + pixel + element(0xFFFCFFFC, "OB", b"\0" * 6)
    assert scan(buffer, EXPLICIT).pixel == PixelSpan(16, 28, 32, False)


def test_float_pixel_data_is_not_pixel_data(scan: ScanFn) -> None:
    buffer = element(0x7FE00008, "OF", b"\0" * 8) + element(0x7FE00009, "OD", b"\0" * 8)
    assert scan(buffer, EXPLICIT).pixel is None


def test_pixel_data_inside_a_sequence_is_not_pixel_data(scan: ScanFn) -> None:
    icon = element(0x7FE00010, "OB", length=UNDEFINED) + item() + item(b"ab") + SEQUENCE_END
    buffer = element(0x00880200, "SQ", length=UNDEFINED) + item(icon, length=UNDEFINED)
    assert scan(buffer + ITEM_END + SEQUENCE_END, EXPLICIT).pixel is None


def _encapsulated(fragments: list[bytes], bot: bytes = b"") -> bytes:
    body = item(bot) + b"".join(item(f) for f in fragments) + SEQUENCE_END
    return element(0x7FE00010, "OB", length=UNDEFINED) + body


def _frames_count(n: int) -> bytes:
    text = str(n).encode()
    return element(0x00280008, "IS", text + b" " * (len(text) % 2))


def _bot(offsets: list[int]) -> bytes:
    return struct.pack(f"<{len(offsets)}I", *offsets)


FRAGMENTS = [b"\xff\xd8ab", b"cd\xff\xd9", b"\xff\xd8ef", b"gh\xff\xd9"]  # 2 JPEG frames


def test_fragments_and_end_of_encapsulated_pixel_data(scan: ScanFn) -> None:
    buffer = _encapsulated(FRAGMENTS)
    span = scan(buffer, JPEG_BASELINE).pixel
    assert span is not None and span.encapsulated
    assert span.end == len(buffer)
    assert [buffer[o : o + n] for o, n in span.fragments] == FRAGMENTS


def test_frames_from_basic_offset_table(scan: ScanFn) -> None:
    buffer = _frames_count(2) + _encapsulated(FRAGMENTS, _bot([0, 24]))
    span = scan(buffer, JPEG_BASELINE).pixel
    assert span is not None and span.frames == [(0, 2), (2, 2)]


def test_frames_from_extended_offset_table_win(scan: ScanFn) -> None:
    eot = element(0x7FE00001, "OV", struct.pack("<3Q", 0, 12, 24))
    lengths = element(0x7FE00002, "OV", struct.pack("<3Q", 4, 4, 8))
    buffer = _frames_count(3) + eot + lengths + _encapsulated(FRAGMENTS, _bot([0, 24]))
    span = scan(buffer, JPEG_BASELINE).pixel
    assert span is not None and span.frames == [(0, 1), (1, 1), (2, 2)]


def test_offset_table_off_fragment_boundaries_is_ignored(scan: ScanFn) -> None:
    buffer = _frames_count(4) + _encapsulated(FRAGMENTS, _bot([0, 13]))
    span = scan(buffer, JPEG_BASELINE).pixel
    assert span is not None and span.frames == [(0, 1), (1, 1), (2, 1), (3, 1)]


def test_one_frame_per_fragment_when_counts_match(scan: ScanFn) -> None:
    span = scan(_frames_count(4) + _encapsulated(FRAGMENTS), "1.2.840.10008.1.2.5").pixel
    assert span is not None and span.frames == [(0, 1), (1, 1), (2, 1), (3, 1)]


def test_single_frame_takes_every_fragment(scan: ScanFn) -> None:
    span = scan(_encapsulated(FRAGMENTS), JPEG_BASELINE).pixel
    assert span is not None and span.frames == [(0, 4)]


def test_jpeg_frames_split_at_end_of_image_markers(scan: ScanFn) -> None:
    span = scan(_frames_count(2) + _encapsulated(FRAGMENTS), JPEG_BASELINE).pixel
    assert span is not None and span.frames == [(0, 2), (2, 2)]


def test_non_jpeg_multiframe_without_table_is_one_frame(scan: ScanFn) -> None:
    span = scan(_frames_count(2) + _encapsulated(FRAGMENTS), "1.2.840.10008.1.2.5").pixel
    assert span is not None and span.frames == [(0, 4)]


def test_buffer_types_give_the_same_result(scan: ScanFn) -> None:
    buffer = file_meta(EXPLICIT) + NAME + element(0x7FE00010, "OW", b"\0" * 8)
    expected = scan(buffer)
    assert scan(bytearray(buffer)) == expected
    assert scan(memoryview(buffer)) == expected
