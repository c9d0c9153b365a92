"""TLS on the DICOM port (PS3.15 B.9, BCP 195) with real peers: DCMTK's storescu, findscu and
echoscu in +tls mode, pynetdicom with an ssl_context; C-MOVE to a DCMTK storescp over TLS.

Handshakes that must fail: plain TCP, TLS 1.1, a client certificate from another CA, an
expired one, none at all, and DCMTK's retired AES profile (RSA key exchange, no forward
secrecy). Each failure is audited as a Security Alert, and the server keeps serving.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    ModalityWorklistInformationFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from engine.part10 import IMPLEMENTATION_VERSION_NAME
from tests._helpers import small_ct
from tests.forward._support import pacs
from tests.net._support import Server, dcmtk, dcmtk_env, run_dcmtk
from tests.security._pki import Pki
from tests.security.conftest import TlsServer, client_context, tls_echo


def _tls_args(pki: Pki, cert: Any = None) -> list[str]:
    cert = pki.client if cert is None else cert
    return ["+tls", cert.key, cert.cert, "+cf", pki.ca.path]


def _files(tmp: Path, seeds: range) -> list[Path]:
    out = []
    for seed in seeds:
        path = tmp / f"ct{seed}.dcm"
        small_ct(seed).save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def _alerts(server: TlsServer, since: int) -> list[dict[str, Any]]:
    return [r for r in server.audit()[since:] if r["event"] == "Security Alert"]


def _await_alert(server: TlsServer, since: int, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = _alerts(server, since)
        if found:
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"no Security Alert audited:\n{server.log()[-2000:]}")


def test_storescu_over_tls_stores_and_is_audited(secure_server: TlsServer, pki: Pki,
                                                 tmp_path: Path) -> None:  # fmt: skip
    files = _files(tmp_path, range(100, 103))
    before = len(secure_server.audit())
    r = run_dcmtk("storescu", "-aet", "STORESCU", "-aec", "PACS", *_tls_args(pki), "127.0.0.1",
                  str(secure_server.port), *map(str, files))  # fmt: skip
    assert r.returncode == 0, r.stderr
    stored = [a for a in secure_server.audit()[before:]
              if a["event"] == "DICOM Instances Transferred"]  # fmt: skip
    assert len(stored) == 3
    assert {a["user"] for a in stored} == {"STORESCU"}
    assert all(a["outcome"] == 0 and a["address"] == "127.0.0.1" and a["study"] for a in stored)
    assert "client certificate modality" in secure_server.log()  # the CN of pki.client


def test_findscu_and_echoscu_over_tls(secure_server: TlsServer, pki: Pki, tmp_path: Path) -> None:
    ds = small_ct(7)
    sent = run_dcmtk("storescu", "-aet", "STORESCU", "-aec", "PACS", *_tls_args(pki), "127.0.0.1",
                     str(secure_server.port), str(_files(tmp_path, range(7, 8))[0]))  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    echo = run_dcmtk("echoscu", "-aet", "ECHOSCU", "-aec", "PACS", *_tls_args(pki), "127.0.0.1",
                     str(secure_server.port))  # fmt: skip
    assert echo.returncode == 0, echo.stderr
    found = run_dcmtk("findscu", "-S", "-aet", "FINDSCU", "-aec", "PACS", *_tls_args(pki),
                      "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={ds.PatientID}",
                      "-k", "StudyInstanceUID", "127.0.0.1", str(secure_server.port))  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert ds.StudyInstanceUID in found.stdout + found.stderr
    queries = [a for a in secure_server.audit() if a["event"] == "Query"]
    assert queries and queries[-1]["patient"] == ds.PatientID and queries[-1]["user"] == "FINDSCU"


@pytest.mark.parametrize("served_by", ["fast path", "pynetdicom"])
def test_pynetdicom_store_and_find_over_tls(secure_server: TlsServer, pki: Pki,
                                            served_by: str) -> None:  # fmt: skip
    ds = small_ct(31 if served_by == "fast path" else 32)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    if served_by == "pynetdicom":  # a class the fast path does not serve takes it off
        ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", secure_server.port, ae_title="PACS",
                         tls_args=(client_context(pki), None))  # fmt: skip
    assert assoc.is_established
    try:
        fast = assoc.acceptor.implementation_version_name == IMPLEMENTATION_VERSION_NAME
        assert fast == (served_by == "fast path")
        assert assoc.send_c_store(ds).Status == 0
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ds.StudyInstanceUID
        answers = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
    assert answers[0][0].Status == 0xFF00
    assert answers[0][1].StudyInstanceUID == ds.StudyInstanceUID


@pytest.mark.parametrize("case", ["plain_tcp", "tls_1_1", "other_ca", "expired", "no_cert"])
def test_handshakes_that_must_fail(secure_server: TlsServer, pki: Pki, case: str) -> None:
    before = len(secure_server.audit())
    if case == "plain_tcp":  # a DICOM peer without TLS: its A-ASSOCIATE-RQ is not a ClientHello
        plain = run_dcmtk("echoscu", "-to", "20", "-aet", "ECHOSCU", "-aec", "PACS", "127.0.0.1",
                          str(secure_server.port))  # fmt: skip
        assert plain.returncode != 0
    elif case == "tls_1_1":
        with warnings.catch_warnings():  # offering TLS 1.1 is deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = client_context(pki, maximum_version=ssl.TLSVersion.TLSv1_1,
                                 minimum_version=ssl.TLSVersion.TLSv1)  # fmt: skip
        ctx.set_ciphers("ALL:@SECLEVEL=0")  # let our client offer it: the server must say no
        _assert_refused(secure_server.port, ctx)
    else:
        cert = {"other_ca": pki.stranger, "expired": pki.expired_client, "no_cert": False}[case]
        _assert_refused(secure_server.port, client_context(pki, cert=cert))
    alert = _await_alert(secure_server, before)
    assert alert["outcome"] != 0 and alert["address"] == "127.0.0.1"
    assert "TLS handshake failed" in alert["description"]
    assert tls_echo(secure_server.port, pki) == 0  # still serving the well-behaved


def test_dcmtk_refused_without_certificate_or_with_retired_profile(
    secure_server: TlsServer, pki: Pki, tmp_path: Path
) -> None:
    files = list(map(str, _files(tmp_path, range(40, 41))))
    peer = ["127.0.0.1", str(secure_server.port)]
    anonymous = run_dcmtk("storescu", "-aet", "STORESCU", "+tla", "+cf", pki.ca.path, *peer, *files)
    assert anonymous.returncode != 0
    stranger = run_dcmtk("storescu", "-aet", "STORESCU", *_tls_args(pki, pki.stranger), *peer,
                         *files)  # fmt: skip
    assert stranger.returncode != 0
    # the client trusts another CA: it refuses our server certificate
    distrust = run_dcmtk("storescu", "-aet", "STORESCU", "+tls", pki.client.key, pki.client.cert,
                         "+cf", pki.other_ca.path, *peer, *files)  # fmt: skip
    assert distrust.returncode != 0
    # the retired AES profile: TLS_RSA_WITH_AES_128_CBC_SHA, no forward secrecy (not BCP 195)
    retired = run_dcmtk("storescu", "-aet", "STORESCU", *_tls_args(pki), "+pa", *peer, *files)
    assert retired.returncode != 0
    plain = run_dcmtk("storescu", "-aet", "STORESCU", *peer, *files, timeout=60)
    assert plain.returncode != 0


def test_c_move_to_a_tls_remote_reaches_dcmtk_storescp(secure_server: TlsServer, pki: Pki,
                                                      tmp_path: Path) -> None:  # fmt: skip
    ds = small_ct(55)
    received = tmp_path / "received"
    received.mkdir()
    scp = _tls_storescp(secure_server, pki, received)
    try:
        ae = AE(ae_title="MOVESCU")
        ae.add_requested_context(CTImageStorage)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate("127.0.0.1", secure_server.port, ae_title="PACS",
                             tls_args=(client_context(pki), None))  # fmt: skip
        assert assoc.is_established
        try:
            assert assoc.send_c_store(ds).Status == 0
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = ds.StudyInstanceUID
            statuses = [s.Status for s, _ in assoc.send_c_move(
                query, "STORESCP", StudyRootQueryRetrieveInformationModelMove)]  # fmt: skip
        finally:
            assoc.release()
    finally:
        scp.terminate()
        out = scp.communicate(timeout=30)[0].decode(errors="replace")
    assert statuses[-1] == 0, (statuses, out, secure_server.log()[-2000:])
    files = list(received.iterdir())
    assert len(files) == 1 and ds.SOPInstanceUID in files[0].name
    moves = [a for a in secure_server.audit() if a["event"] == "Begin Transferring DICOM Instances"]
    assert moves[-1]["detail"]["destination"] == "STORESCP" and moves[-1]["user"] == "MOVESCU"


def test_pacs_send_to_a_tls_remote_goes_over_tls(secure_server: TlsServer, pki: Pki,
                                                tmp_path: Path) -> None:  # fmt: skip
    files = _files(tmp_path, range(57, 59))
    stored = run_dcmtk("storescu", "-aet", "STORESCU", "-aec", "PACS", *_tls_args(pki),
                       "127.0.0.1", str(secure_server.port), *map(str, files))  # fmt: skip
    assert stored.returncode == 0, stored.stderr
    received = tmp_path / "received"
    received.mkdir()
    ds = small_ct(57)
    scp = _tls_storescp(secure_server, pki, received)
    try:  # a send in clear would not get past the handshake
        sent = pacs("--config", str(secure_server.config_path), "-A", str(secure_server.archive),
                    "send", str(ds.StudyInstanceUID), "--to", "STORESCP")  # fmt: skip
    finally:
        scp.terminate()
        out = scp.communicate(timeout=30)[0].decode(errors="replace")
    assert sent.returncode == 0, (sent.stdout, sent.stderr, out)
    assert "sent 1 of 1 instances to STORESCP" in " ".join(sent.stdout.split())
    got = list(received.iterdir())
    assert len(got) == 1 and str(ds.SOPInstanceUID) in got[0].name


def _tls_storescp(server: TlsServer, pki: Pki, received: Path) -> subprocess.Popen[bytes]:
    """DCMTK's storescp as [remotes.STORESCP] over TLS, listening; it requires and verifies
    the archive's client certificate (-rc)."""
    port = server.storescp_port  # type: ignore[attr-defined]
    scp = subprocess.Popen([dcmtk("storescp"), "-aet", "STORESCP", "+tls", pki.server.key,
                            pki.server.cert, "+cf", pki.ca.path, "-rc", "-od", str(received),
                            str(port)], env=dcmtk_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)  # fmt: skip
    _wait_listening(port)
    return scp


def _assert_refused(port: int, ctx: ssl.SSLContext) -> None:
    """The server ends the handshake: at once (TLS 1.2) or at the first read (TLS 1.3, where
    the client's half of the handshake is done before the server checks its certificate)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    tls = ctx.wrap_socket(raw, do_handshake_on_connect=False)
    try:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            tls.do_handshake()
            tls.sendall(b"\x01")  # not a PDU: we never get that far
            if not tls.recv(1):
                raise ConnectionResetError("closed without a word")
    finally:
        tls.close()
        raw.close()


def _wait_listening(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"storescp did not listen on {port}")


def test_an_idle_tls_association_is_aborted_after_the_network_timeout(
    tmp_path: Path, pki: Pki
) -> None:
    """The storage fast path reads the TLS socket with kernel timeouts: an idle peer is aborted
    (A-ABORT) like a plain one, and the worker goes on serving."""
    flags = ("--tls-cert", pki.server.cert, "--tls-key", pki.server.key, "--tls-ca", pki.ca.path)
    server = TlsServer(tmp_path, pki, workers=1, config="[server]\nnetwork_timeout_s = 2\n",
                       flags=flags).start()  # TLS from the command line this time
    try:
        ae = AE(ae_title="IDLESCU")
        ae.add_requested_context(CTImageStorage)
        aborted = threading.Event()
        assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS",
                             tls_args=(client_context(pki), None),
                             evt_handlers=[(evt.EVT_ABORTED, lambda e: aborted.set())])  # fmt: skip
        assert assoc.is_established
        assert aborted.wait(60), server.log()[-2000:]
        assoc.release()
        assert tls_echo(server.port, pki) == 0
    finally:
        assert server.stop() == 0
    assert "IDLESCU at 127.0.0.1 idle for 2.0 s; aborting" in server.log()


def test_clients_refuse_a_server_whose_certificate_expired(tmp_path: Path, pki: Pki) -> None:
    expired = pki.ca.issue("expired-server", expired=True, server=True)
    config = f'[tls]\ncert = "{expired.cert}"\nkey = "{expired.key}"\n'
    server = Server(tmp_path, workers=1, config=config)
    server.wait_ready = lambda: _wait_for_log(server, "listening on")  # type: ignore[method-assign]
    server.start()
    try:
        files = list(map(str, _files(tmp_path, range(60, 61))))
        r = run_dcmtk("storescu", "-aet", "STORESCU", "+tls", pki.client.key, pki.client.cert,
                      "+cf", pki.ca.path, "127.0.0.1", str(server.port), *files)  # fmt: skip
        assert r.returncode != 0
        _assert_refused(server.port, client_context(pki))  # Python's ssl refuses it too
    finally:
        assert server.stop() == 0
    assert "TLS handshake with" in server.log()  # the server saw the client give up


def _wait_for_log(server: Server, text: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.proc is not None and server.proc.poll() is None, server.log()
        if text in server.log():
            return
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} in the log:\n{server.log()}")
