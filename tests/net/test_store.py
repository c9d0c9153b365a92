"""C-ECHO and C-STORE with peers we did not write: DCMTK echoscu/storescu and pynetdicom."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from engine.synthetic import ct_series, encode
from tests.net._support import Server, dcmtk, dcmtk_env, echo, run_dcmtk, storescu
from tests.net.conftest import Stored
from tests.net.find_helpers import image_uids


def test_dcmtk_echoscu_succeeds(server: Server) -> None:
    r = run_dcmtk("echoscu", "-v", "-aec", "PACS", "127.0.0.1", str(server.port))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Received Echo Response (Success)" in r.stdout + r.stderr


def test_pynetdicom_echo_succeeds(server: Server) -> None:
    assert echo(server.port, "PYNETDICOM") == 0


def test_storescu_stored_every_file_in_its_transfer_syntax(server: Server, stored: Stored) -> None:
    found = image_uids(server.port, {"TransferSyntaxUID": ""})
    for uid, path in stored.corpus.items():
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        assert uid in found, f"{path.name} was acknowledged but is not found"
        assert found[uid].TransferSyntaxUID == meta.TransferSyntaxUID, path.name
    assert set(stored.ct) <= set(found)


def test_four_storescu_processes_at_once_lose_nothing(server: Server, tmp_path: Path) -> None:
    sent: dict[str, list[Path]] = {}
    procs = []
    for n in range(4):
        folder = tmp_path / f"batch{n}"
        folder.mkdir()
        files = []
        for i, ds in enumerate(ct_series(100 + n, 25, rows=64, columns=64)):
            files.append(folder / f"{i}.dcm")
            files[-1].write_bytes(encode(ds))
            sent.setdefault(str(ds.SeriesInstanceUID), []).append(files[-1])
        procs.append(subprocess.Popen(
            [dcmtk("storescu"), "-aec", "PACS", "127.0.0.1", str(server.port),
             *map(str, files)], env=dcmtk_env(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        ))  # fmt: skip
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()
    for series, files in sent.items():
        want = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        assert set(image_uids(server.port, {"SeriesInstanceUID": series})) == want


def test_four_pynetdicom_threads_at_once_lose_nothing(server: Server) -> None:
    series = [list(ct_series(200 + n, 15, rows=32, columns=32)) for n in range(4)]
    errors: list[str] = []

    def send(datasets: list[pydicom.Dataset]) -> None:
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS")
        assert assoc.is_established
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if status.Status != 0:
                errors.append(f"{status.Status:04X}")
        assoc.release()

    threads = [threading.Thread(target=send, args=(s,)) for s in series]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for datasets in series:
        got = image_uids(server.port, {"SeriesInstanceUID": str(datasets[0].SeriesInstanceUID)})
        assert set(got) == {str(ds.SOPInstanceUID) for ds in datasets}


def test_storescu_reports_a_file_without_a_series_uid(server: Server, tmp_path: Path) -> None:
    ds = next(ct_series(300, 1, rows=16, columns=16))
    del ds.SeriesInstanceUID
    path = tmp_path / "no-series.dcm"
    path.write_bytes(encode(ds))
    r = storescu(server.port, [path], "-v")
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "Store Response (Error: DataSetDoesNotMatchSOPClass)" in out, out
    assert echo(server.port) == 0
