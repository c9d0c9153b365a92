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


@pytest.mark.parametrize("stage", ["submit", "wait"])
def test_an_unexpected_error_fails_one_part_and_keeps_the_stored_ones(
    client: Client, archive: Archive, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, stage: str,
) -> None:  # fmt: skip
    """A RuntimeError on the second of three parts: 202, two stored, one failed with 0110."""
    import logging

    data = ct_study(14, 1, 3)
    real = getattr(Archive, stage)
    calls = 0

    def flaky(self: Archive, *a: Any, **k: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("the /internal/path of a bug")
        return real(self, *a, **k)

    monkeypatch.setattr(Archive, stage, flaky)
    with caplog.at_level(logging.ERROR, logger="engine.web"):
        r = post(client, [(DICOM, d) for d in data])
    assert r.status_code == 202, r.text
    doc = r.json()
    assert len(doc["00081199"]["Value"]) == 2
    (failed,) = doc["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0x0110]
    assert failed["00081155"]["Value"] == [str(read(data[1]).SOPInstanceUID)]
    assert "/internal/path" not in r.text
    assert any(rec.exc_info and "the /internal/path" in str(rec.exc_info[1])
               for rec in caplog.records)  # fmt: skip
    monkeypatch.undo()
    stored = {str(read(d).SOPInstanceUID) for d in (data[0], data[2])}
    assert all(archive.get(uid) for uid in stored)


def test_a_boundary_without_crlf_is_400_early_and_memory_stays_bounded() -> None:
    """`--b` then megabytes with no CRLF: refused within a chunk or two, not buffered whole."""
    import tracemalloc

    import anyio

    from engine.web.errors import BadRequestError
    from engine.web.multipart import MultipartReader

    chunk = b"x" * (1 << 20)
    sent = 0

    async def chunks() -> Any:
        nonlocal sent
        yield b"--b"
        for _ in range(200):  # 200 MiB if it were all read
            sent += 1
            yield chunk

    async def go() -> None:
        async for _ in MultipartReader("b", 1 << 30).parts(chunks()):
            pass

    tracemalloc.start()
    try:
        with pytest.raises(BadRequestError, match="CRLF"):
            anyio.run(go)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sent <= 2
    assert peak < 8 << 20


def test_a_boundary_without_crlf_is_a_400_problem(client: Client) -> None:
    async def chunks() -> Any:
        yield b"--XbX"
        for _ in range(64):
            yield b"y" * (64 << 10)

    r = client.post(f"{BASE}/studies", content=chunks(), headers={
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=XbX'})  # fmt: skip
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("length", [73, 1000])
def test_a_long_boundary_and_a_chunked_body_are_stored(
    live: tuple[Archive, Any], length: int
) -> None:
    """Orthanc sends 73 characters, past RFC 2046's 70, chunked: a real sender is taken."""
    import httpx

    archive, server = live
    boundary = ("0123456789abcdef-" * 60)[:length]
    data = ct_study(11 + length, 1, 2)
    body, ctype = multipart([(DICOM, d) for d in data], boundary=boundary)

    def chunks() -> Any:  # a generator: httpx sends Transfer-Encoding: chunked
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    r = httpx.post(f"http://127.0.0.1:{server.port}{BASE}/studies", content=chunks(),
                   headers={"Content-Type": ctype}, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert all(archive.get(str(read(d).SOPInstanceUID)) for d in data)


def test_a_boundary_past_the_abuse_bound_is_a_400_that_says_so(client: Client) -> None:
    body, ctype = multipart([(DICOM, ct_study(12, 1, 1)[0])], boundary="b" * 1001)
    r = client.post(f"{BASE}/studies", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 400
    assert "boundary of 1001 characters: at most 1000" in r.json()["detail"]
