"""A worker killed with SIGKILL mid-ingest loses no acknowledged instance, and is restarted."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from engine.synthetic import ct_series
from tests.net._support import NODELAY, Server, echo
from tests.net.find_helpers import image_uids

SENDERS = 4
PER_SENDER = 60


# pynetdicom leaves the socket of an association whose peer died unclosed
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_sigkill_of_a_worker_mid_ingest_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    srv = Server(tmp_path, workers=2).start()
    acked: list[tuple[str, str]] = []  # (series, sop) of every C-STORE answered Success
    lock = threading.Lock()
    started = threading.Event()
    opened: list[Any] = []  # every association, joined at the end (their sockets closed)

    def send(n: int) -> None:
        datasets = list(ct_series(600 + n, PER_SENDER, rows=128, columns=128))
        ae = AE(ae_title="CRASHTEST")
        ae.add_requested_context(CTImageStorage)
        ae.dimse_timeout = ae.acse_timeout = 5
        assoc = None
        for ds in datasets:
            for _attempt in range(20):  # an association to the killed worker dies: open another
                if assoc is None or not assoc.is_established:
                    assoc = ae.associate("127.0.0.1", srv.port, ae_title="PACS",
                                         evt_handlers=NODELAY)
                    opened.append(assoc)
                    if not assoc.is_established:
                        time.sleep(0.05)
                        continue
                status = assoc.send_c_store(ds)
                if "Status" in status and status.Status == 0:
                    with lock:
                        acked.append((str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)))
                    started.set()
                    break
        if assoc is not None and assoc.is_established:
            assoc.release()

    threads = [threading.Thread(target=send, args=(n,)) for n in range(SENDERS)]
    for t in threads:
        t.start()
    assert started.wait(60)
    time.sleep(0.3)
    victims = srv.worker_pids()
    assert len(victims) == 2
    os.kill(victims[0], signal.SIGKILL)
    killed_at = len(acked)
    for t in threads:
        t.join(180)
    for a in opened:
        if a.is_alive():
            a.abort()
        a.join(10)
        sock = getattr(a.dul, "socket", None)
        if sock is not None and sock.socket is not None:
            sock.socket.close()
    assert killed_at < SENDERS * PER_SENDER, "the kill came after the ingest: nothing was tested"

    deadline = time.monotonic() + 60
    while "restarted" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "restarted" in srv.log(), srv.log()
    assert len(srv.worker_pids()) == 2 and victims[0] not in srv.worker_pids()
    assert echo(srv.port) == 0

    found: set[str] = set()
    for series in {s for s, _ in acked}:
        found |= set(image_uids(srv.port, {"SeriesInstanceUID": series}))
    lost = {sop for _, sop in acked} - found
    assert not lost, f"acknowledged but lost: {len(lost)} of {len(acked)}"
    assert srv.stop() == 0
