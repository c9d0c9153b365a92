"""A-ASSOCIATE-RQs seen before are decoded and answered once (engine.net.request_cache);
whatever is checked per association is still checked on a request answered before."""

from __future__ import annotations

import time
from pathlib import Path

from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, UserIdentityNegotiation
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from engine.net.request_cache import Answer, RequestCache
from engine.synthetic import ct_series
from tests.net._support import Server, echo, outcome, run_dcmtk


def _rq(calling: str, identity: bool = False) -> bytes:
    """An A-ASSOCIATE-RQ PDU from a pynetdicom requestor's primitive."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = calling, "PACS"
    contexts = ae.requested_contexts
    for n, cx in enumerate(contexts):
        cx.context_id = 2 * n + 1  # as the requestor numbers them when it associates
    primitive.presentation_context_definition_list = contexts
    if identity:
        item = UserIdentityNegotiation()
        item.user_identity_type, item.primary_field = 1, b"alice"
        primitive.user_information = [item]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def _decoder(calls: list[bytes]):  # type: ignore[no-untyped-def]
    def decode(rq: bytes) -> A_ASSOCIATE:
        calls.append(rq)
        pdu = A_ASSOCIATE_RQ()
        pdu.decode(rq)
        return pdu.to_primitive()

    return decode


def test_the_same_request_is_decoded_once_and_answered_once() -> None:
    cache, calls = RequestCache(), list[bytes]()
    rq, other = _rq("MODALITY1"), _rq("MODALITY2")
    first = cache.decoded(rq, _decoder(calls))
    assert cache.decoded(rq, _decoder(calls)) is first and calls == [rq]
    assert first is not None and str(first.calling_ae_title) == "MODALITY1"
    second = cache.decoded(other, _decoder(calls))
    assert second is not None and str(second.calling_ae_title) == "MODALITY2"  # its own
    assert cache.answer(rq) is None
    answer = Answer([], b"AC")
    cache.keep_answer(rq, answer)
    assert cache.answer(rq) is answer and cache.answer(other) is None


def test_a_request_with_a_user_identity_is_never_kept() -> None:
    cache, calls = RequestCache(), list[bytes]()
    rq = _rq("MODALITY1", identity=True)
    cache.decoded(rq, _decoder(calls))
    cache.decoded(rq, _decoder(calls))
    assert calls == [rq, rq]  # decoded each time: the passcode is not kept
    cache.keep_answer(rq, Answer([], b"AC"))
    assert cache.answer(rq) is None


def test_the_oldest_request_goes_first() -> None:
    cache, calls = RequestCache(size=2), list[bytes]()
    a, b, c = _rq("A"), _rq("B"), _rq("C")
    for rq in (a, b, a, c):  # `a` used again after `b`: `b` is the oldest when `c` comes
        cache.decoded(rq, _decoder(calls))
    calls.clear()
    cache.decoded(a, _decoder(calls))
    cache.decoded(b, _decoder(calls))
    assert calls == [b]


def test_a_request_answered_before_still_meets_the_association_limit(tmp_path: Path) -> None:
    """The same bytes twice: the second is refused while the first is open, then accepted;
    getscu's request (121 contexts with roles) retrieves alike the first time and the next."""
    srv = Server(tmp_path, workers=1, config="[server]\nmax_associations = 1\n").start()
    try:
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(Verification)
        first = ae.associate("127.0.0.1", srv.port, ae_title="PACS")
        assert first.is_established
        second = ae.associate("127.0.0.1", srv.port, ae_title="PACS")
        assert second.is_rejected, outcome(second, srv)
        rj = second.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
        first.release()
        deadline = time.monotonic() + 10
        while echo(srv.port) != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        again = ae.associate("127.0.0.1", srv.port, ae_title="PACS")
        assert again.is_established and again.send_c_echo().Status == 0
        again.release()

        ds = next(ct_series(31, 1, rows=16, columns=16))
        path = tmp_path / "slice.dcm"
        ds.save_as(path, enforce_file_format=True)
        stored = run_dcmtk("storescu", "-aet", "STORESCU", "-aec", "PACS", "127.0.0.1",
                           str(srv.port), str(path))  # fmt: skip
        assert stored.returncode == 0, stored.stderr
        for n in range(2):
            out = tmp_path / f"got-{n}"
            out.mkdir()
            got_ = run_dcmtk("getscu", "-aet", "GETSCU", "-aec", "PACS", "-S", "-od", str(out),
                             "-k", "QueryRetrieveLevel=STUDY", "-k",
                             f"StudyInstanceUID={ds.StudyInstanceUID}", "127.0.0.1",
                             str(srv.port))  # fmt: skip
            assert got_.returncode == 0, got_.stderr
            got = list(out.iterdir())
            assert [p.name for p in got] == [f"CT.{ds.SOPInstanceUID}"], n
    finally:
        assert srv.stop() == 0
