"""Sending by hand (issue 18): ``pacs send`` and ``POST /admin/v1/send`` to DCMTK storescp, and
the admin API's view of the forward queues and their dead letters.

What arrives must be each instance as stored; the REST endpoint needs the
``admin`` role, reaches only [remotes] entries, and answers a destination that
is down or a UID that is not stored with a problem saying so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.credentials import hash_password
from tests.forward._support import (
    Picky,
    pacs,
    received,
    same,
    storescp,
    uid_of,
    wait_for,
    write_series,
)
from tests.net._support import Server, free_port, storescu

USERS = {"ops": ("ops-secret", ["read", "admin"]), "viewer": ("view-secret", ["read", "write"])}


def _users() -> str:
    return "".join(f'[auth.users.{u}]\npassword = "{hash_password(p)}"\nroles = {json.dumps(r)}\n'
                   for u, (p, r) in USERS.items())  # fmt: skip


@pytest.fixture
def sending(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A server with two remotes (DEST: a storescp; DOWN: nobody) and two stored studies."""
    dest_port = free_port()
    dest = storescp(tmp_path / "dest", dest_port)
    config = (f'[remotes.DEST]\nhost = "127.0.0.1"\nport = {dest_port}\n\n'
              f'[remotes.DOWN]\nhost = "127.0.0.1"\nport = {free_port()}\n\n') + _users()
    server = Server(tmp_path, workers=1, http=True, config=config).start()
    first = write_series(tmp_path / "in", 301, 4)
    second = write_series(tmp_path / "in", 302, 3, implicit=True)
    assert storescu(server.port, first + second).returncode == 0
    yield {"server": server, "dest": tmp_path / "dest", "first": first, "second": second,
           "dest_port": dest_port}  # fmt: skip
    dest.terminate()
    dest.wait(10)
    assert server.stop() == 0, server.log()


def _post(server: Server, body: object, user: str = "ops") -> httpx.Response:
    return _admin(server, "POST", "send", user, json=body)


def _admin(server: Server, method: str, path: str, user: str = "ops", **kw: Any) -> httpx.Response:
    return httpx.request(method, f"http://127.0.0.1:{server.http_port}/admin/v1/{path}",
                         auth=(user, USERS[user][0]), timeout=60, **kw)  # fmt: skip


def _study(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _series(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def test_pacs_send_sends_a_study_as_stored(sending: dict[str, Any]) -> None:
    server, first = sending["server"], sending["first"]
    out = pacs("--config", str(server.config_path), "-A", str(server.archive), "send",
               _study(first[0]), "--to", "DEST")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "sent 4 of 4 instances to DEST" in " ".join(out.stdout.split())
    got = received(sending["dest"])
    assert set(got) == {uid_of(p) for p in first}
    for path in first:
        same(path, got[uid_of(path)])
    unknown = pacs("--config", str(server.config_path), "-A", str(server.archive), "send",
                   "1.2.3.4.5", "--to", "DEST")  # fmt: skip
    assert unknown.returncode == 2 and "1.2.3.4.5" in unknown.stderr


def test_rest_send_needs_the_admin_role_and_sends_a_series(sending: dict[str, Any]) -> None:
    server, second = sending["server"], sending["second"]
    body = {"uid": _series(second[0]), "to": "DEST"}
    refused = _post(server, body, user="viewer")
    assert refused.status_code == 403 and "admin" in refused.json()["detail"]
    assert received(sending["dest"]) == {}  # nothing went for the refused request
    rsp = _post(server, {**body, "parallel": 2})
    assert rsp.status_code == 200, rsp.text
    doc = rsp.json()
    assert (doc["to"], doc["requested"], doc["sent"], doc["refused"], doc["unsent"]) == (
        "DEST", 3, 3, [], 0)  # fmt: skip
    got = received(sending["dest"])
    assert set(got) == {uid_of(p) for p in second}
    for path in second:  # stored Implicit VR: it arrives Implicit VR
        same(path, got[uid_of(path)])


def test_rest_send_says_what_is_wrong(sending: dict[str, Any]) -> None:
    server, first = sending["server"], sending["first"]
    study = _study(first[0])
    cases = {
        "not a remote": ({"uid": study, "to": "NOPE"}, 400, "NOPE"),
        "ad hoc address": ({"uid": study, "to": f"DEST@127.0.0.1:{sending['dest_port']}"}, 400,
                           "[remotes]"),
        "STOW URL": ({"uid": study, "to": "stow:http://127.0.0.1:1/dicom-web"}, 400, "[remotes]"),
        "unknown UID": ({"uid": "1.2.3.4.5", "to": "DEST"}, 404, "1.2.3.4.5"),
        "no uid": ({"to": "DEST"}, 400, "uid"),
        "bad parallel": ({"uid": study, "to": "DEST", "parallel": 0}, 400, "parallel"),
        "unknown member": ({"uid": study, "to": "DEST", "force": True}, 400, "force"),
    }  # fmt: skip
    for name, (body, status, words) in cases.items():
        rsp = _post(server, body)
        assert rsp.status_code == status, (name, rsp.text)
        assert rsp.headers["content-type"] == "application/problem+json", name
        assert words in rsp.json()["detail"], (name, rsp.json())
    not_json = httpx.post(f"http://127.0.0.1:{server.http_port}/admin/v1/send", content=b"{",
                          auth=("ops", USERS["ops"][0]))  # fmt: skip
    assert not_json.status_code == 400 and "JSON" in not_json.json()["detail"]
    down = _post(server, {"uid": study, "to": "DOWN"})
    assert down.status_code == 502, down.text
    doc = down.json()
    assert (doc["requested"], doc["sent"], doc["unsent"]) == (4, 0, 4)
    assert doc["error"] and "DOWN" in doc["detail"]
    assert received(sending["dest"]) == {}
    still = pacs("-A", str(server.archive), "stats", "--json")
    assert json.loads(still.stdout)["instances"] == 7  # nothing lost by the failed sends
    assert _admin(server, "GET", "replica").status_code == 404  # a primary follows no one


def test_the_admin_api_shows_the_queues_and_retries_and_purges_dead_letters(
    tmp_path: Path,
) -> None:
    picky = Picky()
    refuse, taken, port, scp = picky.refuse, picky.taken, picky.port, picky.scp
    config = (f'[remotes.PICKY]\nhost = "127.0.0.1"\nport = {port}\n\n[[forward]]\n'
              f'name = "picky"\nto = "dicom:PICKY"\nmax_attempts = 1\n\n{_users()}')  # fmt: skip
    server = Server(tmp_path, workers=1, http=True, config=config).start()

    def dead() -> int:
        return len(_admin(server, "GET", "queues/picky/dead").json())

    try:
        first = write_series(tmp_path / "in", 303, 3)
        assert storescu(server.port, first).returncode == 0
        wait_for("dead letters", lambda: dead() == 3, server)
        assert _admin(server, "GET", "queues", user="viewer").status_code == 403
        (queue,) = _admin(server, "GET", "queues").json()
        assert (queue["rule"], queue["to"], queue["dead"]) == ("picky", "dicom:PICKY", 3)
        assert "0xA700" in queue["last_error"]
        letters = _admin(server, "GET", "queues/picky/dead").json()
        assert {w["sop_instance_uid"] for w in letters} == {uid_of(p) for p in first}
        assert _admin(server, "GET", "queues/nope/dead").status_code == 404

        refuse.clear()
        assert _admin(server, "POST", "queues/picky/retry").json() == {"rule": "picky", "count": 3}
        wait_for("the retried letters", lambda: len(taken) == 3, server)
        assert set(taken) == {uid_of(p) for p in first}

        refuse.set()
        later = write_series(tmp_path / "in", 304, 2)
        assert storescu(server.port, later).returncode == 0
        wait_for("dead letters", lambda: dead() == 2, server)
        assert _admin(server, "POST", "queues/picky/purge").json() == {"rule": "picky", "count": 2}
        (queue,) = _admin(server, "GET", "queues").json()
        assert (queue["sent"], queue["dead"], queue["behind"]) == (3, 0, 0)
        assert len(taken) == 3  # purged letters are not sent
    finally:
        assert server.stop() == 0, server.log()
        scp.shutdown()
