"""engine.pdu and engine.dimse against pynetdicom's and pydicom's own encoders and decoders."""

from __future__ import annotations

import io
import socket
import threading

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from engine import dimse as D
from engine import pdu as P


def _command(**elements: object) -> bytes:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    raw = encode(ds, True, True)  # implicit VR little endian, as PS3.7 6.3.1 requires
    assert raw is not None
    return raw


def test_parse_command_reads_a_c_store_rq_encoded_by_pynetdicom() -> None:
    raw = _command(CommandGroupLength=0, AffectedSOPClassUID=CTImageStorage, CommandField=1,
                   MessageID=77, Priority=2, CommandDataSetType=0x0000,
                   AffectedSOPInstanceUID="1.2.3.45")  # fmt: skip
    cmd = D.parse_command(raw)
    assert (cmd.command_field, cmd.message_id, cmd.has_data_set) == (1, 77, True)
    assert (cmd.sop_class_uid, cmd.sop_instance_uid) == (CTImageStorage, "1.2.3.45")
    assert cmd.priority == 2


def test_parse_command_knows_an_echo_has_no_data_set() -> None:
    raw = _command(AffectedSOPClassUID=Verification, CommandField=0x30, MessageID=1,
                   CommandDataSetType=0x0101)  # fmt: skip
    cmd = D.parse_command(raw)
    assert cmd.command_field == D.C_ECHO_RQ and not cmd.has_data_set


def test_parse_command_reads_the_request_a_c_cancel_names() -> None:
    """PS3.7 9.3.2.3: C-CANCEL-RQ has Message ID Being Responded To, no Message ID."""
    raw = _command(CommandGroupLength=0, CommandField=0x0FFF, MessageIDBeingRespondedTo=41,
                   CommandDataSetType=0x0101)  # fmt: skip
    cmd = D.parse_command(raw)
    assert (cmd.command_field, cmd.message_id, cmd.has_data_set) == (D.C_CANCEL_RQ, 41, False)


def test_a_pending_find_response_says_a_data_set_follows() -> None:
    raw = D.encode_response(D.C_FIND_RSP, 5, "1.2.840.10008.5.1.4.1.2.2.1", 0xFF00, data_set=True)
    ds = decode(io.BytesIO(raw), True, True)
    assert ds.CommandField == 0x8020 and ds.Status == 0xFF00
    assert ds.CommandDataSetType != 0x0101  # PS3.7 E.1: anything else means one follows


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x00\x00\x01\x02",  # ends inside an element header
        b"\x00\x00\x00\x01\xff\xff\xff\xff\x01\x00",  # undefined length
        _command(MessageID=1),  # no Command Field
        _command(CommandField=1),  # a request without a Message ID
    ],
    ids=["short-header", "length-ffffffff", "no-command-field", "no-message-id"],
)
def test_parse_command_rejects_a_broken_command_set(raw: bytes) -> None:
    with pytest.raises(P.ProtocolError) as err:
        D.parse_command(raw)
    assert err.value.reason == P.ABORT_INVALID_PARAMETER


def test_encode_response_decodes_with_pydicom_and_has_a_true_group_length() -> None:
    raw = D.encode_response(D.C_STORE_RSP, 9, CTImageStorage, 0xA700,
                            sop_instance_uid="1.2.3", error_comment="disk full")  # fmt: skip
    ds = decode(io.BytesIO(raw), True, True)
    assert ds.CommandField == 0x8001 and ds.MessageIDBeingRespondedTo == 9
    assert ds.AffectedSOPClassUID == CTImageStorage and ds.AffectedSOPInstanceUID == "1.2.3"
    assert ds.CommandDataSetType == 0x0101 and ds.Status == 0xA700
    assert ds.ErrorComment == "disk full"
    assert ds.CommandGroupLength == len(raw) - 12  # PS3.7 E.1: bytes after the group length
    tags = [int(e.tag) for e in ds]
    assert tags == sorted(tags)


@pytest.mark.parametrize("peer_max", [0, 16, 64, 16384])
def test_encode_p_data_fragments_to_the_peers_maximum(peer_max: int) -> None:
    command = D.encode_response(D.C_ECHO_RSP, 1, Verification, 0)
    out = P.encode_p_data(5, command, peer_max)
    pos, fragments = 0, []
    while pos < len(out):
        pdu = P_DATA_TF()
        length = int.from_bytes(out[pos + 2 : pos + 6], "big")
        pdu.decode(out[pos : pos + 6 + length])
        if peer_max:
            assert length <= peer_max
        for context, data in pdu.to_primitive().presentation_data_value_list:
            assert context == 5
            fragments.append(data)
        pos += 6 + length
    assert all(f[0] & P.MCH_COMMAND for f in fragments)
    assert [bool(f[0] & P.MCH_LAST) for f in fragments] == [False] * (len(fragments) - 1) + [True]
    assert b"".join(f[1:] for f in fragments) == command


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    return a, b


def test_reader_reassembles_headers_and_payloads_sent_one_byte_at_a_time() -> None:
    payload = bytes(range(256)) * 1000  # 256 KB: crosses the direct-read threshold
    pdv = P.PDV_HEADER.pack(len(payload) + 2, 1, P.MCH_LAST) + payload
    stream = P.PDU_HEADER.pack(P.P_DATA_TF, len(pdv)) + pdv + P.RELEASE_RP
    a, b = _pair()

    def send() -> None:
        for i in range(0, 64):  # the headers trickle in
            a.sendall(stream[i : i + 1])
        a.sendall(stream[64:])

    t = threading.Thread(target=send)
    t.start()
    reader = P.PDUReader(b, size=4096)
    message = P.MessageBuffer(capacity=16)
    assert reader.pdu_header() == (P.P_DATA_TF, len(pdv))
    assert reader.pdv_header() == (len(payload) + 2, 1, P.MCH_LAST)
    reader.read_into(message, len(payload))
    assert bytes(message.data()) == payload
    assert reader.pdu_header() == (P.A_RELEASE_RP, 4)
    t.join()
    a.close()
    b.close()


def test_reader_raises_peer_closed_inside_a_fragment() -> None:
    a, b = _pair()
    a.sendall(b"\x04\x00\x00\x00")
    a.close()
    with pytest.raises(P.PeerClosed):
        P.PDUReader(b).pdu_header()
    b.close()


@pytest.mark.parametrize("peer_max_pdu", [0, 16384, 1001])
def test_data_set_pdus_respect_the_peer_maximum_length(peer_max_pdu: int) -> None:
    data = bytes(range(256)) * 200
    pdus, got, pos = P.data_set_pdus(3, data, peer_max_pdu), b"", 0
    while pos < len(pdus):
        kind, length = P.PDU_HEADER.unpack_from(pdus, pos)
        item_length, context, mch = P.PDV_HEADER.unpack_from(pdus, pos + 6)
        assert kind == P.P_DATA_TF and context == 3 and item_length + 4 == length
        assert peer_max_pdu == 0 or length <= peer_max_pdu
        got += pdus[pos + 12 : pos + 6 + length]
        pos += 6 + length
        assert bool(mch & P.MCH_LAST) == (pos == len(pdus)) and not mch & P.MCH_COMMAND
    assert got == data


@pytest.mark.parametrize("peer_max_pdu", [0, 16384, 1001, 7])
@pytest.mark.parametrize("sizes", [(51200,), (300, 0, 50000, 17), (0,), (1, 1, 1)])
def test_data_set_buffers_frame_the_parts_as_data_set_pdus_frames_their_join(
    peer_max_pdu: int, sizes: tuple[int, ...]
) -> None:
    data = bytes(i % 251 for i in range(sum(sizes)))
    parts, pos = [], 0
    for n in sizes:
        parts.append(memoryview(data)[pos : pos + n])
        pos += n
    buffers = P.data_set_buffers(5, parts, peer_max_pdu)
    assert b"".join(buffers) == P.data_set_pdus(5, data, peer_max_pdu)


def test_send_buffers_delivers_every_buffer_in_order_past_short_writes() -> None:
    a, b = _pair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # forces partial sendmsg()
    payload = [bytes([i % 256]) * (i * 37 % 5000) for i in range(2500)]  # > IOV_MAX buffers
    want = b"".join(payload)
    got = bytearray()

    def drain() -> None:
        while len(got) < len(want):
            got.extend(b.recv(1 << 16))

    reader = threading.Thread(target=drain)
    reader.start()
    P.send_buffers(a, [memoryview(p) for p in payload])
    reader.join(30)
    assert bytes(got) == want
    a.close()
    b.close()
