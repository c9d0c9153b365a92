"""Forward rules in ``pacs serve`` (issue 18), to peers we did not write: DCMTK storescp,
Orthanc over DIMSE and through its DICOMweb plugin (STOW-RS), and a second ``pacs serve``.

Senders are DCMTK storescu with the calling AE titles a rule matches on; what
arrives must be each instance in the syntax it was stored in, with the same
elements and pixel bytes; faults (the forwarder and the destination killed
with SIGKILL over and over, a destination down, one that refuses) lose nothing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file

from tests.forward._support import (
    Picky,
    pacs,
    queue_state,
    received,
    same,
    storescp,
    uid_of,
    wait_for,
    write_series,
)
from tests.net._support import (
    Server,
    free_port,
    orthanc,
    storescu,
)

# -- rules to four peers ----------------------------------------------------------


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("forward-peers")
    dest_port, orthanc_port = free_port(), free_port()
    (tmp / "second").mkdir()
    (tmp / "orthanc").mkdir()
    second = Server(tmp / "second", workers=1,
                    config='[dicom]\nae_titles = ["PACS2"]\n').start()  # fmt: skip
    dest = storescp(tmp / "dest", dest_port)
    with orthanc(tmp / "orthanc", orthanc_port, {}, dicomweb=True) as client:
        yield {"dest": tmp / "dest", "dest_port": dest_port, "orthanc": client,
               "orthanc_port": orthanc_port, "second": second}  # fmt: skip
    dest.terminate()
    dest.wait(10)
    assert second.stop() == 0, second.log()


def test_rules_send_what_they_match_to_each_peer_as_stored(
    peers: dict[str, Any], tmp_path: Path
) -> None:
    orthanc_web = "stow:" + str(peers["orthanc"].base_url).rstrip("/") + "/dicom-web"
    config = f"""
[remotes.DEST]
host = "127.0.0.1"
port = {peers["dest_port"]}

[remotes.ORTHANC]
host = "127.0.0.1"
port = {peers["orthanc_port"]}

[remotes.PACS2]
host = "127.0.0.1"
port = {peers["second"].port}

[[forward]]
name = "scanner-ct"
when = {{ Modality = "CT", CallingAE = "CT*" }}
to = "dicom:DEST"

[[forward]]
name = "ct-orthanc"
when = {{ Modality = "CT" }}
to = "dicom:ORTHANC"
parallel = 2

[[forward]]
name = "mr-web"
when = {{ Modality = "MR" }}
to = "{orthanc_web}"

[[forward]]
name = "replica"
to = "dicom:PACS2"
"""
    server = Server(tmp_path, workers=2, config=config).start()
    try:
        scanner = write_series(tmp_path / "in", 181, 5)  # Explicit VR LE
        other = write_series(tmp_path / "in", 182, 3, implicit=True)
        mr = Path(get_testdata_file("MR_small.dcm"))  # pydicom's: nobody here wrote it
        assert storescu(server.port, scanner, aet="CTSCANNER").returncode == 0
        assert storescu(server.port, other, aet="OTHER").returncode == 0
        assert storescu(server.port, [mr], aet="MRI").returncode == 0
        ct_uids = {uid_of(p): p for p in scanner + other}
        everything = {**ct_uids, uid_of(mr): mr}

        wait_for("storescp", lambda: len(received(peers["dest"])) >= 5, server)
        wait_for("Orthanc", lambda: len(peers["orthanc"].get("/instances").json()) >= 9, server)
        second = peers["second"]
        wait_for("the second archive", lambda: _count(second) >= 9, server)
        time.sleep(1)  # nothing more may come
        got = received(peers["dest"])
        assert set(got) == {uid_of(p) for p in scanner}  # CT from CT* only
        for path in scanner:
            same(path, got[uid_of(path)])
        in_orthanc = {}
        for oid in peers["orthanc"].get("/instances").json():
            tags = peers["orthanc"].get(f"/instances/{oid}/simplified-tags").json()
            in_orthanc[tags["SOPInstanceUID"]] = oid
        assert set(in_orthanc) == set(everything)  # CT over DIMSE, MR through STOW-RS
        for uid, path in everything.items():
            data = peers["orthanc"].get(f"/instances/{in_orthanc[uid]}/file").content
            got_path = tmp_path / f"orthanc-{uid}.dcm"
            got_path.write_bytes(data)
            same(path, got_path)
        for uid, path in everything.items():  # the second pacs serve, byte for byte
            exported = tmp_path / f"second-{uid}.dcm"
            assert pacs("-A", str(second.archive), "export", uid, str(exported)).returncode == 0
            same(path, exported)
        states = {q["rule"]: q for q in queue_state(server)}
        assert {k: (v["sent"], v["behind"], v["dead"]) for k, v in states.items()} == {
            "scanner-ct": (5, 0, 0), "ct-orthanc": (8, 0, 0), "mr-web": (1, 0, 0),
            "replica": (9, 0, 0)}  # fmt: skip
    finally:
        assert server.stop() == 0, server.log()


def _count(server: Server) -> int:
    out = pacs("-A", str(server.archive), "stats", "--json")
    return int(json.loads(out.stdout)["instances"]) if out.returncode == 0 else 0


# -- faults ---------------------------------------------------------------------


def _one_rule(remote: str, port: int, rule: str) -> str:
    """A config forwarding everything to `remote` on `port`; `rule` adds the rule's keys."""
    return (f'[remotes.{remote}]\nhost = "127.0.0.1"\nport = {port}\n\n'
            f'[[forward]]\nto = "dicom:{remote}"\n{rule}\n')  # fmt: skip


def test_the_queue_holds_while_the_destination_is_down_then_drains(tmp_path: Path) -> None:
    port = free_port()
    config = _one_rule("LATER", port, 'name = "later"')
    server = Server(tmp_path, workers=1, config=config).start()
    dest = None
    try:
        files = write_series(tmp_path / "in", 183, 10)
        assert storescu(server.port, files).returncode == 0
        wait_for(
            "the failure to show",
            lambda: "cannot associate" in queue_state(server)[0]["last_error"],
        )
        (state,) = queue_state(server)
        assert state["sent"] == 0 and state["behind"] >= 10 and state["dead"] == 0
        stats = pacs("--config", str(server.config_path), "-A", str(server.archive), "stats",
                     "--json")  # fmt: skip
        (depth,) = json.loads(stats.stdout)["forward"]  # pacs stats shows the queue too
        assert depth["behind"] == state["behind"] and depth["lag_s"] > 0
        dest = storescp(tmp_path / "dest", port, "LATER")
        wait_for("the queue to drain", lambda: len(received(tmp_path / "dest")) == 10, server)
        (state,) = queue_state(server)
        assert (state["sent"], state["behind"], state["dead"]) == (10, 0, 0)
    finally:
        if dest is not None:
            dest.terminate()
            dest.wait(10)
        assert server.stop() == 0, server.log()


def test_refused_instances_become_dead_letters_that_can_be_retried(tmp_path: Path) -> None:
    picky = Picky()
    refuse, taken, port, scp = picky.refuse, picky.taken, picky.port, picky.scp
    config = _one_rule("PICKY", port, 'name = "picky"\nmax_attempts = 2')
    server = Server(tmp_path, workers=1, config=config).start()
    try:
        files = write_series(tmp_path / "in", 184, 3)
        assert storescu(server.port, files).returncode == 0
        wait_for("dead letters", lambda: len(queue_state(server, "picky", "--dead")) == 3, server)
        letters = queue_state(server, "picky", "--dead")
        assert {w["sop_instance_uid"] for w in letters} == {uid_of(p) for p in files}
        assert all(w["attempts"] == 2 and "0xA700" in w["error"] for w in letters)
        refuse.clear()
        out = pacs(
            "--config",
            str(server.config_path),
            "-A",
            str(server.archive),
            "queue",
            "picky",
            "--retry",
        )
        assert out.returncode == 0 and "3 dead letters queued again" in out.stdout
        wait_for("the retried letters", lambda: len(taken) == 3, server)
        assert set(taken) == {uid_of(p) for p in files}
        (state,) = queue_state(server)
        assert (state["sent"], state["dead"], state["retrying"]) == (3, 0, 0)
    finally:
        assert server.stop() == 0, server.log()
        scp.shutdown()


def _forwarder_pid(server: Server, after: int) -> int:
    """The pid the newest forwarder logged, once it is not `after`."""
    found: list[int] = []

    def started() -> bool:
        found[:] = [int(p) for p in re.findall(r"forwarder \(pid (\d+)\)", server.log())]
        return bool(found) and found[-1] != after

    wait_for("the forwarder", started, server)
    return found[-1]


def test_sigkill_of_forwarder_and_destination_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL the forwarder 20 times and the destination 20 times while stores come in:
    every acknowledged instance arrives, the queue drains."""
    port = free_port()
    config = _one_rule("DEST", port, 'name = "all"\nbatch = 20')
    server = Server(tmp_path, workers=2, config=config).start()
    dest = storescp(tmp_path / "dest", port)
    series = [write_series(tmp_path / "in", 200 + i, 10) for i in range(20)]
    acknowledged: list[Path] = []

    def send() -> None:
        for files in series:
            if storescu(server.port, files).returncode == 0:
                acknowledged.extend(files)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        pid = 0
        for _ in range(20):
            pid = _forwarder_pid(server, pid)
            time.sleep(0.5)
            os.kill(pid, signal.SIGKILL)
            dest.kill()
            dest.wait(10)
            dest = storescp(tmp_path / "dest", port)
        sender.join()
        _forwarder_pid(server, pid)  # the last one restarted
        assert len(acknowledged) == 200
        want = {uid_of(p) for p in acknowledged}
        wait_for("every instance", lambda: want <= set(received(tmp_path / "dest")), server)
        wait_for("the queue to drain", lambda: queue_state(server)[0]["behind"] == 0, server)
        assert "died with exit code -9; restarting it" in server.log()
        for path in acknowledged[::37]:
            same(path, received(tmp_path / "dest")[uid_of(path)])
    finally:
        sender.join()
        dest.terminate()
        dest.wait(10)
        assert server.stop() == 0, server.log()
