"""Forward rules with ``commit = true`` (issue 18): an instance is delivered once committed.

The destinations are real Storage Commitment SCPs: a second ``pacs serve``
(its report comes on a new association to our workers), Orthanc (so does
its), and pynetdicom SCPs scripted to report on the request's own
association, to fail an instance, or to never answer.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts

from engine.net.commitment import PUSH_MODEL, WELL_KNOWN_INSTANCE
from tests.forward._support import queue_state, uid_of, wait_for, write_series
from tests.net._support import Server, free_port, orthanc, storescu


def _rule(remote: str, port: int, extra: str = "") -> str:
    remotes = f'[remotes.{remote}]\nhost = "127.0.0.1"\nport = {port}\n\n'
    rule = f'[[forward]]\nname = "committed"\nto = "dicom:{remote}"\ncommit = true\n'
    return remotes + rule + extra + "\n"


def _settled(server: Server, sent: int, dead: int = 0) -> Any:
    """Wait until the rule counts `sent` delivered, `dead` dead letters, nothing awaiting."""

    def done() -> bool:
        (s,) = queue_state(server)
        return (s["sent"], s["dead"], s["awaiting_commitment"], s["behind"]) == (sent, dead, 0, 0)

    wait_for(f"{sent} committed and {dead} dead", done, server)
    return queue_state(server)[0]


def test_a_second_pacs_commits_what_we_forwarded_on_a_new_association(tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    (tmp_path / "src").mkdir()
    dest = Server(tmp_path / "dest", workers=1)
    source = Server(tmp_path / "src", workers=2, config=_rule("PACS2", dest.port))
    # the destination knows us: its report goes to our DICOM port, on an association of its own
    back = f'[remotes.PACS]\nhost = "127.0.0.1"\nport = {source.port}\n'
    dest.config_path.write_text('[dicom]\nae_titles = ["PACS2"]\n\n' + back)
    dest.start()
    source.start()
    try:
        files = write_series(tmp_path / "in", 190, 6)
        assert storescu(source.port, files).returncode == 0
        state = _settled(source, 6)
        assert state["refused"] == 0
        # one transaction per batch: the stores may have come as several
        reported = re.findall(r"(\d+) committed, 0 failed; reporting to 127\.0\.0\.1", dest.log())
        kept = re.findall(r": PACS committed (\d+), failed 0", source.log())  # by a worker
        assert sum(map(int, reported)) == sum(map(int, kept)) == 6
    finally:
        assert source.stop() == 0, source.log()
        assert dest.stop() == 0, dest.log()


class _Scripted:
    """A pynetdicom Storage SCP and Storage Commitment SCP that reports on the request's own
    association: it commits what it stored except the UIDs in `refuse`; silent if `mute`."""

    def __init__(self, refuse: set[str] = frozenset(), mute: bool = False) -> None:  # type: ignore[assignment]
        self.refuse, self.mute = refuse, mute
        self.stored: list[str] = []
        self.asked = 0
        ae = AE(ae_title="SCRIPTED")
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(PUSH_MODEL)
        self.port = free_port()
        self.scp = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._store), (evt.EVT_N_ACTION, self._action)])  # fmt: skip

    def _store(self, event: Any) -> int:
        self.stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def _action(self, event: Any) -> tuple[int, None]:
        self.asked += 1
        info = event.action_information
        if not self.mute:
            threading.Thread(target=self._report, args=(event.assoc, info), daemon=True).start()
        return 0x0000, None

    def _report(self, assoc: Any, info: Dataset) -> None:
        report, ok, failed = Dataset(), [], []
        report.TransactionUID = info.TransactionUID
        for item in info.ReferencedSOPSequence:
            out = Dataset()
            out.ReferencedSOPClassUID = item.ReferencedSOPClassUID
            out.ReferencedSOPInstanceUID = item.ReferencedSOPInstanceUID
            if item.ReferencedSOPInstanceUID in self.refuse:
                out.FailureReason = 0x0110
                failed.append(out)
            else:
                ok.append(out)
        report.ReferencedSOPSequence = ok
        if failed:
            report.FailedSOPSequence = failed
        assoc.send_n_event_report(report, 2 if failed else 1, PUSH_MODEL, WELL_KNOWN_INSTANCE)

    def stop(self) -> None:
        self.scp.shutdown()


def test_an_instance_not_committed_is_sent_again_and_then_is_a_dead_letter(tmp_path: Path) -> None:
    files = write_series(tmp_path / "in", 191, 4)
    bad = uid_of(files[0])
    peer = _Scripted(refuse={bad})
    server = Server(tmp_path, workers=1, config=_rule("SCRIPTED", peer.port, "max_attempts = 2"))
    server.start()
    try:
        assert storescu(server.port, files).returncode == 0
        state = _settled(server, 3, dead=1)
        assert state["refused"] == 2  # the bad one, twice
        assert peer.stored.count(bad) == 2 and peer.asked >= 2  # sent again, asked again
        (letter,) = queue_state(server, "committed", "--dead")
        assert letter["sop_instance_uid"] == bad and letter["attempts"] == 2
        assert "not committed: 0x0110 (processing failure)" in letter["error"]
    finally:
        assert server.stop() == 0, server.log()
        peer.stop()


def test_a_destination_that_never_reports_gets_the_instances_again(tmp_path: Path) -> None:
    peer = _Scripted(mute=True)
    config = _rule("SCRIPTED", peer.port, "max_attempts = 2\ncommit_timeout_s = 1")
    server = Server(tmp_path, workers=1, config=config).start()
    try:
        files = write_series(tmp_path / "in", 192, 2)
        assert storescu(server.port, files).returncode == 0
        _settled(server, 0, dead=2)
        letters = queue_state(server, "committed", "--dead")
        assert {w["sop_instance_uid"] for w in letters} == {uid_of(p) for p in files}
        assert all("no Storage Commitment report within 1 s" in w["error"] for w in letters)
        assert all(peer.stored.count(uid_of(p)) == 2 for p in files)
    finally:
        assert server.stop() == 0, server.log()
        peer.stop()


def test_orthanc_commits_what_we_forwarded(tmp_path: Path) -> None:
    orthanc_port = free_port()
    server = Server(tmp_path, workers=1, config=_rule("ORTHANC", orthanc_port))
    (tmp_path / "orthanc").mkdir()
    with orthanc(tmp_path / "orthanc", orthanc_port,
                 {"pacs": ["PACS", "127.0.0.1", server.port]}) as client:  # fmt: skip
        server.start()
        try:
            files = write_series(tmp_path / "in", 193, 5)
            assert storescu(server.port, files).returncode == 0
            _settled(server, 5)
            assert len(client.get("/instances").json()) == 5
            kept = re.findall(r": ORTHANC committed (\d+), failed 0", server.log())
            assert sum(map(int, kept)) == 5
        finally:
            assert server.stop() == 0, server.log()
