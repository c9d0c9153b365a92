"""STOW-RS through the ASGI app: statuses, the PS3.18 response, refusals, malformed bodies."""

from __future__ import annotations

from typing import Any

import pytest

from engine.archive import Archive
from tests.web._util import corpus_instance, multipart, read
from tests.web.conftest import BASE, Client, ct_study

DICOM = "application/dicom"


def post(client: Client, parts: list[tuple[str, bytes]], path: str = "/studies") -> Any:
    body, ctype = multipart(parts)
    return client.post(BASE + path, content=body, headers={"Content-Type": ctype})


def test_all_stored_is_200_with_referenced_sop_sequence(client: Client, archive: Archive) -> None:
    data = [*ct_study(3, 1, 3), corpus_instance("JPEG2000.dcm", 1)]
    r = post(client, [(DICOM, d) for d in data])
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+json"
    refs = r.json()["00081199"]["Value"]
    assert [x["00081155"]["Value"][0] for x in refs] == [read(d).SOPInstanceUID for d in data]
    assert all(
        x["00081190"]["Value"][0].startswith("http://testserver/dicom-web/studies/") for x in refs
    )
    for d in data:
        assert read(archive.get(read(d).SOPInstanceUID)).PixelData == read(d).PixelData


def test_partial_success_is_202_with_failure_reasons(client: Client, archive: Archive) -> None:
    good = ct_study(4, 1, 2)
    r = post(client, [(DICOM, good[0]), (DICOM, b"not dicom at all" * 10), (DICOM, good[1])])
    assert r.status_code == 202
    doc = r.json()
    assert len(doc["00081199"]["Value"]) == 2
    (failed,) = doc["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]


def test_all_failed_is_409(client: Client) -> None:
    r = post(client, [(DICOM, b"\x00" * 300), ("text/plain", b"hello")])
    assert r.status_code == 409
    reasons = [x["00081197"]["Value"][0] for x in r.json()["00081198"]["Value"]]
    assert reasons == [0xC000, 0xC000]


def test_a_part_of_another_study_is_refused(client: Client, archive: Archive) -> None:
    a, b = ct_study(5, 1, 1), ct_study(6, 1, 1)
    study = read(a[0]).StudyInstanceUID
    r = post(client, [(DICOM, a[0]), (DICOM, b[0])], f"/studies/{study}")
    assert r.status_code == 202
    (failed,) = r.json()["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [read(b[0]).SOPInstanceUID]
    assert failed["00081197"]["Value"] == [0xA900]
    assert archive.instances_of(sop_instance_uid=read(b[0]).SOPInstanceUID) == []
    assert r.json()["00081190"]["Value"][0].endswith(study)


@pytest.mark.parametrize(
    "ctype",
    [
        "application/dicom",
        'multipart/related; type="application/dicom+json"; boundary=x',
        "multipart/form-data; boundary=x",
    ],
)
def test_wrong_body_media_type_is_415(client: Client, ctype: str) -> None:
    r = client.post(f"{BASE}/studies", content=b"x", headers={"Content-Type": ctype})
    assert r.status_code == 415 and r.json()["status"] == 415


@pytest.mark.parametrize("body", [
    b"--XbX\r\nContent-Type: application/dicom\r\n\r\nabc",  # no closing boundary
    b"no boundary anywhere" * 2000,
    b"--XbX--\r\n",  # no parts
    b"--XbX\r\nbroken header line\r\n\r\nabc\r\n--XbX--\r\n",
])  # fmt: skip
def test_malformed_multipart_is_400(client: Client, body: bytes) -> None:
    ctype = 'multipart/related; type="application/dicom"; boundary=XbX'
    r = client.post(f"{BASE}/studies", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 400 and r.json()["status"] == 400, r.text


def test_parts_before_a_damaged_end_are_stored_and_said(client: Client, archive: Archive) -> None:
    good, cut = ct_study(8, 1, 2)
    body, ctype = multipart([(DICOM, good), (DICOM, cut)])
    r = client.post(
        f"{BASE}/studies",
        content=body[: -len(b"--XbX--\r\n") - 2] + b"junk",
        headers={"Content-Type": ctype},
    )
    assert r.status_code == 400
    assert r.json()["stored"] == [read(good).SOPInstanceUID]


def test_a_part_over_the_limit_is_413(archive: Archive) -> None:
    from tests.web.conftest import make_client

    c = make_client(archive, max_part_bytes=1000)
    body, ctype = multipart([(DICOM, ct_study(9, 1, 1)[0])])
    r = c.post(f"{BASE}/studies", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 413


def test_body_arriving_in_small_chunks(client: Client, archive: Archive) -> None:
    data = ct_study(10, 1, 3)
    body, ctype = multipart([(DICOM, d) for d in data])

    async def chunks() -> Any:
        for i in range(0, len(body), 7):
            yield body[i : i + 7]

    r = client.post(f"{BASE}/studies", content=chunks(), headers={"Content-Type": ctype})
    assert r.status_code == 200 and len(r.json()["00081199"]["Value"]) == 3
