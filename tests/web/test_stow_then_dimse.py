"""`pacs serve`: what a viewer stores through STOW-RS, a DICOM node retrieves with C-GET and C-MOVE.

The other way round from tests/net/test_serve_dicomweb.py: dicomweb-client
(a client we did not write) stores a generated CT series and real files of
pydicom's test set into a running ``pacs serve``; DCMTK's getscu and movescu
(with storescp as the move destination) retrieve them over DIMSE from the
same process, and every instance comes back element for element and
pixel for pixel as it was sent.
"""

from __future__ import annotations

import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from engine.synthetic import ct_series, encode
from tests._helpers import dataset_diff
from tests.net._support import (
    Server,
    dcmtk,
    dcmtk_env,
    free_port,
    identifier_args,
    run_dcmtk,
)
from tests.web._util import corpus_instance, read

NATIVE_FILES = ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm")  # LE, so getscu gets them as sent
PADDING = 0xFFFCFFFC


def _same(src: Dataset, got: Dataset, name: str) -> None:
    skip = frozenset(int(e.tag) for e in src if e.tag.element == 0) | {PADDING}
    diff = dataset_diff(src, got, skip=skip)
    assert diff is None, f"{name}: {diff}"
    assert bytes(got.PixelData) == bytes(src.PixelData), f"{name}: pixel data differs"


def _read_file(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, list[Dataset], int]]:
    """A running server (DIMSE + HTTP), what went in through STOW-RS, and the DEST port."""
    tmp = tmp_path_factory.mktemp("stow-dimse")
    dest_port = free_port()
    config = f'[remotes.DEST]\nhost = "127.0.0.1"\nport = {dest_port}\n'
    server = Server(tmp, workers=2, http=True, config=config).start()
    try:
        datasets = [read(encode(ds)) for ds in ct_series(5151, 3, rows=32, columns=32)]
        datasets += [read(corpus_instance(name, 5100 + i)) for i, name in enumerate(NATIVE_FILES)]
        client = DICOMwebClient(f"http://127.0.0.1:{server.http_port}/dicom-web")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            response = client.store_instances(datasets)
        assert len(response.ReferencedSOPSequence) == len(datasets), response
        assert "FailedSOPSequence" not in response, response
        yield server, datasets, dest_port
    finally:  # a failed STOW must not leave the server running
        assert server.stop() == 0


def test_getscu_retrieves_each_stowed_study(
    sent: tuple[Server, list[Dataset], int], tmp_path: Path
) -> None:
    server, datasets, _ = sent
    for study in sorted({str(ds.StudyInstanceUID) for ds in datasets}):
        out = tmp_path / study
        out.mkdir()
        r = run_dcmtk("getscu", "-S", "-aec", "PACS", "-od", str(out),
                      *identifier_args({"QueryRetrieveLevel": "STUDY",
                                        "StudyInstanceUID": study}),
                      "127.0.0.1", str(server.port))  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        got = {str(g.SOPInstanceUID): g for g in map(_read_file, out.iterdir())}
        want = [ds for ds in datasets if ds.StudyInstanceUID == study]
        assert set(got) == {str(ds.SOPInstanceUID) for ds in want}
        for ds in want:
            _same(ds, got[str(ds.SOPInstanceUID)], str(ds.SOPInstanceUID))


def test_movescu_moves_a_stowed_series_to_storescp(
    sent: tuple[Server, list[Dataset], int], tmp_path: Path
) -> None:
    server, datasets, dest_port = sent
    folder = tmp_path / "dest"
    folder.mkdir()
    storescp = subprocess.Popen(
        [dcmtk("storescp"), "-aet", "DEST", "+xa", "-od", str(folder), str(dest_port)],
        env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert _wait_for_listener(dest_port), "storescp did not come up"
        ct = datasets[0]
        r = run_dcmtk("movescu", "-S", "-aec", "PACS", "-aem", "DEST",
                      *identifier_args({"QueryRetrieveLevel": "SERIES",
                                        "StudyInstanceUID": ct.StudyInstanceUID,
                                        "SeriesInstanceUID": ct.SeriesInstanceUID}),
                      "127.0.0.1", str(server.port))  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        storescp.terminate()
        storescp.wait(30)
    got = {str(g.SOPInstanceUID): g for g in map(_read_file, folder.iterdir())}
    want = [ds for ds in datasets if ds.SeriesInstanceUID == ct.SeriesInstanceUID]
    assert set(got) == {str(ds.SOPInstanceUID) for ds in want}
    for ds in want:
        _same(ds, got[str(ds.SOPInstanceUID)], str(ds.SOPInstanceUID))


def _wait_for_listener(port: int) -> bool:
    """True once something accepts TCP connections on `port` (storescp is up)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False
