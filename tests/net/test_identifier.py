"""C-FIND answers encoded from index values: byte for byte what the Dataset path encoded,
and what :class:`AnswerEncoder` writes without a Dataset: byte for byte the same again."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.dsutils import encode

from engine.archive import Archive
from engine.errors import InvalidInstanceError
from engine.net.find import PATIENT_ROOT_LEVELS, Identifier, answer, local_values
from engine.net.identifier import AnswerEncoder, Encoding, answer_dataset, is_text, text_value
from engine.search import find_rows
from engine.synthetic import ct_series
from engine.synthetic import encode as encode_instance
from tests.charset_corpus import CharsetFile, charset_files
from tests.corpus import real_files

ENCODINGS = {"implicit_le": (True, True), "explicit_le": (False, True),
             "explicit_be": (False, False)}  # fmt: skip
KEYS = {
    "PATIENT": ["PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                "IssuerOfPatientID", "NumberOfPatientRelatedStudies",
                "NumberOfPatientRelatedInstances"],
    "STUDY": ["PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyTime",
              "AccessionNumber", "StudyID", "StudyDescription", "ReferringPhysicianName",
              "ModalitiesInStudy", "SOPClassesInStudy", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances"],
    "SERIES": ["StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber",
               "SeriesDescription", "BodyPartExamined", "NumberOfSeriesRelatedInstances"],
    "IMAGE": ["SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "InstanceNumber", "Rows",
              "Columns", "NumberOfFrames", "TransferSyntaxUID", "PhotometricInterpretation"],
}  # fmt: skip
LOCAL = ["RetrieveAETitle", "InstanceAvailability", "SpecificCharacterSet"]
UNKNOWN = {"OperatorsName": "", "PatientComments": ""}  # not indexed: returned empty


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """The pydicom corpus (several character sets) and a generated CT series."""
    a = Archive(tmp_path_factory.mktemp("identifier") / "archive")
    for path in real_files():
        try:
            a.store(Path(path).read_bytes())
        except InvalidInstanceError:
            continue  # the corpus holds files without the UIDs an archive needs
    for data in ct_series(7, 3, rows=16, columns=16):
        a.store(data)
    for n, (charset, name) in enumerate([("ISO_IR 100", "Müller^Jürgen"),
                                         ("ISO_IR 192", "Ærøskøbing^Åse")]):  # fmt: skip
        a.store(_renamed(next(ct_series(8 + n, 1, rows=16, columns=16)), charset, name))
    yield a
    a.close()


def _renamed(ds: Dataset, charset: str, name: str) -> bytes:
    """A generated slice of a new patient whose name is not ASCII, in `charset`."""
    ds.SpecificCharacterSet = charset
    ds.PatientName, ds.PatientID = name, f"NONASCII-{charset}"
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, generate_uid())
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return encode_instance(ds)


def _identifier(level: str) -> Identifier:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword in [*KEYS[level], *LOCAL, *UNKNOWN]:
        setattr(ds, keyword, None)  # universal matching: return the key
    return Identifier(ds, PATIENT_ROOT_LEVELS)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("level", PATIENT_ROOT_LEVELS)
def test_encoded_answers_equal_the_dataset_path(archive: Archive, level: str,
                                                encoding: str) -> None:  # fmt: skip
    implicit, little = ENCODINGS[encoding]
    ident = _identifier(level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom validates odd stored values (1997.04.24)
        reference = [encode(answer(match, ident, "PACS"), implicit, little)
                     for match in archive.find(ident.level, ident.query)]  # fmt: skip
    columns, rows = find_rows(archive, ident.level, ident.query)
    local = local_values(ident, "PACS")
    ours = [encode(answer_dataset(columns, attrs, level, local, ident.unknown,
                                  Encoding(implicit, little), ident.charset), implicit, little)
            for attrs in rows]  # fmt: skip
    assert len(reference) >= 3
    assert ours == reference


def test_non_ascii_values_make_the_answer_utf8(archive: Archive) -> None:
    ident = _identifier("PATIENT")
    columns, rows = find_rows(archive, ident.level, ident.query)
    local = local_values(ident, "PACS")
    answers = [answer_dataset(columns, attrs, "PATIENT", local, [], Encoding(False, True))
               for attrs in rows]  # fmt: skip
    utf8 = [ds for ds in answers if ds.get("SpecificCharacterSet") == "ISO_IR 192"]
    assert utf8, "the corpus has patients with non-ASCII names"
    assert sorted(str(ds.PatientName) for ds in utf8) == ["Müller^Jürgen", "Ærøskøbing^Åse"]
    assert all("SpecificCharacterSet" not in ds for ds in answers if ds not in utf8)


def test_text_values_are_padded_to_even_length() -> None:
    assert text_value("1.2.3", "UI", "ascii") == b"1.2.3\0"
    assert text_value("ABC", "CS", "ascii") == b"ABC "
    assert text_value(12, "IS", "ascii") == b"12"
    assert text_value("Müller", "PN", "utf-8") == "Müller ".encode()
    assert text_value(None, "LO", "ascii") == b""


def test_only_text_values_take_the_raw_path() -> None:
    assert is_text("CT", "CS") and is_text(3, "IS") and is_text(None, "DA")
    assert is_text(None, "US")  # empty
    assert not is_text(512, "US")  # binary: pydicom encodes it in the context's byte order
    assert not is_text(1.5, "DS") and not is_text(True, "IS") and not is_text(None, "SQ")
    assert not is_text(None, "US or SS")


# -- the answer's character set (PS3.5 6.1): pydicom's Dataset writer is the reference ---------

QUERY_CHARSETS = [None, ("",), ("ISO_IR 100",), ("", "ISO 2022 IR 87"),
                  ("ISO 2022 IR 13", "ISO 2022 IR 87"), ("", "ISO 2022 IR 149"), ("GB18030",),
                  ("", "ISO 2022 IR 58"), ("ISO_IR 192",)]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[CharsetFile]:
    return charset_files(tmp_path_factory.mktemp("charset_files"))


@pytest.fixture(scope="module")
def charset_archive(
    tmp_path_factory: pytest.TempPathFactory, corpus: list[CharsetFile]
) -> Iterator[Archive]:
    """Every file of tests.charset_corpus, in its own character set."""
    a = Archive(tmp_path_factory.mktemp("charset_archive") / "archive")
    for f in corpus:
        a.store(f.path.read_bytes())
    yield a
    a.close()


def _charset_identifier(level: str, charset: tuple[str, ...] | None) -> Identifier:
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = list(charset) if len(charset) > 1 else charset[0]
    ds.QueryRetrieveLevel = level
    for keyword in KEYS[level]:
        setattr(ds, keyword, None)
    return Identifier(ds, PATIENT_ROOT_LEVELS)


@pytest.mark.parametrize("charset", QUERY_CHARSETS, ids=str)
@pytest.mark.parametrize("level", ["PATIENT", "STUDY"])
def test_answers_in_the_query_charset_equal_the_dataset_path(
    charset_archive: Archive, corpus: list[CharsetFile], level: str,
    charset: tuple[str, ...] | None,
) -> None:  # fmt: skip
    ident = _charset_identifier(level, charset)
    assert ident.charset == charset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom validates the values it is given
        reference = [encode(answer(match, ident, "PACS"), False, True)
                     for match in charset_archive.find(ident.level, ident.query)]  # fmt: skip
    columns, rows = find_rows(charset_archive, ident.level, ident.query)
    local = local_values(ident, "PACS")
    answers = [answer_dataset(columns, attrs, level, local, [], Encoding(False, True),
                              ident.charset) for attrs in rows]  # fmt: skip
    assert all(ds.original_character_set == ds._character_set for ds in answers)  # raw as is
    assert [encode(ds, False, True) for ds in answers] == reference
    names = [str(ds.PatientName) for ds in answers]
    assert set(names) == {f.patient_name for f in corpus}  # each decodes back as stored


def test_a_name_that_fits_the_query_charset_is_answered_in_it(charset_archive: Archive) -> None:
    by_name = _answers_by_name(charset_archive, ("ISO_IR 100",))
    assert by_name["Buc^Jérôme"].SpecificCharacterSet == "ISO_IR 100"
    assert "Buc^Jérôme".encode("latin-1") in encode(by_name["Buc^Jérôme"], False, True)
    assert by_name["Yamada^Tarou=山田^太郎=やまだ^たろう"].SpecificCharacterSet == "ISO_IR 192"
    jis = _answers_by_name(charset_archive, ("", "ISO 2022 IR 87"))
    h31 = jis["Yamada^Tarou=山田^太郎=やまだ^たろう"]
    assert h31.SpecificCharacterSet == ["", "ISO 2022 IR 87"]
    assert jis["ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"].SpecificCharacterSet == "ISO_IR 192"


def _answers_by_name(archive: Archive, charset: tuple[str, ...] | None) -> dict[str, Dataset]:
    ident = _charset_identifier("PATIENT", charset)
    columns, rows = find_rows(archive, ident.level, ident.query)
    answers = [answer_dataset(columns, attrs, "PATIENT", {}, [], Encoding(False, True),
                              ident.charset) for attrs in rows]  # fmt: skip
    return {str(ds.PatientName): ds for ds in answers}


def test_an_ascii_answer_names_a_charset_only_when_the_query_did(archive: Archive) -> None:
    for charset, want in [(None, None), (("ISO_IR 100",), "ISO_IR 100"), (("",), "")]:
        ident = _charset_identifier("PATIENT", charset)
        columns, rows = find_rows(archive, "PATIENT", ident.query)
        plain = [a for a in rows if all(str(v).isascii() for v in a.values())]
        assert plain
        answers = [answer_dataset(columns, attrs, "PATIENT", {}, [], Encoding(False, True),
                                  ident.charset) for attrs in plain]  # fmt: skip
        assert all(ds.get("SpecificCharacterSet") == want for ds in answers), charset


# -- AnswerEncoder: the same bytes without a Dataset ------------------------------------------


def _encoder_against_datasets(archive: Archive, ident: Identifier, implicit: bool,
                              little: bool) -> tuple[int, int]:  # fmt: skip
    """Compare every answer the encoder writes with the Dataset way's; (written, declined)."""
    columns, rows = find_rows(archive, ident.level, ident.query)
    local, how = local_values(ident, "PACS"), Encoding(implicit, little, as_bytes=True)
    args = (ident.level, local, ident.unknown, how, ident.charset)
    encoder = AnswerEncoder(columns, *args)
    written = declined = 0
    for attrs in rows:
        raw = encoder.encode(attrs)
        reference = encode(answer_dataset(columns, attrs, *args), implicit, little)
        if raw is None:
            declined += 1
            continue
        assert raw == reference, attrs
        written += 1
    return written, declined


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("level", PATIENT_ROOT_LEVELS)
def test_the_encoder_writes_the_dataset_paths_bytes(archive: Archive, level: str,
                                                    encoding: str) -> None:  # fmt: skip
    written, declined = _encoder_against_datasets(archive, _identifier(level),
                                                  *ENCODINGS[encoding])  # fmt: skip
    assert written >= 3  # the generated CT and most of pydicom's files are ASCII
    if level == "PATIENT":
        assert declined >= 2  # Müller^Jürgen, Ærøskøbing^Åse: the Dataset way's


@pytest.mark.parametrize("charset", QUERY_CHARSETS, ids=str)
def test_the_encoder_names_the_query_charset_as_the_dataset_path(
    charset_archive: Archive, charset: tuple[str, ...] | None
) -> None:
    ident = _charset_identifier("STUDY", charset)
    written, declined = _encoder_against_datasets(charset_archive, ident, False, True)
    assert declined >= 1  # the names that are not ASCII go the Dataset way
    assert written + declined == len(list(find_rows(charset_archive, "STUDY", ident.query)[1]))


def test_the_encoder_writes_binary_and_empty_values_as_pydicom() -> None:
    columns = [("Rows", 0x00280010, "US"), ("SOPInstanceUID", 0x00080018, "UI"),
               ("InstanceNumber", 0x00200013, "IS"), ("StudyDescription", 0x00081030, "LO")]
    unknown = [(0x00081070, "PN"), (0x00189346, "SQ")]  # fmt: skip
    for implicit, little in ENCODINGS.values():
        how = Encoding(implicit, little, as_bytes=True)
        attrs = {"Rows": 512, "SOPInstanceUID": "1.2.3", "InstanceNumber": 7}
        plain = AnswerEncoder(columns, "IMAGE", {}, unknown[:1], how)
        reference = encode(answer_dataset(columns, attrs, "IMAGE", {}, unknown[:1], how),
                           implicit, little)  # fmt: skip
        assert plain.encode(attrs) == reference
        assert plain.encode({**attrs, "Rows": 1.5}) is None  # not the index's kind of value
        assert plain.encode({**attrs, "Rows": 70000}) is None  # out of US: pydicom says why
        assert plain.encode({**attrs, "StudyDescription": "Kopf"}) is not None
        assert plain.encode({**attrs, "StudyDescription": "Schädel"}) is None  # charset
        assert not AnswerEncoder(columns, "IMAGE", {}, unknown, how).writable  # an empty SQ
