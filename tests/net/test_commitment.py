"""Storage Commitment Push Model as SCP (engine.net.commitment, PS3.4 Annex J).

Real requesters over loopback: a pynetdicom SCU that waits for the report on
its own association, one that gets it on a new association to its
configured remote, and Orthanc asking through its REST API (its report comes
on a new association too). What must hold: stored instances are committed,
an unknown one or one of another class fails with its Failure Reason, a
record whose bytes changed on disk is not committed, bad requests get the
N-ACTION status PS3.7 names.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

import engine
from engine.net.commitment import PUSH_MODEL, WELL_KNOWN_INSTANCE, judge, request_dataset
from engine.storage.segment import segment_path
from engine.synthetic import ct_series
from tests.net._support import Server, free_port, orthanc, storescu

REPORT_WAIT_S = 60.0


def _stored(server: Server, folder: Path, seed: int, count: int) -> list[Dataset]:
    """`count` CT slices stored into `server` by DCMTK storescu."""
    folder.mkdir(parents=True, exist_ok=True)
    series = list(ct_series(seed, count, rows=16, columns=16))
    paths = []
    for i, ds in enumerate(series):
        paths.append(folder / f"{seed}-{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    assert storescu(server.port, paths).returncode == 0
    return series


def _pairs(series: list[Dataset]) -> list[tuple[str, str]]:
    return [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in series]


def _uids(info: Dataset, sequence: str) -> dict[str, int | None]:
    """Referenced SOP Instance UID -> Failure Reason (None in the committed sequence)."""
    return {str(i.ReferencedSOPInstanceUID): i.get("FailureReason")
            for i in info.get(sequence, [])}  # fmt: skip


class Reports:
    """N-EVENT-REPORT-RQs received by a requester, as (event type, event information)."""

    def __init__(self) -> None:
        self.got: queue.Queue[tuple[int, Dataset, str]] = queue.Queue()

    def handler(self, event: Any) -> tuple[int, None]:
        self.got.put((event.event_type, event.event_information, str(event.assoc.mode)))
        return 0x0000, None

    def next(self) -> tuple[int, Dataset, str]:
        return self.got.get(timeout=REPORT_WAIT_S)


def _scu(ae_title: str = "COMMITSCU") -> AE:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(PUSH_MODEL)
    return ae


def test_a_report_on_the_same_association_commits_what_is_stored(tmp_path: Path) -> None:
    server = Server(tmp_path, workers=1).start()
    try:
        series = _stored(server, tmp_path / "in", 180, 4)
        unknown = (str(CTImageStorage), generate_uid())
        other_class = (str(MRImageStorage), str(series[0].SOPInstanceUID))
        reports = Reports()
        handlers = [(evt.EVT_N_EVENT_REPORT, reports.handler)]
        assoc = _scu().associate("127.0.0.1", server.port, ae_title="PACS", evt_handlers=handlers)
        assert assoc.is_established
        try:
            transaction = generate_uid()
            request = request_dataset(transaction, [*_pairs(series), unknown, other_class])
            status, _ = assoc.send_n_action(request, 1, PUSH_MODEL, WELL_KNOWN_INSTANCE)
            assert status.Status == 0x0000
            event_type, info, mode = reports.next()
            assert (event_type, mode) == (2, "requestor")  # failures exist; on its own association
            assert info.TransactionUID == transaction and info.RetrieveAETitle == "PACS"
            assert _uids(info, "ReferencedSOPSequence") == {
                str(ds.SOPInstanceUID): None for ds in series
            }
            assert _uids(info, "FailedSOPSequence") == {unknown[1]: 0x0112, other_class[1]: 0x0119}

            status, _ = assoc.send_n_action(request_dataset(generate_uid(), _pairs(series)), 1,
                                            PUSH_MODEL, WELL_KNOWN_INSTANCE)  # fmt: skip
            assert status.Status == 0x0000
            event_type, info, _ = reports.next()
            assert event_type == 1 and "FailedSOPSequence" not in info
            assert len(info.ReferencedSOPSequence) == 4
        finally:
            assoc.release()
    finally:
        assert server.stop() == 0, server.log()


@pytest.fixture
def listener() -> Iterator[tuple[int, Reports, list[Any]]]:
    """A requester's own SCP: it accepts the Push Model with the caller in the SCP role."""
    reports, roles = Reports(), list[Any]()

    def on_requested(event: Any) -> None:
        roles.extend(event.assoc.requestor.role_selection.values())

    ae = AE(ae_title="COMMITSCU")
    ae.add_supported_context(PUSH_MODEL, scu_role=False, scp_role=True)
    port = free_port()
    scp = ae.start_server(("127.0.0.1", port), block=False,
                          evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler),
                                        (evt.EVT_REQUESTED, on_requested)])  # fmt: skip
    try:
        yield port, reports, roles
    finally:
        scp.shutdown()


def test_a_configured_requester_gets_its_report_on_a_new_association(
    tmp_path: Path, listener: tuple[int, Reports, list[Any]]
) -> None:
    port, reports, roles = listener
    config = f'[remotes.COMMITSCU]\nhost = "127.0.0.1"\nport = {port}\n'
    server = Server(tmp_path, workers=1, config=config).start()
    try:
        series = _stored(server, tmp_path / "in", 181, 3)
        assoc = _scu().associate("127.0.0.1", server.port, ae_title="PACS")
        transaction = generate_uid()
        status, _ = assoc.send_n_action(request_dataset(transaction, _pairs(series)), 1,
                                        PUSH_MODEL, WELL_KNOWN_INSTANCE)  # fmt: skip
        assoc.release()  # at once, as Orthanc and most modalities do
        assert status.Status == 0x0000
        event_type, info, mode = reports.next()
        assert (event_type, mode) == (1, "acceptor")  # on the listener's side: a new association
        assert info.TransactionUID == transaction
        assert set(_uids(info, "ReferencedSOPSequence")) == {str(ds.SOPInstanceUID)
                                                             for ds in series}  # fmt: skip
        # PS3.4 J.3.3.1.2 note 1: we proposed the SCP role of the Push Model
        assert [(str(r.sop_class_uid), r.scu_role, r.scp_role) for r in roles] == [
            (PUSH_MODEL, False, True)
        ]
    finally:
        assert server.stop() == 0, server.log()


def test_requests_that_cannot_be_judged_get_the_status_ps3_7_names(tmp_path: Path) -> None:
    config = "[remotes.NOSTORE]\nstore = false\n"
    server = Server(tmp_path, workers=1, config=config).start()
    try:
        series = _stored(server, tmp_path / "in", 182, 1)
        assoc = _scu().associate("127.0.0.1", server.port, ae_title="PACS")
        try:
            no_transaction = request_dataset(generate_uid(), _pairs(series))
            del no_transaction.TransactionUID
            empty = request_dataset(generate_uid(), [])
            cases = [
                (no_transaction, 1, WELL_KNOWN_INSTANCE, 0x0115),  # invalid argument value
                (empty, 1, WELL_KNOWN_INSTANCE, 0x0115),
                (request_dataset(generate_uid(), _pairs(series)), 2, WELL_KNOWN_INSTANCE, 0x0123),
                (request_dataset(generate_uid(), _pairs(series)), 1, generate_uid(), 0x0112),
            ]
            for request, action, instance, want in cases:
                status, _ = assoc.send_n_action(request, action, PUSH_MODEL, instance)
                assert status.Status == want, (action, instance)
        finally:
            assoc.release()
        refused = _scu("NOSTORE").associate("127.0.0.1", server.port, ae_title="PACS")
        try:
            status, _ = refused.send_n_action(request_dataset(generate_uid(), _pairs(series)), 1,
                                              PUSH_MODEL, WELL_KNOWN_INSTANCE)  # fmt: skip
            assert status.Status == 0x0124  # refused: not authorised (it may not store)
        finally:
            refused.release()
    finally:
        assert server.stop() == 0, server.log()


def test_an_archive_that_does_not_fsync_commits_nothing(tmp_path: Path) -> None:
    server = Server(tmp_path, workers=1, config='[archive]\ndurability = "none"\n').start()
    try:
        series = _stored(server, tmp_path / "in", 183, 1)
        assoc = _scu().associate("127.0.0.1", server.port, ae_title="PACS")
        try:
            status, _ = assoc.send_n_action(request_dataset(generate_uid(), _pairs(series)), 1,
                                            PUSH_MODEL, WELL_KNOWN_INSTANCE)  # fmt: skip
            assert status.Status == 0x0110
        finally:
            assoc.release()
        assert "durability is 'none'" in server.log()
    finally:
        assert server.stop() == 0, server.log()


def test_a_record_whose_bytes_changed_on_disk_is_not_committed(tmp_path: Path) -> None:
    series = list(ct_series(184, 2, rows=16, columns=16))
    with engine.open_archive(tmp_path) as archive:
        for ds in series:
            archive.store(ds)
        with archive.env.read() as txn:
            loc = archive.catalog.location(txn, str(series[1].SOPInstanceUID))
        assert loc is not None
    path = segment_path(tmp_path / "segments", loc.segment_id)
    with open(path, "r+b") as f:  # one bit of the pixel data, behind the checksum's back
        f.seek(loc.offset + loc.total - 40)
        byte = f.read(1)[0]
        f.seek(loc.offset + loc.total - 40)
        f.write(bytes([byte ^ 0x10]))
    with engine.open_archive(tmp_path) as archive:
        verdict = judge(archive, "1.2.3", _pairs(series), "PACS")
    assert verdict.event_type == 2 and (verdict.committed, verdict.failed) == (1, 1)
    assert _uids(verdict.information, "FailedSOPSequence") == {
        str(series[1].SOPInstanceUID): 0x0110
    }


def test_orthanc_asks_for_commitment_and_gets_its_report(tmp_path: Path) -> None:
    orthanc_port = free_port()
    config = f'[remotes.ORTHANC]\nhost = "127.0.0.1"\nport = {orthanc_port}\n'
    server = Server(tmp_path, workers=1, config=config).start()
    try:
        series = _stored(server, tmp_path / "in", 185, 3)
        missing = generate_uid()
        (tmp_path / "orthanc").mkdir()
        with orthanc(tmp_path / "orthanc", orthanc_port,
                     {"pacs": ["PACS", "127.0.0.1", server.port]}) as client:  # fmt: skip
            asked = [{"SOPClassUID": c, "SOPInstanceUID": i} for c, i in _pairs(series)]
            asked.append({"SOPClassUID": str(CTImageStorage), "SOPInstanceUID": missing})
            r = client.post("/modalities/pacs/storage-commitment", json={"DicomInstances": asked})
            assert r.status_code == 200, r.text
            path = r.json()["Path"]
            deadline = time.monotonic() + REPORT_WAIT_S
            while (report := client.get(path).json())["Status"] == "Pending":
                assert time.monotonic() < deadline, f"no report reached Orthanc:\n{server.log()}"
                time.sleep(0.2)
        assert report["Status"] == "Failure", report  # one instance is not here
        assert {s["SOPInstanceUID"] for s in report["Success"]} == {i for _, i in _pairs(series)}
        assert [(f["SOPInstanceUID"], f["FailureReason"]) for f in report["Failures"]] == [
            (missing, 0x0112)
        ]
    finally:
        assert server.stop() == 0, server.log()
