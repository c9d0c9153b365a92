"""A C-FIND that outlasts the network timeout ends with its final status (issue 15).

An IMAGE-level C-FIND over 1,000 studies ended with no final status at a
pynetdicom SCU: pynetdicom's acceptor counts the network timeout from the
last PDU it *received*, so an operation that took longer than that (a large
answer set, a reader slower than we send) was aborted once it ended, and
the answers still queued were dropped with it. Here a pynetdicom SCU reads
slowly, with a network timeout shorter than the C-FIND lasts, on the fast
path and on pynetdicom's; then it sends a C-ECHO on the same association.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityWorklistInformationFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from engine.archive import open_archive
from engine.synthetic import ct_series, encode
from tests.net._support import Server

STUDIES, IMAGES = 30, 20
NETWORK_TIMEOUT_S = 2
READ_PAUSE_S = 0.001  # before each read of the SCU: 600 answers take about 8 s


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("slow-reader")
    archive = open_archive(tmp / "archive", durability="none")
    pending = [archive.submit(encode(ds))
               for study in range(STUDIES) for ds in ct_series(7700 + study, IMAGES, rows=4,
                                                               columns=4)]  # fmt: skip
    for p in pending:
        archive.wait(p)
    archive.close()
    srv = Server(tmp, workers=1, archive=tmp / "archive",
                 config=f"[server]\nnetwork_timeout_s = {NETWORK_TIMEOUT_S}\n").start()  # fmt: skip
    yield srv
    assert srv.stop() == 0, srv.log()


def _slow_reader(event: Any) -> None:
    """A small receive buffer and a pause before every read: we send faster than it reads."""
    transport = event.assoc.dul.socket
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    fast_recv = transport.recv

    def recv(nr_bytes: int) -> bytearray:
        time.sleep(READ_PAUSE_S)
        return fast_recv(nr_bytes)

    transport.recv = recv


@pytest.mark.parametrize("path", ["fast", "pynetdicom"])
def test_a_long_c_find_to_a_slow_reader_ends_with_its_final_status(
    server: Server, path: str
) -> None:
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(Verification)
    if path == "pynetdicom":  # a class the fast path does not serve sends it to pynetdicom
        ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS",
                         evt_handlers=[(evt.EVT_CONN_OPEN, _slow_reader)])  # fmt: skip
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(query, key, "")
    statuses, started = [], time.monotonic()
    try:
        for status, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            statuses.append(int(status.Status) if "Status" in status else None)
        took = time.monotonic() - started
        echo = assoc.send_c_echo()  # the association outlived the C-FIND
    finally:
        assoc.release()
    log = server.log()[-3000:]
    assert took > NETWORK_TIMEOUT_S, took  # else this tested nothing
    assert statuses.count(0xFF00) == STUDIES * IMAGES, (len(statuses), statuses[-3:], log)
    assert statuses[-1] == 0x0000, (statuses[-3:], log)
    assert "Status" in echo and echo.Status == 0, log
