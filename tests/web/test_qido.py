"""QIDO-RS through the ASGI app: levels, matching types, includefield, paging, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.archive import Archive
from tests.charset_corpus import charset_files
from tests.web._util import read
from tests.web.conftest import BASE, Client, ct_study, make_client


@pytest.fixture
def studies(archive: Archive) -> list[list[Any]]:
    out = []
    for seed in (1, 2, 3):
        data = ct_study(seed, 2, 3)
        for d in data:
            archive.store(d)
        out.append([read(d) for d in data])
    return out


def values(results: list[dict[str, Any]], tag: str) -> list[Any]:
    return [r[tag]["Value"][0] for r in results if "Value" in r.get(tag, {})]


def test_search_for_studies_returns_the_default_attributes(client: Client, studies: list) -> None:
    r = client.get(f"{BASE}/studies")
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+json"
    docs = r.json()
    assert len(docs) == 3
    for tag in (
        "00080020",
        "00080050",
        "00080061",
        "00100010",
        "00100020",
        "0020000D",
        "00201206",
        "00201208",
        "00081190",
        "00080056",
    ):
        assert all(tag in d for d in docs), tag
    first = studies[0][0]
    doc = next(d for d in docs if d["0020000D"]["Value"][0] == first.StudyInstanceUID)
    assert doc["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": str(first.PatientName)}]}
    assert doc["00201208"]["Value"] == [6]
    assert (
        doc["00081190"]["Value"][0] == f"http://testserver{BASE}/studies/{first.StudyInstanceUID}"
    )


@pytest.mark.parametrize("param", ["PatientID", "00100020"])
def test_single_value_matching_by_keyword_or_tag(client: Client, studies: list, param: str) -> None:
    pid = studies[1][0].PatientID
    docs = client.get(f"{BASE}/studies", params={param: pid}).json()
    assert values(docs, "00100020") == [pid]


def test_wildcard_range_and_uid_list_matching(client: Client, studies: list) -> None:
    a, b = studies[0][0], studies[2][0]
    name = str(a.PatientName)
    docs = client.get(f"{BASE}/studies", params={"PatientName": name[:2].lower() + "*"}).json()
    assert a.StudyInstanceUID in values(docs, "0020000D")
    dates = sorted(s[0].StudyDate for s in studies)
    docs = client.get(f"{BASE}/studies", params={"StudyDate": f"{dates[0]}-{dates[1]}"}).json()
    assert sorted(values(docs, "00080020")) == dates[:2]
    uids = f"{a.StudyInstanceUID},{b.StudyInstanceUID}"
    docs = client.get(f"{BASE}/studies", params={"StudyInstanceUID": uids}).json()
    assert sorted(values(docs, "0020000D")) == sorted([a.StudyInstanceUID, b.StudyInstanceUID])


def test_series_and_instance_levels(client: Client, studies: list) -> None:
    st = studies[0]
    study = st[0].StudyInstanceUID
    series = client.get(f"{BASE}/studies/{study}/series").json()
    assert sorted(values(series, "0020000E")) == sorted({d.SeriesInstanceUID for d in st})
    assert values(series, "00201209") == [3, 3]
    assert len(client.get(f"{BASE}/series", params={"Modality": "CT"}).json()) == 6
    se = st[0].SeriesInstanceUID
    inst = client.get(f"{BASE}/studies/{study}/series/{se}/instances").json()
    assert sorted(values(inst, "00080018")) == sorted(
        d.SOPInstanceUID for d in st if d.SeriesInstanceUID == se
    )
    assert values(inst, "00280010") == [16, 16, 16]
    assert len(client.get(f"{BASE}/studies/{study}/instances").json()) == 6
    everything = client.get(f"{BASE}/instances", params={"PatientID": st[0].PatientID}).json()
    assert len(everything) == 6 and all("00100010" in d for d in everything)


def test_includefield_and_all(client: Client, studies: list) -> None:
    study = studies[0][0].StudyInstanceUID
    docs = client.get(
        f"{BASE}/studies/{study}/series", params={"includefield": "00080060,PatientName"}
    ).json()
    assert "00100010" in docs[0]
    docs = client.get(f"{BASE}/studies/{study}/instances", params={"includefield": "all"}).json()
    assert "00020010" in docs[0] and "00080061" in docs[0]
    r = client.get(f"{BASE}/studies", params={"includefield": "StudyComments"})
    assert r.status_code == 200 and "StudyComments" in r.headers["warning"]


def test_paging_past_the_cap(archive: Archive, studies: list) -> None:
    c = make_client(archive, qido_max_limit=4)
    first = c.get(f"{BASE}/instances")
    assert len(first.json()) == 4 and "offset=4" in first.headers["warning"]
    seen = []
    for offset in range(0, 30, 4):
        seen += values(c.get(f"{BASE}/instances", params={"offset": offset}).json(), "00080018")
    assert len(seen) == 18 == len(set(seen))
    assert len(c.get(f"{BASE}/instances", params={"limit": 2, "offset": 17}).json()) == 1


def test_fuzzymatching_is_accepted_with_a_warning(client: Client, studies: list) -> None:
    r = client.get(f"{BASE}/studies", params={"fuzzymatching": "true", "PatientName": "*"})
    assert r.status_code == 200 and len(r.json()) == 3
    assert "literal matching" in r.headers["warning"]


def test_empty_result_is_an_empty_array(client: Client, studies: list) -> None:
    r = client.get(f"{BASE}/studies", params={"PatientID": "nobody"})
    assert r.status_code == 200 and r.json() == []


@pytest.mark.parametrize("params", [
    {"limit": "-1"}, {"offset": "x"}, {"NoSuchKeyword": "1"}, {"FFFF0010": "1"},
    {"StudyDate": "2020-13-45-99"}, {"Modality": "CT"}, {"StudyComments": "x"},
    {"fuzzymatching": "maybe"}, {"00081111.00081150": "1"},
])  # fmt: skip
def test_bad_queries_are_400_problems(client: Client, studies: list, params: dict) -> None:
    r = client.get(f"{BASE}/studies", params=params)
    assert r.status_code == 400, r.text
    body = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert body["status"] == 400 and body["title"] and body["detail"] and body["type"]


def test_a_bad_uid_in_the_path_is_400(client: Client) -> None:
    r = client.get(f"{BASE}/studies/1.2.abc/series")
    assert r.status_code == 400 and r.json()["status"] == 400


@pytest.mark.parametrize(
    "name", ["Yamada^Tarou", "山田^太郎", "やまだ^たろう", "yamada*", "=山田*"]
)
def test_a_name_in_any_character_set_is_found_by_any_of_its_groups(
    client: Client, archive: Archive, tmp_path: Path, name: str
) -> None:
    corpus = {f.name: f for f in charset_files(tmp_path)}
    for f in corpus.values():
        archive.store(f.path.read_bytes())
    h31 = corpus["chrH31.dcm"]  # ISO 2022 IR 87: Yamada^Tarou=山田^太郎=やまだ^たろう
    docs = client.get(f"{BASE}/studies", params={"PatientName": name}).json()
    by_study = {d["0020000D"]["Value"][0]: d for d in docs}
    assert by_study[h31.study_uid]["00100010"]["Value"] == [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]
    gb2312 = corpus["gb2312.dcm"]  # read without pydicom's ESC $ ) A in the text
    docs = client.get(f"{BASE}/studies", params={"PatientName": "张^小东"}).json()
    assert [d["00100010"]["Value"][0]["Ideographic"] for d in docs] == ["张^小东"]
    assert docs[0]["0020000D"]["Value"] == [gb2312.study_uid]
