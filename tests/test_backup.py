"""Online backup and restore (engine.backup, ``pacs backup`` / ``pacs restore``).

The live test backs up a running ``pacs serve`` twice while two pynetdicom
SCUs keep storing into it: the restored copy verifies clean and holds every
instance acknowledged before the backup's point, byte for byte. The others
take a backup of an archive on its own: incremental into the folder of an
earlier one, after a compaction retired segments, and the refusals.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

import engine
from engine.backup import MANIFEST, BackupError, backup, restore
from engine.errors import NotFoundError
from engine.storage.segment import segment_name
from engine.synthetic import ct_series
from tests._helpers import ROOT
from tests.net._support import Server

STORERS = 2


def _pacs(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, COLUMNS="400"))  # no folded lines  # fmt: skip


class Storer(threading.Thread):
    """Stores CT slices into the server until stopped; notes when each was acknowledged."""

    def __init__(self, port: int, seed: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.seed, self.stop = port, seed, stop
        self.acked: dict[str, float] = {}  # SOP Instance UID -> time.time() of its success

    def run(self) -> None:
        ae = AE(ae_title=f"STORER{self.seed}")
        ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", self.port, ae_title="PACS")
        assert assoc.is_established
        try:
            for n in range(100_000):
                if self.stop.is_set():
                    return
                for ds in ct_series(self.seed * 1000 + n, 5, rows=64, columns=64):
                    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
                    if assoc.send_c_store(ds).Status == 0:
                        self.acked[str(ds.SOPInstanceUID)] = time.time()
        finally:
            assoc.release()


def _point(folder: Path) -> float:
    return dt.datetime.fromisoformat(
        orjson.loads((folder / MANIFEST).read_bytes())["point"]
    ).timestamp()


def _wait_for(storers: list[Storer], count: int) -> None:
    deadline = time.monotonic() + 120
    while sum(len(s.acked) for s in storers) < count:
        assert time.monotonic() < deadline and all(s.is_alive() for s in storers)
        time.sleep(0.05)


def test_a_backup_taken_during_ingest_restores_every_instance_acknowledged_before_it(
    tmp_path: Path,
) -> None:
    server = Server(tmp_path, workers=2).start()
    stop = threading.Event()
    storers = [Storer(server.port, seed, stop) for seed in range(1, STORERS + 1)]
    dest = tmp_path / "backup"
    try:
        for s in storers:
            s.start()
        _wait_for(storers, 100)
        first = _pacs("-A", server.archive, "backup", dest)
        assert first.returncode == 0, first.stderr
        _wait_for(storers, sum(len(s.acked) for s in storers) + 100)
        second = _pacs("-A", server.archive, "backup", dest)  # incremental, still ingesting
        assert second.returncode == 0, second.stderr
        assert "already there" in second.stdout and "backup of" in second.stdout
        point = _point(dest)
        stop.set()
        for s in storers:
            s.join(60)
    finally:
        stop.set()
        assert server.stop() == 0, server.log()
    acked = {uid: at for s in storers for uid, at in s.acked.items()}
    before = [uid for uid, at in acked.items() if at < point]
    after = len(acked) - len(before)
    assert len(before) >= 200 and after > 0  # ingest ran on both sides of the point

    restored = tmp_path / "restored"
    r = _pacs("restore", dest, restored)
    assert r.returncode == 0 and "verify clean" in r.stdout, r.stdout + r.stderr
    with engine.open_archive(restored) as copy, engine.open_archive(server.archive) as source:
        missing = [uid for uid in before if not _has(copy, uid)]
        assert not missing, f"{len(missing)} of {len(before)} acknowledged before the point"
        for uid in before[:: max(1, len(before) // 25)]:
            assert copy.get(uid) == source.get(uid)


def _has(archive: engine.Archive, uid: str) -> bool:
    try:
        archive.get_metadata(uid)
    except NotFoundError:
        return False
    return True


def _store(archive: engine.Archive, seed: int, count: int) -> list[Dataset]:
    series = list(ct_series(seed, count, rows=64, columns=64))
    for ds in series:
        archive.store(ds)
    return series


def test_a_backup_into_an_earlier_one_copies_only_what_changed(tmp_path: Path) -> None:
    src, dest = tmp_path / "archive", tmp_path / "backup"
    with engine.open_archive(src, segment_max_bytes=64 << 10) as archive:
        kept = _store(archive, 1, 20)
        first = backup(archive, dest)
        assert first.segments_copied == first.segments > 1 and first.bytes_unchanged == 0
        gone = _store(archive, 2, 10)
        second = backup(archive, dest)
        assert 0 < second.bytes_copied < second.bytes_unchanged + second.bytes_copied
        assert second.instances == 30 and second.change == first.change + 10
        for ds in gone:
            archive.delete(sop_instance_uid=str(ds.SOPInstanceUID))
        archive.compact()  # segments retired, their live records moved to new ones
        third = backup(archive, dest)
        assert third.segments_removed and third.instances == 20
        originals = {str(ds.SOPInstanceUID): archive.get(str(ds.SOPInstanceUID)) for ds in kept}
    restore(dest, tmp_path / "restored")
    with engine.open_archive(tmp_path / "restored") as copy:
        assert copy.verify().ok
        assert {uid: copy.get(uid) for uid in originals} == originals
        assert not any(_has(copy, str(ds.SOPInstanceUID)) for ds in gone)


def test_backup_and_restore_refuse_folders_that_are_not_theirs(tmp_path: Path) -> None:
    with engine.open_archive(tmp_path / "archive") as archive:
        _store(archive, 3, 2)
        (tmp_path / "busy").mkdir()
        (tmp_path / "busy" / "notes.txt").write_text("keep me")
        for bad, why in ((tmp_path / "busy", "not a backup folder"),
                         (tmp_path / "archive" / "inside", "inside the archive")):  # fmt: skip
            try:
                backup(archive, bad)
            except BackupError as exc:
                assert why in str(exc)
            else:
                raise AssertionError(f"backup into {bad} was not refused")
        backup(archive, tmp_path / "backup")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"
    r = _pacs("restore", tmp_path / "backup", tmp_path / "busy")
    assert r.returncode == 1 and "not empty" in r.stderr
    r = _pacs("restore", tmp_path / "archive", tmp_path / "new")
    assert r.returncode == 1 and "not a backup" in r.stderr
    assert not (tmp_path / "new").exists()


def test_a_kept_copy_that_differs_is_copied_again_and_a_half_swap_is_undone(tmp_path: Path) -> None:
    src, dest = tmp_path / "archive", tmp_path / "backup"
    with engine.open_archive(src) as archive:
        series = _store(archive, 4, 6)
        first = backup(archive, dest)
        (seg_id,) = first.segment_ids
        copy = dest / "segments" / segment_name(seg_id)
        with open(copy, "r+b") as f:  # the kept copy's last bytes no longer the archive's
            f.seek(-10, os.SEEK_END)
            f.write(b"\xaa" * 10)
        os.rename(dest / "index", dest / "index.old")  # as if a backup died mid-swap
        again = backup(archive, dest)
        assert again.bytes_copied == copy.stat().st_size and again.bytes_unchanged == 0
        originals = {str(ds.SOPInstanceUID): archive.get(str(ds.SOPInstanceUID)) for ds in series}
    os.rename(dest / "index", dest / "index.old")
    restore(dest, tmp_path / "restored")  # the previous index is found again here too
    assert not (tmp_path / "restored.restoring").exists()
    with engine.open_archive(tmp_path / "restored") as restored:
        assert restored.verify().ok
        assert {uid: restored.get(uid) for uid in originals} == originals


def test_an_interrupted_first_backup_can_be_run_again(tmp_path: Path) -> None:
    dest = tmp_path / "backup"
    (dest / "segments").mkdir(parents=True)
    (dest / "index.partial").mkdir()  # what a first backup leaves when it dies
    with engine.open_archive(tmp_path / "archive") as archive:
        _store(archive, 5, 3)
        assert backup(archive, dest).instances == 3
    assert (dest / MANIFEST).is_file() and not (dest / "index.partial").exists()
