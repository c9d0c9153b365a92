"""DIMSE access rules over TLS, with pynetdicom as the peer: who may associate, store, query,
retrieve, and be a C-MOVE destination; every refusal with its status, and audited.

The server's rules (tests/security/conftest.py): NOQUERY, NOSTORE and NORETRIEVE lack one
permission each; NOTDEST may not receive C-MOVE results; LIMITED may move only to STORESCP;
titles not in ``allowed_calling`` get A-ASSOCIATE-RJ.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    ModalityWorklistInformationFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from tests._helpers import small_ct
from tests.security._pki import Pki
from tests.security.conftest import TlsServer, client_context

REFUSED_NOT_AUTHORISED, MOVE_DESTINATION_UNKNOWN = 0x0124, 0xA801
STUDY = small_ct(4242)


def _associate(server: TlsServer, pki: Pki, title: str, *contexts: str) -> Any:
    ae = AE(ae_title=title)
    for cx in contexts:
        ae.add_requested_context(cx)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae.associate("127.0.0.1", server.port, ae_title="PACS",
                        tls_args=(client_context(pki), None))  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def stored(secure_server: TlsServer, pki: Pki) -> None:
    assoc = _associate(secure_server, pki, "PYSCU", CTImageStorage)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(STUDY).Status == 0
    finally:
        assoc.release()


def _query() -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = STUDY.StudyInstanceUID
    return q


def _refusals(server: TlsServer, since: int) -> list[dict[str, Any]]:
    return [a for a in server.audit()[since:] if a["outcome"] != 0]


@pytest.fixture
def destination(secure_server: TlsServer) -> Iterator[socket.socket]:
    """A listener where the move destinations point: it must never see a connection."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", secure_server.storescp_port))  # type: ignore[attr-defined]
    sock.listen(4)
    sock.setblocking(False)
    yield sock
    with pytest.raises(BlockingIOError):  # nobody connected
        sock.accept()
    sock.close()


STORE_ONLY = (CTImageStorage,)  # served by the fast path
MIXED = (CTImageStorage, Verification, ModalityWorklistInformationFind)  # pynetdicom


@pytest.mark.parametrize("contexts", [STORE_ONLY, MIXED])
def test_unlisted_calling_ae_is_rejected_and_audited(
    secure_server: TlsServer, pki: Pki, contexts: tuple[str, ...]
) -> None:
    before = len(secure_server.audit())
    assoc = _associate(secure_server, pki, "INTRUDER", *contexts)
    state = f"established={assoc.is_established} aborted={assoc.is_aborted}"
    assert assoc.is_rejected, (state, secure_server.log()[-4000:])
    assoc.release()
    alert = _refusals(secure_server, before)[-1]
    assert alert["event"] == "Security Alert" and alert["user"] == "INTRUDER"
    assert "calling AE title not allowed" in alert["description"]


@pytest.mark.parametrize("contexts", [STORE_ONLY, MIXED])
def test_store_refused_for_a_title_without_store(
    secure_server: TlsServer, pki: Pki, contexts: tuple[str, ...]
) -> None:
    before = len(secure_server.audit())
    assoc = _associate(secure_server, pki, "NOSTORE", *contexts)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(small_ct(77)).Status == REFUSED_NOT_AUTHORISED
    finally:
        assoc.release()
    record = _refusals(secure_server, before)[-1]
    assert record["event"] == "DICOM Instances Transferred" and record["user"] == "NOSTORE"


def test_query_refused_for_a_title_without_query(secure_server: TlsServer, pki: Pki) -> None:
    before = len(secure_server.audit())
    assoc = _associate(secure_server, pki, "NOQUERY", StudyRootQueryRetrieveInformationModelFind)
    try:
        statuses = [s.Status for s, _ in assoc.send_c_find(
            _query(), StudyRootQueryRetrieveInformationModelFind)]  # fmt: skip
    finally:
        assoc.release()
    assert statuses == [REFUSED_NOT_AUTHORISED]
    assert _refusals(secure_server, before)[-1]["event"] == "Query"


def test_get_refused_for_a_title_without_retrieve(secure_server: TlsServer, pki: Pki) -> None:
    before = len(secure_server.audit())
    assoc = _associate(secure_server, pki, "NORETRIEVE", StudyRootQueryRetrieveInformationModelGet)
    try:
        statuses = [s.Status for s, _ in assoc.send_c_get(
            _query(), StudyRootQueryRetrieveInformationModelGet) if s]  # fmt: skip
    finally:
        assoc.release()
    assert statuses[-1] == REFUSED_NOT_AUTHORISED
    assert _refusals(secure_server, before)[-1]["event"] == "Begin Transferring DICOM Instances"


@pytest.mark.parametrize("calling, dest, why", [
    ("MOVESCU", "NOTDEST", "not allowed as a move destination"),
    ("LIMITED", "OTHERDEST", "LIMITED may not move to OTHERDEST"),
    ("MOVESCU", "NOSUCHAE", "unknown move destination"),
])  # fmt: skip
def test_move_destination_rules(secure_server: TlsServer, pki: Pki, destination: socket.socket,
                                calling: str, dest: str, why: str) -> None:  # fmt: skip
    before = len(secure_server.audit())
    assoc = _associate(secure_server, pki, calling, StudyRootQueryRetrieveInformationModelMove)
    try:
        statuses = [s.Status for s, _ in assoc.send_c_move(
            _query(), dest, StudyRootQueryRetrieveInformationModelMove) if s]  # fmt: skip
    finally:
        assoc.release()
    assert statuses == [MOVE_DESTINATION_UNKNOWN]
    record = _refusals(secure_server, before)[-1]
    assert record["user"] == calling and why in record["description"]
