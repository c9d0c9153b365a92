"""C-GET and C-MOVE on our own send path (engine/net/send.py), seen by pynetdicom SCUs.

The counts of every response, the Failed SOP Instance UID List, C-CANCEL
between sub-operations, a destination that cannot be reached: what PS3.4
C.4.2 and C.4.3 say a requestor sees.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from engine.part10 import IMPLEMENTATION_VERSION_NAME, dataset_offset
from tests.net._support import Server
from tests.net.conftest import CT_SLICES, MULTI_PORT, SLAM_PORT, Stored
from tests.net.find_helpers import identifier

GET = StudyRootQueryRetrieveInformationModelGet
MOVE = StudyRootQueryRetrieveInformationModelMove
COUNTS = ("NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
          "NumberOfFailedSuboperations", "NumberOfWarningSuboperations")  # fmt: skip


def _series(stored: Stored) -> tuple[dict[str, str], list[str]]:
    """The query keys of the generated CT series and its instances' UIDs."""
    first = pydicom.dcmread(next(iter(stored.ct.values())), stop_before_pixels=True)
    uids = [uid for uid, path in stored.ct.items()
            if pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID
            == first.SeriesInstanceUID]  # fmt: skip
    assert len(uids) == CT_SLICES
    keys = {"StudyInstanceUID": first.StudyInstanceUID,
            "SeriesInstanceUID": first.SeriesInstanceUID}  # fmt: skip
    return keys, uids


def _get(port: int, keys: dict[str, str], on_store: Any,
         ) -> tuple[list[tuple[Dataset, Dataset | None]], Any]:  # fmt: skip
    """A C-GET of a CT series served by the fast path: every (status, identifier) it answered."""
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(GET)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])  # fmt: skip
    assert assoc.is_established
    assert assoc.acceptor.implementation_version_name == IMPLEMENTATION_VERSION_NAME, (
        "role selection for C-GET is served on the fast path")
    responses = list(assoc.send_c_get(identifier("SERIES", keys), GET, msg_id=9))
    return responses, assoc


def _counts(status: Dataset) -> tuple[int | None, ...]:
    return tuple(status.get(name) for name in COUNTS)


def test_get_counts_add_up_in_every_response(server: Server, stored: Stored) -> None:
    keys, uids = _series(stored)
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    responses, assoc = _get(server.port, keys, on_store)
    assert assoc.send_c_echo().Status == 0  # the association is still usable
    assoc.release()
    *pending, (final, final_identifier) = responses
    assert pending, "at least one pending response (after the first sub-operation)"
    for status, _ in pending:
        assert status.Status == 0xFF00
        remaining, completed, failed, warning = _counts(status)
        assert remaining is not None and remaining + completed + failed + warning == CT_SLICES
    assert final.Status == 0x0000 and final_identifier is None
    assert _counts(final) == (None, CT_SLICES, 0, 0)  # PS3.4 C.4.3.1.3: no Remaining at the end
    assert sorted(received) == sorted(uids)


def test_failed_and_warned_sub_operations_are_counted_and_the_failed_listed(
    server: Server, stored: Stored
) -> None:
    keys, _ = _series(stored)
    seen: list[str] = []

    def on_store(event: Any) -> int:
        seen.append(str(event.request.AffectedSOPInstanceUID))
        return {2: 0xA700, 4: 0xB007, 6: 0xC000}.get(len(seen), 0x0000)

    responses, assoc = _get(server.port, keys, on_store)
    assoc.release()
    final, ident = responses[-1]
    assert final.Status == 0xB000, final
    assert _counts(final) == (None, CT_SLICES - 3, 2, 1)
    assert ident is not None and list(ident.FailedSOPInstanceUIDList) == [seen[1], seen[5]]


def test_a_get_whose_every_sub_operation_fails_is_a702(server: Server, stored: Stored) -> None:
    keys, _ = _series(stored)
    responses, assoc = _get(server.port, keys, lambda event: 0xA700)
    assoc.release()
    final, ident = responses[-1]
    assert final.Status == 0xA702 and _counts(final) == (None, 0, CT_SLICES, 0)
    assert ident is not None and len(ident.FailedSOPInstanceUIDList) == CT_SLICES


def test_a_c_cancel_stops_the_get_between_sub_operations(server: Server, stored: Stored) -> None:
    keys, _ = _series(stored)
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        if len(received) == 3:  # PS3.7 9.3.3.3: the cancel names the C-GET's Message ID
            event.assoc.send_c_cancel(9, query_model=GET)
        return 0x0000

    responses, assoc = _get(server.port, keys, on_store)
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    final, _ = responses[-1]
    assert final.Status == 0xFE00, final
    remaining, completed, failed, warning = _counts(final)
    assert completed == len(received) and failed == warning == 0
    assert 3 <= len(received) < CT_SLICES and remaining == CT_SLICES - len(received)


def test_a_move_to_a_destination_that_does_not_answer_fails_with_a_comment(
    server: Server, stored: Stored
) -> None:
    keys, _ = _series(stored)
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(MOVE)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS")
    assert assoc.is_established
    responses = list(assoc.send_c_move(identifier("SERIES", keys), "DOWN", MOVE))
    assoc.release()
    final, ident = responses[-1]
    assert final.Status == 0xA702, final
    assert "DOWN" in str(final.ErrorComment)
    assert _counts(final) == (None, 0, CT_SLICES, 0)
    assert ident is not None and len(ident.FailedSOPInstanceUIDList) == CT_SLICES


def test_a_destination_that_hangs_up_fails_the_move_not_the_requestors_association(
    server: Server, stored: Stored
) -> None:
    keys, _ = _series(stored)
    listener = socket.create_server(("127.0.0.1", SLAM_PORT))
    hung_up = threading.Event()

    def slam() -> None:
        conn, _ = listener.accept()
        conn.close()
        hung_up.set()

    threading.Thread(target=slam, daemon=True).start()
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(MOVE)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS")
    assert assoc.is_established
    try:
        final, _ = list(assoc.send_c_move(identifier("SERIES", keys), "SLAM", MOVE))[-1]
        assert hung_up.is_set() and final.Status == 0xA702, final
        assert "SLAM" in str(final.ErrorComment)
        assert assoc.send_c_echo().Status == 0  # our requestor's association is intact
    finally:
        assoc.release()
        listener.close()


@pytest.mark.parametrize("path_name", ["CT_small.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_a_get_offering_only_another_syntax_is_converted_element_by_element(
    server: Server, stored: Stored, path_name: str
) -> None:
    """The peer accepts Implicit VR only: the instance is converted, its elements equal."""
    uid, path = next((u, p) for u, p in stored.corpus.items() if Path(p).name == path_name)
    src = pydicom.dcmread(path)
    got: list[Dataset] = []

    def on_store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        got.append(ds)
        return 0

    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(GET)
    ae.add_requested_context(src.SOPClassUID, ["1.2.840.10008.1.2"])
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS",
                         ext_neg=[build_role(src.SOPClassUID, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])  # fmt: skip
    assert assoc.is_established
    keys = {"StudyInstanceUID": src.StudyInstanceUID, "SeriesInstanceUID": src.SeriesInstanceUID,
            "SOPInstanceUID": uid}  # fmt: skip
    final = list(assoc.send_c_get(identifier("IMAGE", keys), GET))[-1][0]
    assoc.release()
    assert final.Status == 0 and len(got) == 1
    if src.file_meta.TransferSyntaxUID.is_compressed:
        src.decompress(generate_instance_uid=False)
    for elem in src:  # Data Set Trailing Padding (FFFC,FFFC) may go (PS3.5 7.6)
        if elem.tag.group > 0x0002 and elem.tag not in (0x7FE00010, 0xFFFCFFFC):
            assert got[0][elem.tag].value == elem.value, elem.keyword
    assert got[0].pixel_array.tobytes() == src.pixel_array.tobytes()


@pytest.mark.parametrize(("statuses", "final"), [
    ([], 0x0000),
    ([0x0000, 0x0000], 0x0000),
    ([0x0000, 0xB007], 0xB000),  # a warning alone is "one or more warnings"
    ([0xA700, 0x0000], 0xB000),
    ([0xA700, 0xC000], 0xA702),
    ([0xA700, 0xB000], 0xB000),
    ([0x0001, 0x0000], 0xB000),  # pynetdicom lists 0x0001 as a warning (PS3.4 B.2.3)
])  # fmt: skip
def test_tally_final_status_follows_ps3_4_c_4_3_1_5(statuses: list[int], final: int) -> None:
    from engine.net.retrieve import Match
    from engine.net.send import Tally

    tally = Tally(len(statuses))
    for i, status in enumerate(statuses):
        tally.record(Match(f"1.2.{i}", CTImageStorage, "1.2.840.10008.1.2.1"), status)
    assert tally.remaining == 0 and tally.final_status(False) == final
    assert tally.final_status(True) == 0xFE00
    assert tally.failed_uids == [f"1.2.{i}" for i, s in enumerate(statuses) if s >= 0xA000
                                 and s not in (0xB000, 0xB006, 0xB007)]  # fmt: skip


def _multi_destination(on_store: Any) -> Any:
    """[remotes.MULTI]: a pynetdicom storage SCP serving each association in its own thread."""
    scp = AE(ae_title="MULTI")
    scp.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    return scp.start_server(("127.0.0.1", MULTI_PORT), block=False,
                            evt_handlers=[(evt.EVT_C_STORE, on_store)])  # fmt: skip


def test_a_move_goes_over_max_associations_at_once(server: Server, stored: Stored) -> None:
    """[remotes.MULTI] max_associations = 3: the series arrives whole, over three
    associations (pynetdicom's SCP serves each in its own thread), with one final status."""
    keys, uids = _series(stored)
    received: dict[str, tuple[int, bytes]] = {}
    lock = threading.Lock()

    def on_store(event: Any) -> int:
        with lock:
            uid = str(event.request.AffectedSOPInstanceUID)
            received[uid] = (id(event.assoc), event.request.DataSet.getvalue())
        return 0

    listener = _multi_destination(on_store)
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(MOVE)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS")
    assert assoc.is_established
    try:
        answers = list(assoc.send_c_move(identifier("SERIES", keys), "MULTI", MOVE))
    finally:
        assoc.release()
        listener.shutdown()
    final, _ = answers[-1]
    assert final.Status == 0x0000, final
    assert _counts(final) == (None, CT_SLICES, 0, 0)
    assert set(received) == set(uids)
    assert len({a for a, _ in received.values()}) == 3  # every association took its share
    for uid, (_, data) in received.items():  # as stored: the generated files' own data sets
        raw = stored.ct[uid].read_bytes()
        assert data == raw[dataset_offset(raw) :], uid


def test_a_c_cancel_stops_a_move_over_several_associations(server: Server,
                                                           stored: Stored) -> None:  # fmt: skip
    keys, _ = _series(stored)
    received: list[str] = []
    lock = threading.Lock()
    requestor: list[Any] = []

    def on_store(event: Any) -> int:
        with lock:
            received.append(str(event.request.AffectedSOPInstanceUID))
            if len(received) == 3:  # PS3.7 9.3.4.3: the cancel names the C-MOVE's Message ID
                requestor[0].send_c_cancel(9, query_model=MOVE)
        time.sleep(0.05)  # a slow destination: the cancel arrives while sub-operations remain
        return 0

    listener = _multi_destination(on_store)
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(MOVE)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS")
    assert assoc.is_established
    requestor.append(assoc)
    try:
        answers = list(assoc.send_c_move(identifier("SERIES", keys), "MULTI", MOVE, msg_id=9))
        assert assoc.send_c_echo().Status == 0  # the requestor's association goes on
    finally:
        assoc.release()
        listener.shutdown()
    final, _ = answers[-1]
    assert final.Status == 0xFE00, final
    remaining, completed, failed, warning = _counts(final)
    assert completed == len(received) and failed == warning == 0
    assert 3 <= len(received) < CT_SLICES and remaining == CT_SLICES - len(received)
