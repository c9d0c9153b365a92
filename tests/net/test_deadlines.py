"""A peer that drips bytes, or says nothing, loses its association and its slot (issue 16).

``[dicom] pdu_timeout_s`` bounds the time from the first byte of a PDU to
its last; ``idle_timeout_s`` the time between PDUs. The server here takes
one association at a time, so a peer that held its slot would lock every
other one out: after each cut, a new association must be accepted. Both
sides of the worker are tried: the fast path and pynetdicom's.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pynetdicom.dsutils import decode

from engine.synthetic import ct_series
from tests._helpers import ROOT
from tests.net._support import Server, echo, free_port
from tests.reliability._raw import STORE_CONTEXT, RawPeer, data_set, p_data, store_command

PATHS = ["fast", "pynetdicom"]
PDU_TIMEOUT_S = 1.5
IDLE_TIMEOUT_S = 3.0
DRIP_BYTES = 200  # at DRIP_S apart: far longer than the PDU deadline
DRIP_S = 0.1


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = (f"[server]\nmax_associations = 1\n\n[dicom]\npdu_timeout_s = {PDU_TIMEOUT_S}\n"
              f"idle_timeout_s = {IDLE_TIMEOUT_S}\n")  # fmt: skip
    server = Server(tmp_path_factory.mktemp("deadlines"), workers=1, config=config).start()
    yield server
    assert server.stop() == 0, server.log()


def _slot_is_free(server: Server) -> bool:
    """Whether a new association is accepted (the limit is one), within a few tries."""
    for _ in range(20):
        if echo(server.port) == 0:
            return True
        time.sleep(0.25)
    return False


def _drip(peer: RawPeer) -> int:
    """Send a P-DATA-TF PDU one byte at a time; how many bytes left before the server cut."""
    body = struct.pack(">IBB", DRIP_BYTES - 4, STORE_CONTEXT, 0x03) + bytes(DRIP_BYTES - 6)
    pdu = struct.pack(">BxI", 0x04, len(body)) + body
    for n, byte in enumerate(pdu):
        if not peer.send(bytes([byte])):
            return n
        time.sleep(DRIP_S)
    return len(pdu)


@pytest.mark.parametrize("path", PATHS)
def test_a_drip_feeding_peer_is_cut_off_and_its_slot_reused(strict: Server, path: str) -> None:
    peer = RawPeer(strict.port)
    try:
        peer.associate(via_pynetdicom=path == "pynetdicom")
        assert echo(strict.port, timeout=2) is None  # the one slot is taken
        sent = _drip(peer)
    finally:
        peer.close()
    assert sent < DRIP_BYTES, "the whole PDU went through: no deadline"
    assert _slot_is_free(strict), strict.log()
    assert "pdu_timeout_s" in strict.log()


@pytest.mark.parametrize("path", PATHS)
def test_an_idle_association_is_aborted(strict: Server, path: str) -> None:
    peer = RawPeer(strict.port, timeout=IDLE_TIMEOUT_S * 10)
    try:
        peer.associate(via_pynetdicom=path == "pynetdicom")
        started = time.monotonic()
        outcome = peer.outcome()  # blocks until the server acts
        waited = time.monotonic() - started
    finally:
        peer.close()
    assert outcome in ("abort", "closed")
    assert waited >= IDLE_TIMEOUT_S * 0.9  # not before the idle timeout
    assert _slot_is_free(strict)


def test_a_slow_but_steady_sender_is_not_cut(strict: Server) -> None:
    """A C-STORE in small PDUs, each whole at once, pauses between: longer than the PDU
    deadline in all, each pause shorter than the idle timeout. It is stored."""
    ds = next(ct_series(1600, 1, rows=32, columns=32))
    data = data_set(ds)
    step = len(data) // 3 + 1
    pieces = [p_data(STORE_CONTEXT, 0x03, store_command(ds))]
    for at in range(0, len(data), step):
        last = 0x02 if at + step >= len(data) else 0x00
        pieces.append(p_data(STORE_CONTEXT, last, data[at : at + step]))
    peer = RawPeer(strict.port)
    try:
        peer.associate(via_pynetdicom=False)
        for piece in pieces:
            time.sleep(PDU_TIMEOUT_S * 0.6)
            assert peer.send(piece)
        kind, body = peer.read_pdu()
        assert kind == 0x04
        assert decode(BytesIO(body[6:]), True, True).Status == 0
    finally:
        peer.close()
    assert _slot_is_free(strict)


@pytest.mark.parametrize("table", ["[dicom]\npdu_timeout_s = 0\n",
                                   "[dicom]\nidle_timeout_s = 5\n[server]\nnetwork_timeout_s = 5\n",
                                   "[dicom]\npdu_timeot_s = 5\n"])  # fmt: skip
def test_the_settings_are_checked(tmp_path: Path, table: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(table)
    r = subprocess.run([sys.executable, "-m", "engine.cli", "--config", str(config), "serve",
                        str(tmp_path / "archive"), "--dicom-port", str(free_port())],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
    assert r.returncode != 0
    why = ("pdu_timeout_s must be", "not both", "unknown keys")
    assert any(w in r.stderr for w in why), r.stderr
