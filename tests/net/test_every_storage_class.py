"""Every storage SOP class and transfer syntax of the real corpus is accepted (issue 15).

pydicom-data's ``color-pl.dcm`` (RGB, planar configuration 1, Explicit VR
Little Endian) is of the retired Ultrasound Image Storage class that
pynetdicom's list leaves out: its context was refused, on the fast path and
on pynetdicom's. Here pynetdicom proposes one context per (SOP class,
transfer syntax) pair that pydicom's and pydicom-data's files hold, on a
store-only association (the fast path) and a mixed one (pynetdicom), and
sends each file in its own transfer syntax, byte for byte.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID, MediaStorageDirectoryStorage
from pynetdicom import AE, _config
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityWorklistInformationFind,
    Verification,
)
from pynetdicom.status import code_to_category

from engine.archive import open_archive
from tests._helpers import dataset_diff, read
from tests.corpus import real_files
from tests.net._support import Server


def _pairs() -> dict[tuple[str, str], Path]:
    """(SOP class, transfer syntax) -> the first real file of that pair."""
    pairs: dict[tuple[str, str], Path] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in real_files():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            sop_class = str(ds.get("SOPClassUID", ""))
            ts = str(getattr(ds.file_meta, "TransferSyntaxUID", ""))
            storage = "Storage" in UID(sop_class).name
            if storage and sop_class != MediaStorageDirectoryStorage and ts:
                pairs.setdefault((sop_class, ts), path)
    return pairs


PAIRS = _pairs()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Server]:
    server = Server(tmp_path, workers=1).start()
    yield server
    assert server.stop() == 0, server.log()


def test_the_corpus_holds_the_retired_colour_file() -> None:
    assert ("1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.1.2.1") in PAIRS
    assert len(PAIRS) > 40


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the odd values some files hold
@pytest.mark.parametrize("path", ["fast", "pynetdicom"])
def test_every_pair_is_accepted_and_stored_as_sent(
    own_server: Server, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the file's own bytes
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for sop_class, ts in PAIRS:
        ae.add_requested_context(sop_class, ts)
    if path == "pynetdicom":  # a class the fast path does not serve sends it to pynetdicom
        ae.add_requested_context(Verification)
        ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", own_server.port, ae_title="PACS")
    assert assoc.is_established, own_server.log()
    try:
        accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                    for cx in assoc.accepted_contexts}  # fmt: skip
        refused = sorted(f"{UID(c).name} in {UID(t).name} ({p.name})"
                         for (c, t), p in PAIRS.items() if (c, t) not in accepted)  # fmt: skip
        assert not refused, refused
        statuses: dict[Path, tuple[int, Dataset, str]] = {}
        for (_, ts), file in PAIRS.items():
            status = int(assoc.send_c_store(file).Status)
            statuses[file] = (status, read(file.read_bytes()), ts)
    finally:
        assoc.release()
    [color] = [status for file, (status, _, _) in statuses.items() if file.name == "color-pl.dcm"]
    assert color == 0, hex(color)
    assert own_server.stop() == 0, own_server.log()
    sent = Counter(str(ds.SOPInstanceUID) for _, ds, _ in statuses.values())
    archive = open_archive(own_server.archive)
    try:
        for file, (status, ds, ts) in statuses.items():
            name = file.name
            if code_to_category(status) not in ("Success", "Warning"):
                continue  # refused by ingest with a status: nothing was acknowledged
            if sent[str(ds.SOPInstanceUID)] > 1:
                continue  # MR_small.dcm in five syntaxes, one UID: the duplicate policy's
            got = read(archive.get(str(ds.SOPInstanceUID)))
            assert str(got.file_meta.TransferSyntaxUID) == ts, name
            assert dataset_diff(ds, got) is None, (name, dataset_diff(ds, got))
    finally:
        archive.close()
