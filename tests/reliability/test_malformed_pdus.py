"""A thousand malformed PDUs against both paths of one server: an abort or a reject, never a hang.

Every case (tests/reliability/_pdus.py) opens its own connection: before any
association (garbage, HTTP, a TLS hello, broken A-ASSOCIATE-RQs), or after a
good one on the fast path or on pynetdicom's path (storage plus C-GET). The
server must answer each within the read timeout, keep its workers (same
pids), keep serving good stores, and keep what it had acknowledged before,
bit-exact.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from engine.synthetic import ct_series
from tests.net._support import Server, echo
from tests.reliability._intact import assert_intact, store_good, worker_figures
from tests.reliability._pdus import PduCase, pdu_cases
from tests.reliability._raw import STORE_CONTEXT, RawPeer, associate_rq, p_data, store_command
from tests.reliability.conftest import scaled

Figure = Callable[[str, Any], None]
CONFIG = "[server]\nnetwork_timeout_s = 20\nmax_associations = 64\n"
CLIENT_THREADS = 12


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path, workers=2, config=CONFIG).start()
    try:
        yield srv
    finally:
        assert srv.stop() == 0, srv.log()[-3000:]


def run_case(port: int, case: PduCase) -> str:
    peer = RawPeer(port)
    try:
        if case.path != "before":
            peer.associate(via_pynetdicom=case.path == "pynetdicom")
        if peer.send(case.payload) and case.half_close:
            peer.sock.shutdown(socket.SHUT_WR)
        outcome = peer.outcome()
    finally:
        peer.close()
    assert outcome in case.allowed, f"{case.name}: {outcome}, expected one of {case.allowed}"
    return outcome


def test_a_thousand_malformed_pdus_get_an_abort_or_reject_and_lose_nothing(
    server: Server, tmp_path: Path, figure: Figure
) -> None:
    good = store_good(server.port, tmp_path / "good", seed=1700)
    pids = sorted(server.worker_pids())
    before = worker_figures(pids)
    sample = next(ct_series(1701, 1, rows=16, columns=16))
    cases = pdu_cases(1702, scaled(1050, 6000), sample)
    started = time.monotonic()
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        outcomes = list(pool.map(lambda c: (c.name, run_case(server.port, c)), cases))
    elapsed = time.monotonic() - started
    assert sorted(server.worker_pids()) == pids, "a worker died:\n" + server.log()[-3000:]
    after = worker_figures(pids)
    assert echo(server.port) == 0
    later = store_good(server.port, tmp_path / "later", seed=1703, count=3)
    by_outcome = Counter(outcome for _, outcome in outcomes)
    by_path = Counter(name.split("/")[0] for name, _ in outcomes)
    assert by_outcome["abort"] > len(cases) // 3, by_outcome
    # pynetdicom's heap grows once (a deep copy of ~150 contexts per association), then stays
    assert after["peak_rss_kib"] < 3 * before["peak_rss_kib"], (before, after)
    assert after["fds"] <= before["fds"] + 4, (before, after)
    figure("malformed PDUs", len(cases))
    figure("per path", dict(by_path))
    figure("outcomes", dict(by_outcome))
    figure("worker peak RSS KiB before/after", (before["peak_rss_kib"], after["peak_rss_kib"]))
    figure("worker fds before/after", (before["fds"], after["fds"]))
    figure("seconds", round(elapsed, 1))
    assert server.stop() == 0
    assert_intact(server.archive, {**good, **later})


@pytest.mark.parametrize("via_pynetdicom", [False, True], ids=["fast-path", "pynetdicom"])
def test_an_endless_data_set_is_aborted_at_max_instance_bytes(
    tmp_path: Path, via_pynetdicom: bool, figure: Figure
) -> None:
    """Regression: pynetdicom's path had no bound on a received data set (only the fast path)."""
    limit = 1 << 20
    srv = Server(tmp_path, workers=1, config=f"[server]\nmax_instance_bytes = {limit}\n").start()
    try:
        good = store_good(srv.port, tmp_path / "good", seed=1710, count=2)
        (pid,) = srv.worker_pids()
        peak_before = worker_figures([pid])["peak_rss_kib"]
        peer = RawPeer(srv.port)
        sent = 0
        try:
            peer.associate(via_pynetdicom=via_pynetdicom)
            bad = next(ct_series(1711, 1, rows=16, columns=16))
            assert peer.send(p_data(STORE_CONTEXT, 0x03, store_command(bad)))
            fragment = p_data(STORE_CONTEXT, 0x00, b"\0" * (64 << 10))
            while sent < 256 << 20 and peer.send(fragment):  # 256 MiB, never the last
                sent += len(fragment)
                if sent > 8 * limit:  # the abort is on its way; read it
                    break
            assert peer.outcome() in {"abort", "closed"}
        finally:
            peer.close()
        peak_after = worker_figures([pid])["peak_rss_kib"]
        assert peak_after - peak_before < 64 << 10
        assert "max_instance_bytes" in srv.log()
        assert echo(srv.port) == 0
        figure("bytes sent before the abort", sent)
        figure("worker peak RSS KiB before/after", (peak_before, peak_after))
    finally:
        assert srv.stop() == 0
    assert_intact(srv.archive, good)


@pytest.mark.parametrize("via_pynetdicom", [False, True], ids=["fast-path", "pynetdicom"])
def test_a_pdu_of_length_ffffffff_is_aborted_before_it_is_read(
    tmp_path: Path, via_pynetdicom: bool
) -> None:
    """Regression: pynetdicom read a PDU of whatever length its header claimed."""
    srv = Server(tmp_path, workers=1).start()
    try:
        peer = RawPeer(srv.port)
        try:
            peer.associate(via_pynetdicom=via_pynetdicom)
            assert peer.send(p_data(STORE_CONTEXT, 0x03, b"")[:2] + b"\xff\xff\xff\xff")
            for _ in range(64):  # 4 MiB of body: more than a PDU may be, far less than claimed
                if not peer.send(b"\0" * (64 << 10)):
                    break
            assert peer.outcome() in {"abort", "closed"}
        finally:
            peer.close()
        assert echo(srv.port) == 0
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("via_pynetdicom", [False, True], ids=["fast-path", "pynetdicom"])
def test_a_stalled_peer_is_released_by_the_network_timeout(
    tmp_path: Path, via_pynetdicom: bool, figure: Figure
) -> None:
    """Silence before associating (ARTIM) and in the middle of a PDU (network timeout)."""
    srv = Server(tmp_path, workers=1, config="[server]\nnetwork_timeout_s = 2\n").start()
    try:
        silent = RawPeer(srv.port)
        started = time.monotonic()
        assert silent.outcome() in {"closed", "abort"}  # never associated
        figure("closed after (s), silent connection", round(time.monotonic() - started, 1))
        silent.close()
        stalled = RawPeer(srv.port)
        try:
            stalled.associate(via_pynetdicom=via_pynetdicom)
            bad = next(ct_series(1720, 1, rows=16, columns=16))
            stalled.send(p_data(STORE_CONTEXT, 0x03, store_command(bad))[:9])  # half a PDU
            started = time.monotonic()
            assert stalled.outcome() in {"closed", "abort"}
            figure("closed after (s), stalled PDU", round(time.monotonic() - started, 1))
        finally:
            stalled.close()
        assert echo(srv.port) == 0
    finally:
        assert srv.stop() == 0


def test_failed_connections_do_not_hold_association_slots(tmp_path: Path) -> None:
    """Regression: a connection that failed before associating (garbage, handed to
    pynetdicom) counted against max_associations for acse_timeout (30 s), so a burst of
    them locked every modality out."""
    srv = Server(tmp_path, workers=1, config="[server]\nmax_associations = 2\n").start()
    try:
        for _ in range(6):
            peer = RawPeer(srv.port, timeout=15)
            try:
                peer.send(b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n")
                assert peer.outcome() in {"abort", "closed"}
            finally:
                peer.close()
        deadline = time.monotonic() + 10  # a third of acse_timeout: the slots came back
        while True:
            good = RawPeer(srv.port, timeout=15)
            try:
                good.sock.sendall(associate_rq(via_pynetdicom=True))
                kind, _ = good.read_pdu()
            finally:
                good.close()
            if kind == 0x02 or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # refused (A-ASSOCIATE-RJ): the failed ones still count
        assert kind == 0x02, "failed connections still hold the association slots"
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("via_pynetdicom", [False, True], ids=["fast-path", "pynetdicom"])
def test_a_pdv_on_an_unaccepted_context_is_aborted_at_once(
    tmp_path: Path, via_pynetdicom: bool
) -> None:
    """Regression: pynetdicom waited for the network timeout on a PDV of context 99."""
    srv = Server(tmp_path, workers=1, config="[server]\nnetwork_timeout_s = 120\n").start()
    try:
        peer = RawPeer(srv.port, timeout=15)  # far less than the network timeout
        try:
            peer.associate(via_pynetdicom=via_pynetdicom)
            bad = next(ct_series(1730, 1, rows=16, columns=16))
            assert peer.send(p_data(99, 0x03, store_command(bad)))
            assert peer.outcome() == "abort"
        finally:
            peer.close()
    finally:
        assert srv.stop() == 0


def test_a_peer_that_hangs_up_inside_its_associate_rq_is_closed_at_once(tmp_path: Path) -> None:
    """Regression: the peek for the A-ASSOCIATE-RQ waited the ARTIM timeout (30 s) for
    the rest of a PDU whose sender had already shut its side down."""
    srv = Server(tmp_path, workers=1).start()
    try:
        peer = RawPeer(srv.port, timeout=10)
        try:
            peer.send(associate_rq(via_pynetdicom=False)[:40])
            peer.sock.shutdown(socket.SHUT_WR)
            assert peer.outcome() == "closed"
        finally:
            peer.close()
        assert echo(srv.port) == 0
    finally:
        assert srv.stop() == 0
