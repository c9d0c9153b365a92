"""The Specific Character Set of a C-FIND answer: the query's where the values fit, else UTF-8."""

from __future__ import annotations

import pytest
from pydicom.charset import convert_encodings, decode_bytes

from engine.net.charset import (
    answer_charset,
    encode_text,
    python_encodings,
    query_charset,
    query_text,
)

UTF8 = ("ISO_IR 192",)
JIS = ("", "ISO 2022 IR 87")
JAPANESE = "Yamada^Tarou=山田^太郎=やまだ^たろう"


def test_an_ascii_answer_to_a_query_without_a_charset_names_none() -> None:
    assert answer_charset(None, []) is None


def test_an_ascii_answer_names_the_query_charset() -> None:
    assert answer_charset(("ISO_IR 100",), []) == ("ISO_IR 100",)
    assert answer_charset(JIS, []) == JIS
    assert answer_charset(("",), []) == ("",)


def test_values_that_fit_the_query_charset_keep_it() -> None:
    assert answer_charset(("ISO_IR 100",), ["Buc^Jérôme"]) == ("ISO_IR 100",)
    assert answer_charset(JIS, [JAPANESE]) == JIS
    assert answer_charset(("GB18030",), [JAPANESE, "Buc^Jérôme"]) == ("GB18030",)


@pytest.mark.parametrize(
    ("query", "value"),
    [
        (None, "Buc^Jérôme"),  # no charset asked: UTF-8 for anything not ASCII
        (("ISO_IR 100",), JAPANESE),
        (JIS, "ﾔﾏﾀﾞ^ﾀﾛｳ"),  # half-width katakana: JIS X 0201, not JIS X 0208
        (JIS, "Buc^Jérôme"),  # the default repertoire is not Latin-1, whatever pydicom reads
        (("", "ISO 2022 IR 58"), "王^小东"),  # pydicom writes GB 2312 without ESC $ ) A
        (("ISO_IR 100", "NOT A CHARSET"), "Buc^Jérôme"),
        (("ISO_IR 192", "ISO 2022 IR 87"), JAPANESE),  # UTF-8 stands alone (PS3.3 C.12.1.1.2)
    ],
)
def test_values_that_do_not_fit_make_the_answer_utf8(
    query: tuple[str, ...] | None, value: str
) -> None:
    assert answer_charset(query, [value]) == UTF8


def test_an_unusable_query_charset_answers_ascii_as_the_default_repertoire() -> None:
    assert answer_charset(("NOT A CHARSET",), []) == ("",)
    assert python_encodings(("NOT A CHARSET",)) is None


def test_query_charset_terms() -> None:
    assert query_charset("ISO_IR 100") == ("ISO_IR 100",)
    assert query_charset(["", "ISO 2022 IR 87 "]) == JIS
    assert query_charset(None) == ("",) and query_charset("") == ("",)


@pytest.mark.parametrize(
    ("terms", "value", "vr"),
    [
        (JIS, JAPANESE, "PN"),
        (("ISO 2022 IR 13", "ISO 2022 IR 87"), "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう", "PN"),
        (("", "ISO 2022 IR 149"), "Hong^Gildong=洪^吉洞=홍^길동", "PN"),
        (("", "ISO 2022 IR 87", "ISO 2022 IR 159"), "Mori^Ogai=森^鷗外", "PN"),
        (("ISO_IR 100",), "Äneas^Rüdiger\\Buc^Jérôme", "PN"),
        (JIS, "CT 頭部\\単純", "LO"),
        (("ISO_IR 144",), "Люкceмбypг", "SH"),  # noqa: RUF001 -- the file's own mixed script
        (("GBK",), "王^小東", "PN"),
    ],
)
def test_encoded_text_decodes_back_in_its_charset(terms: tuple[str, ...], value: str,
                                                  vr: str) -> None:  # fmt: skip
    assert answer_charset(terms, [value]) == terms
    encodings = python_encodings(terms)
    assert encodings is not None
    raw = encode_text(value, vr, encodings)
    delimiters = {0x5C, 0x5E, 0x3D} if vr == "PN" else {0x5C}
    parts = [decode_bytes(p, convert_encodings(list(terms)), delimiters)
             for p in raw.split(b"\\")]  # fmt: skip
    assert "\\".join(parts) == value


def test_query_text_drops_what_pydicom_leaves_of_the_gb2312_escape() -> None:
    assert query_text("Wang^XiaoDong=\x1b$)A王^\x1b$)A小东") == "Wang^XiaoDong=王^小东"
    assert query_text("Doe^John") == "Doe^John"
