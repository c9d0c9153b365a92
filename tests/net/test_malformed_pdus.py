"""Broken upper-layer traffic on a fast-path association: an A-ABORT or a close, never a hang.

Each case opens a storage association over a raw socket (the A-ASSOCIATE-RQ
built with pynetdicom's PDU classes), stores one valid instance, then sends
something PS3.8 forbids. The server must abort or close, store nothing from
the broken message, keep the instance it acknowledged, and go on serving.
"""

from __future__ import annotations

import socket
import struct
import time
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from engine.synthetic import ct_series
from engine.synthetic import encode as encode_file
from tests.net._support import Server, echo, storescu
from tests.net.find_helpers import image_uids

EXPLICIT_LE = "1.2.840.10008.1.2.1"
CONTEXT_ID = 1
PDU = struct.Struct(">BxI")
PDV = struct.Struct(">IBB")
READ_TIMEOUT_S = 15.0


def _command(ds: Dataset) -> bytes:
    cmd = Dataset()
    cmd.CommandGroupLength = 0
    cmd.AffectedSOPClassUID = CTImageStorage
    cmd.CommandField = 0x0001
    cmd.MessageID = 1
    cmd.Priority = 0
    cmd.CommandDataSetType = 0x0000
    cmd.AffectedSOPInstanceUID = ds.SOPInstanceUID
    raw = encode(cmd, True, True)
    assert raw is not None
    cmd.CommandGroupLength = len(raw) - 12  # PS3.7 E.1: the bytes after the group length
    out = encode(cmd, True, True)
    assert out is not None
    return out


def _data_set(ds: Dataset) -> bytes:
    raw = encode(ds, False, True)  # Explicit VR Little Endian, the accepted context's syntax
    assert raw is not None
    return raw


def p_data(context: int, mch: int, data: bytes) -> bytes:
    item = PDV.pack(len(data) + 2, context, mch) + data
    return PDU.pack(0x04, len(item)) + item


class RawAssociation:
    """A storage requestor over a bare socket: what no well-behaved SCU would send."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S)
        rq = A_ASSOCIATE()
        rq.application_context_name = "1.2.840.10008.3.1.1.1"
        rq.calling_ae_title = "PYNETDICOM"  # on the session server's access list
        rq.called_ae_title = "PACS"
        cx = build_context(CTImageStorage, [EXPLICIT_LE])
        cx.context_id = CONTEXT_ID
        rq.presentation_context_definition_list = [cx]
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = 16384
        rq.user_information = [max_length]
        pdu = A_ASSOCIATE_RQ()
        pdu.from_primitive(rq)
        self.sock.sendall(pdu.encode())
        kind, body = self.read_pdu()
        assert kind == 0x02, f"expected A-ASSOCIATE-AC, got PDU type {kind}"
        ac = A_ASSOCIATE_AC()
        ac.decode(PDU.pack(kind, len(body)) + body)
        results = {cx.context_id: cx.result for cx in ac.to_primitive()
                   .presentation_context_definition_results_list}  # fmt: skip
        assert results == {CONTEXT_ID: 0}

    def _exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            got = self.sock.recv(n - len(out))
            if not got:
                raise ConnectionError("closed")
            out += got
        return out

    def read_pdu(self) -> tuple[int, bytes]:
        kind, length = PDU.unpack(self._exact(6))
        return kind, self._exact(length)

    def store(self, ds: Dataset) -> int:
        """A well-formed C-STORE; its status."""
        self.sock.sendall(p_data(CONTEXT_ID, 0x03, _command(ds)))
        self.sock.sendall(p_data(CONTEXT_ID, 0x02, _data_set(ds)))
        kind, body = self.read_pdu()
        assert kind == 0x04
        rsp = decode(BytesIO(body[6:]), True, True)
        return int(rsp.Status)

    def outcome(self) -> str:
        """'abort' (A-ABORT, then closed) or 'closed'; fails on anything else or a hang."""
        try:
            kind, body = self.read_pdu()
        except (ConnectionError, ConnectionResetError):
            return "closed"
        assert kind == 0x07, f"expected an A-ABORT, got PDU type {kind}"
        assert body[2] == 0x02, "source: the service provider (PS3.8 9.3.8)"
        try:
            rest = self.sock.recv(1)
        except ConnectionResetError:
            rest = b""
        assert rest == b"", "the server must close after its A-ABORT"
        return "abort"

    def close(self) -> None:
        self.sock.close()


def _cases(ds: Dataset) -> dict[str, bytes]:
    command = p_data(CONTEXT_ID, 0x03, _command(ds))
    half = _data_set(ds)[:500]
    return {
        "garbage": b"\x42" * 300,
        "unknown-pdu-type": PDU.pack(0x09, 4) + b"\0\0\0\0",
        "associate-rq-again": PDU.pack(0x01, 4) + b"\0\0\0\0",
        "pdv-length-past-pdu-end": PDU.pack(0x04, 12) + PDV.pack(5000, CONTEXT_ID, 0x03) + b"x" * 6,
        "pdu-length-ffffffff": PDU.pack(0x04, 0xFFFFFFFF) + PDV.pack(10, CONTEXT_ID, 0x03),
        "pdv-length-ffffffff": PDU.pack(0x04, 100) + PDV.pack(0xFFFFFFFF, CONTEXT_ID, 0x03),
        "unaccepted-context-id": p_data(99, 0x03, _command(ds)),
        "data-set-without-command": p_data(CONTEXT_ID, 0x02, half),
        "command-inside-a-data-set": command + p_data(CONTEXT_ID, 0x00, half) + command,
        "command-length-ffffffff": p_data(CONTEXT_ID, 0x03, b"\x00\x00\x00\x01\xff\xff\xff\xff"),
        "release-rq-of-length-9": PDU.pack(0x05, 9) + b"\0" * 9,
    }


CASES = list(_cases(next(ct_series(1, 1, rows=8, columns=8))))


@pytest.mark.parametrize("case", CASES)
def test_a_malformed_pdu_is_aborted_and_loses_nothing_acknowledged(server: Server,
                                                                   case: str) -> None:  # fmt: skip
    good, bad = ct_series(800 + CASES.index(case), 2, rows=16, columns=16)
    raw = RawAssociation(server.port)
    try:
        assert raw.store(good) == 0
        raw.sock.sendall(_cases(bad)[case])
        assert raw.outcome() == "abort"
    finally:
        raw.close()
    found = image_uids(server.port, {"SeriesInstanceUID": str(good.SeriesInstanceUID)})
    assert set(found) == {str(good.SOPInstanceUID)}  # the acknowledged one, not the broken one
    assert echo(server.port) == 0


def test_storescu_still_works_after_the_malformed_traffic(server: Server, tmp_path: Path) -> None:
    files = []
    for i, ds in enumerate(ct_series(899, 3, rows=16, columns=16)):
        files.append(tmp_path / f"{i}.dcm")
        files[-1].write_bytes(encode_file(ds))
    r = storescu(server.port, files)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_silent_peer_is_closed_after_the_network_timeout(tmp_path: Path) -> None:
    """A truncated PDU then silence: the association ends after network_timeout_s."""
    srv = Server(tmp_path, workers=1, config="[server]\nnetwork_timeout_s = 1.5\n").start()
    try:
        good, bad = ct_series(900, 2, rows=16, columns=16)
        raw = RawAssociation(srv.port)
        try:
            assert raw.store(good) == 0
            whole = p_data(CONTEXT_ID, 0x03, _command(bad))
            whole += p_data(CONTEXT_ID, 0x02, _data_set(bad))
            raw.sock.sendall(whole[: len(whole) // 2])
            started = time.monotonic()
            assert raw.outcome() in {"abort", "closed"}
            assert time.monotonic() - started < 10
        finally:
            raw.close()
        silent = socket.create_connection(("127.0.0.1", srv.port), timeout=READ_TIMEOUT_S)
        try:  # connects and never associates: closed after the ARTIM timeout
            assert silent.recv(1) == b""
        finally:
            silent.close()
        found = image_uids(srv.port, {"SeriesInstanceUID": str(good.SeriesInstanceUID)})
        assert set(found) == {str(good.SOPInstanceUID)}
    finally:
        assert srv.stop() == 0


def test_max_instance_bytes_must_be_positive() -> None:
    from engine.net.settings import DEFAULT_MAX_INSTANCE_BYTES, ServerSettings

    assert ServerSettings().max_instance_bytes == DEFAULT_MAX_INSTANCE_BYTES == 4 << 30
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="max_instance_bytes"):
            ServerSettings(max_instance_bytes=bad)  # type: ignore[arg-type]


def test_a_data_set_past_max_instance_bytes_is_aborted_and_the_server_goes_on(
    tmp_path: Path,
) -> None:
    """Data fragments without the last bit, 100 KiB of them against a 64 KiB limit."""
    srv = Server(tmp_path, workers=1, config="[server]\nmax_instance_bytes = 65536\n").start()
    try:
        good, bad = ct_series(950, 2, rows=16, columns=16)
        raw = RawAssociation(srv.port)
        try:
            assert raw.store(good) == 0  # a small instance is under the limit
            raw.sock.sendall(p_data(CONTEXT_ID, 0x03, _command(bad)))
            fragment = b"\0" * (10 << 10)
            try:
                for _ in range(10):  # 100 KiB, never the last fragment
                    raw.sock.sendall(p_data(CONTEXT_ID, 0x00, fragment))
            except (BrokenPipeError, ConnectionResetError):
                pass  # aborted while we were still sending: just as good
            assert raw.outcome() in {"abort", "closed"}
        finally:
            raw.close()
        assert "max_instance_bytes" in srv.log()
        found = image_uids(srv.port, {"SeriesInstanceUID": str(good.SeriesInstanceUID)})
        assert set(found) == {str(good.SOPInstanceUID)}  # nothing of the aborted one
        assert echo(srv.port) == 0
    finally:
        assert srv.stop() == 0
