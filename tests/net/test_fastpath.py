"""Which associations the fast path serves, and that they work with real peers.

The fast path answers the A-ASSOCIATE-RQ with engine.part10's implementation
version name (PACSENGINE_...), pynetdicom with its own (PYNETDICOM_...): the
peer sees which side served it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    ModalityWorklistInformationFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

from engine.part10 import IMPLEMENTATION_VERSION_NAME
from engine.synthetic import ct_series, encode
from tests.net._support import NODELAY, Server, storescu
from tests.net.conftest import Stored
from tests.net.find_helpers import image_uids


def _associate(port: int, *contexts: str, ae_title: str = "PYNETDICOM") -> object:
    ae = AE(ae_title=ae_title)
    for cx in contexts:
        ae.add_requested_context(cx)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS", evt_handlers=NODELAY)
    assert assoc.is_established
    return assoc


def test_storescu_is_served_by_the_fast_path(server: Server, tmp_path: Path) -> None:
    files = []
    for i, ds in enumerate(ct_series(700, 3, rows=32, columns=32)):
        files.append(tmp_path / f"{i}.dcm")
        files[-1].write_bytes(encode(ds))
    r = storescu(server.port, files, "-d")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert f"Their Implementation Version Name: {IMPLEMENTATION_VERSION_NAME}" in out, out
    series = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    assert len(image_uids(server.port, {"SeriesInstanceUID": series})) == 3


def test_pynetdicom_stores_and_echoes_on_one_fast_path_association(server: Server) -> None:
    datasets = list(ct_series(701, 4, rows=32, columns=32))
    assoc = _associate(server.port, CTImageStorage, Verification)
    try:
        assert assoc.acceptor.implementation_version_name == IMPLEMENTATION_VERSION_NAME
        assert assoc.send_c_echo().Status == 0
        for ds in datasets[:2]:
            assert assoc.send_c_store(ds).Status == 0
        assert assoc.send_c_echo().Status == 0
        for ds in datasets[2:]:
            assert assoc.send_c_store(ds).Status == 0
    finally:
        assoc.release()
    got = image_uids(server.port, {"SeriesInstanceUID": str(datasets[0].SeriesInstanceUID)})
    assert set(got) == {str(ds.SOPInstanceUID) for ds in datasets}


def test_storage_plus_query_is_served_by_the_fast_path_and_both_work(server: Server) -> None:
    ds = next(ct_series(702, 1, rows=16, columns=16))
    assoc = _associate(server.port, CTImageStorage, StudyRootQueryRetrieveInformationModelFind)
    try:
        assert assoc.acceptor.implementation_version_name == IMPLEMENTATION_VERSION_NAME
        assert assoc.send_c_store(ds).Status == 0
        query = pydicom.Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ds.StudyInstanceUID
        replies = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
        statuses = [s.Status for s, _ in replies]
        assert statuses == [0xFF00, 0x0000]
    finally:
        assoc.release()


def test_an_association_that_may_get_stays_on_the_fast_path(server: Server) -> None:
    assoc = _associate(server.port, StudyRootQueryRetrieveInformationModelFind,
                       StudyRootQueryRetrieveInformationModelGet, Verification)  # fmt: skip
    try:
        assert assoc.acceptor.implementation_version_name == IMPLEMENTATION_VERSION_NAME
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()


def test_an_association_with_a_class_the_fast_path_does_not_serve_goes_to_pynetdicom(
    server: Server,
) -> None:
    assoc = _associate(server.port, StudyRootQueryRetrieveInformationModelFind,
                       ModalityWorklistInformationFind, Verification)  # fmt: skip
    try:
        assert assoc.acceptor.implementation_version_name != IMPLEMENTATION_VERSION_NAME
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()


def test_the_fast_path_rejects_unsupported_contexts_and_accepts_the_rest(server: Server) -> None:
    """A storage-only association proposing a syntax we lack: that context is rejected (0x04)."""
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(CTImageStorage, ["1.2.3.4.5.6.7.8.9"])  # no such transfer syntax
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS", evt_handlers=NODELAY)
    assert assoc.is_established
    try:
        assert assoc.acceptor.implementation_version_name == IMPLEMENTATION_VERSION_NAME
        assert [cx.result for cx in assoc.rejected_contexts] == [0x04]
        assert [cx.transfer_syntax[0] for cx in assoc.accepted_contexts] == ["1.2.840.10008.1.2.1"]
        ds = next(ct_series(703, 1, rows=16, columns=16))
        assert assoc.send_c_store(ds).Status == 0
    finally:
        assoc.release()


def test_the_sessions_storescu_files_all_went_through_the_fast_path(
    server: Server, stored: Stored
) -> None:
    """The CT (two syntaxes) and corpus (ten syntaxes) that the retrieve tests get back."""
    line = r"fast path: association from STORESCU at \S+ ended, (\d+) instances stored"
    counts = re.findall(line, server.log())
    assert sum(map(int, counts)) >= len(stored.all), server.log()[-3000:]


def test_an_associate_rq_too_long_to_peek_goes_to_pynetdicom(server: Server) -> None:
    """An RQ bigger than the kernel lets MSG_PEEK see must not wait out the ARTIM timer."""
    from pynetdicom.presentation import AllStoragePresentationContexts

    from engine.net.fastpath import ASSOCIATE_RQ_MAX_BYTES

    # 127 storage contexts with 40 transfer syntaxes each: about 300 KB, past any peek
    extra = [f"1.2.826.0.1.3680043.10.543.{10**29 + i}" for i in range(39)]
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.network_timeout = 20
    for cx in AllStoragePresentationContexts[:127]:
        ae.add_requested_context(cx.abstract_syntax, ["1.2.840.10008.1.2.1", *extra])
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS", evt_handlers=NODELAY)
    try:
        assert assoc.is_established
        assert assoc.acceptor.implementation_version_name != IMPLEMENTATION_VERSION_NAME
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()
    assert 4 * ASSOCIATE_RQ_MAX_BYTES < 127 * 40 * 60  # 61 bytes a transfer syntax item
