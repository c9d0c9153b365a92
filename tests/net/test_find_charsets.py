"""C-FIND in every character set, over real associations: each instance found by its own name.

Every file of :mod:`tests.charset_corpus` is sent to a `pacs serve` of its
own (so that the shared server's counts stay as they are) with DCMTK
storescu, then looked for by its PatientName as pydicom decodes it, the
query encoded in the file's own Specific Character Set, with pynetdicom on
both paths (the fast path and pynetdicom's) and with DCMTK findscu.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import config
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import PersonName
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from engine.synthetic import ct_series, encode
from tests.charset_corpus import GB2312_BYTES, CharsetFile, charset_files
from tests.net._support import Server, run_dcmtk, storescu
from tests.net.find_helpers import MODELS, PATHS, find_association

UTF8 = ("ISO_IR 192",)
JAPANESE = "Yamada^Tarou=山田^太郎=やまだ^たろう"  # chrH31.dcm
ASCII_NAME = "Plain^Ascii"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[CharsetFile]:
    return charset_files(tmp_path_factory.mktemp("charset_files"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, corpus: list[CharsetFile]) -> Iterator[Server]:
    """A server of its own, holding the corpus and one slice of an ASCII name."""
    tmp = tmp_path_factory.mktemp("charset_server")
    srv = Server(tmp, workers=1, config='[server]\nae_title = "PACS"\n').start()
    ds = next(ct_series(60, 1, rows=8, columns=8))
    ds.PatientName, ds.PatientID = ASCII_NAME, "ASCII"
    plain = tmp / "ascii.dcm"
    plain.write_bytes(encode(ds))
    r = storescu(srv.port, [f.path for f in corpus] + [plain])
    assert r.returncode == 0, r.stdout + r.stderr
    yield srv
    code = srv.stop()
    assert code == 0, f"server exit code {code}:\n{srv.log()}"


def _charset_value(terms: tuple[str, ...]) -> str | list[str]:
    return list(terms) if len(terms) > 1 else terms[0]


def _query(name: str | bytes, charset: tuple[str, ...] | None) -> Dataset:
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = _charset_value(charset)
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = name  # pydicom encodes it in the query's character set
    ds.StudyInstanceUID = ""
    ds.PatientID = ""
    return ds


def _query_for(f: CharsetFile) -> Dataset:
    # pydicom writes GB 2312 without ESC $ ) A (PS3.5 K.2): that query goes as bytes
    return _query(GB2312_BYTES if f.name == "gb2312.dcm" else f.patient_name, f.terms)


def c_find(port: int, query: Dataset, via: str) -> list[Dataset]:
    assoc = find_association(port, via, MODELS["S"])
    matches: list[Dataset] = []
    try:
        for status, ds in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if status.Status in (0xFF00, 0xFF01):
                matches.append(ds)
            else:
                assert status.Status == 0, hex(status.Status)
    finally:
        assoc.release()
    return matches


def _terms(ds: Dataset) -> tuple[str, ...] | None:
    if "SpecificCharacterSet" not in ds:
        return None
    value = ds.SpecificCharacterSet
    return (value,) if isinstance(value, str) else tuple(value)


def _fits(name: str, terms: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> bool:
    """pydicom's own answer: it encodes `name` in `terms` (strictly) and reads it back."""
    if "ISO 2022 IR 58" in terms:
        return name.isascii()  # pydicom writes GB 2312 without its escape sequence
    encodings = convert_encodings(list(terms))
    with monkeypatch.context() as m:
        m.setattr(config.settings, "writing_validation_mode", config.RAISE)
        try:
            raw = PersonName(name).encode(encodings)
        except UnicodeError:
            return False
    return str(PersonName(raw, encodings)) == name


def _check_answers(matches: list[Dataset], f: CharsetFile, corpus: list[CharsetFile],
                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    by_study = {c.study_uid: c for c in corpus}
    found = {str(ds.StudyInstanceUID): ds for ds in matches}
    assert f.study_uid in found, f"{f.name} not found by its own name {f.patient_name!r}"
    for study, ds in found.items():
        stored = by_study[study].patient_name if study in by_study else ASCII_NAME
        want = f.terms if _fits(stored, f.terms, monkeypatch) else UTF8
        assert _terms(ds) == want, f"{f.name}: answer {by_study[study].name}"
        assert str(ds.PatientName) == stored, f"{f.name}: answer {by_study[study].name}"


@pytest.mark.parametrize("via", PATHS)
def test_each_file_is_found_by_its_own_name_in_its_own_charset(
    server: Server, corpus: list[CharsetFile], via: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(corpus) >= 20
    for f in corpus:
        _check_answers(c_find(server.port, _query_for(f), via), f, corpus, monkeypatch)


@pytest.mark.parametrize("via", PATHS)
@pytest.mark.parametrize("name", ["Yamada^Tarou", "yamada^tarou", "Yamada*", "山田^太郎",
                                  "=山田^太郎", "やまだ^たろう", JAPANESE])  # fmt: skip
def test_a_name_is_found_by_any_of_its_groups(server: Server, corpus: list[CharsetFile],
                                              via: str, name: str) -> None:  # fmt: skip
    h31 = next(f for f in corpus if f.name == "chrH31.dcm")
    matches = c_find(server.port, _query(name, h31.terms), via)
    by_study = {str(ds.StudyInstanceUID): ds for ds in matches}
    assert h31.study_uid in by_study
    got = by_study[h31.study_uid]
    assert _terms(got) == h31.terms and str(got.PatientName) == JAPANESE


@pytest.mark.parametrize("via", PATHS)
def test_an_iso_ir_100_query_gets_an_iso_ir_100_answer(server: Server, via: str) -> None:
    matches = c_find(server.port, _query("Buc^Jérôme", ("ISO_IR 100",)), via)
    assert len(matches) == 2  # chrFren.dcm and chrFrenMulti.dcm
    for ds in matches:
        assert ds.SpecificCharacterSet == "ISO_IR 100"
        name = ds.PatientName
        assert name.original_string.rstrip(b" ") == "Buc^Jérôme".encode("latin-1")  # as it came
        assert str(name) == "Buc^Jérôme"


@pytest.mark.parametrize("via", PATHS)
def test_an_iso_ir_100_query_matching_a_japanese_name_gets_utf8(server: Server, via: str) -> None:
    matches = c_find(server.port, _query("Yamada^Tarou", ("ISO_IR 100",)), via)
    assert [str(ds.PatientName) for ds in matches] == [JAPANESE]
    assert matches[0].SpecificCharacterSet == "ISO_IR 192"


@pytest.mark.parametrize("via", PATHS)
@pytest.mark.parametrize(("charset", "want"), [(None, None), (("ISO_IR 100",), ("ISO_IR 100",)),
                                               (("",), ("",))])  # fmt: skip
def test_an_ascii_answer_names_a_charset_when_the_query_did(
    server: Server, via: str, charset: tuple[str, ...] | None, want: tuple[str, ...] | None
) -> None:
    matches = c_find(server.port, _query(ASCII_NAME, charset), via)
    assert [str(ds.PatientName) for ds in matches] == [ASCII_NAME]
    assert _terms(matches[0]) == want


# -- DCMTK findscu, with a query file written by pydicom ----------------------------------


def _query_file(query: Dataset, path: Path) -> Path:
    query.file_meta = FileMetaDataset()
    query.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    query.save_as(path, enforce_file_format=False)
    return path


def findscu(port: int, query: Path, out: Path) -> list[Dataset]:
    out.mkdir()
    r = run_dcmtk("findscu", "-S", "-aec", "PACS", "-X", "-od", str(out), "127.0.0.1",
                  str(port), str(query))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


@pytest.mark.parametrize("name", ["chrFren.dcm", "chrH31.dcm", "chrI2.dcm", "chrX2.dcm",
                                  "chrArab.dcm", "jis_x_0212.dcm"])  # fmt: skip
def test_findscu_finds_a_file_by_its_own_name(server: Server, corpus: list[CharsetFile],
                                              tmp_path: Path, name: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    f = next(c for c in corpus if c.name == name)
    query = _query_file(_query_for(f), tmp_path / "query.dcm")
    _check_answers(findscu(server.port, query, tmp_path / "out"), f, corpus, monkeypatch)


def test_findscu_iso_ir_100_query_matching_a_japanese_name_gets_utf8(
    server: Server, tmp_path: Path
) -> None:
    query = _query_file(_query("Yamada*", ("ISO_IR 100",)), tmp_path / "query.dcm")
    rsp = findscu(server.port, query, tmp_path / "out")
    assert [(str(d.PatientName), d.SpecificCharacterSet) for d in rsp] == [(JAPANESE, "ISO_IR 192")]
