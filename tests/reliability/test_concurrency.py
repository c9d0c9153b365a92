"""Ingest, query, retrieve, delete and compact all at once against one server.

While two associations store new series, clients run C-FIND and QIDO-RS,
C-GET (DCMTK getscu) and WADO-RS, and `pacs delete` then `pacs compact`
(the CLI, another process on the same archive) remove a study and rewrite
the sealed segments (small segments, so there are some). Afterwards: every
acknowledged store not deleted is there, every index entry points at a
readable record, `pacs verify` is clean, and the counts at every level are
those of a fresh reindex from the segments alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pydicom.dataset import Dataset

import engine
from engine.synthetic import ct_series, encode
from tests.net._support import Server, run_dcmtk, storescu
from tests.net.find_helpers import image_uids
from tests.reliability._intact import pacs
from tests.reliability._raw import RawPeer
from tests.reliability.conftest import scaled

Figure = Callable[[str, Any], None]
CONFIG = "[archive]\nsegment_max_bytes = 262144\n"  # many sealed segments for compact to rewrite
LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
ROUNDS = scaled(6, 40)
ACCEPT_DICOM = 'multipart/related; type="application/dicom"'


def _preload(port: int, folder: Path, seed: int, slices: int) -> list[Dataset]:
    folder.mkdir(parents=True, exist_ok=True)
    series = list(ct_series(seed, slices, rows=32, columns=32))
    for i, ds in enumerate(series):
        (folder / f"{i}.dcm").write_bytes(encode(ds))
    r = storescu(port, sorted(folder.glob("*.dcm")))
    assert r.returncode == 0, r.stdout + r.stderr
    return series


def _counts(archive_path: Path) -> dict[str, int]:
    with engine.open_archive(archive_path) as archive:
        return {level: sum(1 for _ in archive.find(level, {})) for level in LEVELS}


def _check_every_entry_readable(archive_path: Path) -> int:
    with engine.open_archive(archive_path) as archive:
        uids = [str(ds.SOPInstanceUID) for ds in archive.find("IMAGE", {"SOPInstanceUID": ""})]
        for uid in uids:
            assert archive.get(uid)[128:132] == b"DICM", uid
    return len(uids)


class Work:
    """The concurrent clients; each records what it did and any failure."""

    def __init__(self, srv: Server, kept: list[Dataset], doomed: list[Dataset], tmp: Path):
        self.srv, self.kept, self.doomed, self.tmp = srv, kept, doomed, tmp
        self.kept_uids = {str(ds.SOPInstanceUID) for ds in kept}
        self.study = str(kept[0].StudyInstanceUID)
        self.web = f"http://127.0.0.1:{srv.http_port}/dicom-web"
        self.acked: list[str] = []
        self.done: dict[str, int] = {}
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def run(self, name: str, fn: Callable[[], None]) -> threading.Thread:
        def body() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 -- reported by the test
                with self.lock:
                    self.errors.append(f"{name}: {exc!r}")

        t = threading.Thread(target=body, name=name)
        t.start()
        return t

    def count(self, name: str) -> None:
        with self.lock:
            self.done[name] = self.done.get(name, 0) + 1

    def ingest(self, seed: int) -> None:
        peer = RawPeer(self.srv.port)
        peer.associate(via_pynetdicom=False)
        try:
            for ds in ct_series(seed, ROUNDS * 5, rows=32, columns=32):
                assert peer.store(ds) == 0
                with self.lock:
                    self.acked.append(str(ds.SOPInstanceUID))
                self.count("C-STORE")
        finally:
            peer.close()

    def c_find(self) -> None:
        for _ in range(ROUNDS):
            found = image_uids(self.srv.port, {"StudyInstanceUID": self.study})
            assert self.kept_uids <= set(found), "C-FIND lost instances nobody deleted"
            self.count("C-FIND")

    def qido(self) -> None:
        with httpx.Client(timeout=120) as client:
            for _ in range(ROUNDS):
                for path in ("/studies", f"/studies/{self.study}/instances", "/series"):
                    rsp = client.get(self.web + path)
                    assert rsp.status_code == 200, (path, rsp.status_code, rsp.text[:300])
                    self.count("QIDO-RS")

    def c_get(self) -> None:
        for i in range(ROUNDS):
            out = self.tmp / f"get-{i}"
            out.mkdir()
            r = run_dcmtk("getscu", "-aet", "GETSCU", "-aec", "PACS", "-S", "-k",
                          "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={self.study}",
                          "-od", str(out), "127.0.0.1", str(self.srv.port))  # fmt: skip
            assert r.returncode == 0, r.stdout + r.stderr
            assert len(list(out.iterdir())) >= len(self.kept), "C-GET missed kept instances"
            self.count("C-GET")

    def wado(self) -> None:
        with httpx.Client(timeout=120) as client:
            for _ in range(ROUNDS):
                for ds in (self.kept[0], self.doomed[0], self.doomed[-1]):
                    url = (f"{self.web}/studies/{ds.StudyInstanceUID}/series/"
                           f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}")  # fmt: skip
                    rsp = client.get(url, headers={"accept": ACCEPT_DICOM})
                    doomed = ds is not self.kept[0]
                    assert rsp.status_code == 200 or (doomed and rsp.status_code == 404), (
                        url, rsp.status_code, rsp.text[:300])  # fmt: skip
                    self.count("WADO-RS")

    def delete_then_compact(self) -> None:
        study = str(self.doomed[0].StudyInstanceUID)
        r = pacs("-A", str(self.srv.archive), "delete", "--study", study)
        assert r.returncode == 0, r.stdout + r.stderr
        self.count("delete")
        for _ in range(2):
            r = pacs("-A", str(self.srv.archive), "compact")
            assert r.returncode == 0, r.stdout + r.stderr
            self.count("compact")


def test_ingest_query_retrieve_delete_and_compact_at_once_leave_a_consistent_index(
    tmp_path: Path, figure: Figure
) -> None:
    srv = Server(tmp_path, workers=2, config=CONFIG, http=True).start()
    try:
        kept = _preload(srv.port, tmp_path / "kept", 3300, 10)
        doomed = _preload(srv.port, tmp_path / "doomed", 3301, 30)
        work = Work(srv, kept, doomed, tmp_path)
        threads = [
            work.run("ingest-1", lambda: work.ingest(3310)),
            work.run("ingest-2", lambda: work.ingest(3311)),
            work.run("c-find", work.c_find),
            work.run("qido", work.qido),
            work.run("c-get", work.c_get),
            work.run("wado", work.wado),
            work.run("delete-compact", work.delete_then_compact),
        ]
        for t in threads:
            t.join(600)
        assert not [t.name for t in threads if t.is_alive()], "a client hung"
        assert not work.errors, work.errors
    finally:
        assert srv.stop() == 0, srv.log()[-3000:]
    with engine.open_archive(srv.archive) as archive:
        for uid in [*work.acked, *work.kept_uids]:
            archive.get(uid)  # acknowledged and not deleted: there
        deleted = {"StudyInstanceUID": str(doomed[0].StudyInstanceUID)}
        assert not list(archive.find("STUDY", deleted))
    readable = _check_every_entry_readable(srv.archive)
    r = pacs("-A", str(srv.archive), "verify")
    assert r.returncode == 0, r.stdout + r.stderr
    before = _counts(srv.archive)
    r = pacs("-A", str(srv.archive), "reindex")
    assert r.returncode == 0, r.stdout + r.stderr
    assert _counts(srv.archive) == before, "the index disagrees with its segments"
    assert before["IMAGE"] == readable == len(work.acked) + len(kept)
    figure("operations", dict(work.done))
    figure("instances at the end, per level", before)
