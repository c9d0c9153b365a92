"""Archive: store, get, find, delete, verify, compact; the engine's one entry point.

An archive is a folder::

    ARCHIVE/segments/0000000001.seg   append-only records (engine.storage)
    ARCHIVE/index/                    LMDB (engine.index)

Nothing taken from a dataset ever becomes part of a path: segment names are
numbers the index allocates.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from engine import frames as frames_mod
from engine import maintenance, search
from engine.config import Config, load_config
from engine.errors import (
    ArchiveClosedError,
    CorruptRecordError,
    DuplicateInstanceError,
    EngineError,
    InvalidInstanceError,
    NotFoundError,
    ReadOnlyError,
    StorageIOError,
)
from engine.index import changes
from engine.index import replica as replica_state
from engine.index.catalog import ApplyResult, Catalog
from engine.index.env import IndexEnv
from engine.index.keys import Location
from engine.ingest import prepare, tombstone
from engine.part10 import PREAMBLE, assemble, dataset_offset
from engine.storage.format import NO_PIXEL
from engine.storage.segment import SegmentReader, StoredRecord
from engine.writer import WritePath, _Pending

log = logging.getLogger("engine.archive")
ROLE_RECHECK_S = 0.2  # how soon a store sees that `pacs promote` made a replica writable

Source = str | os.PathLike[str] | bytes | bytearray | memoryview | Dataset


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What a store did: the instance's UIDs, whether it replaced one, its record size."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax: str
    duplicate: bool
    stored_bytes: int


class Archive:
    """A DICOM archive in one folder: segment files plus an LMDB index.

    Thread-safe: concurrent stores share fsyncs (group commit). Open one
    Archive per process; several processes may open the same folder.
    """

    def __init__(self, path: str | os.PathLike[str], config: Config | None = None) -> None:
        self.path = Path(path)
        self.config = config or Config()
        self.segments_dir = self.path / "segments"
        self.segments_dir.mkdir(parents=True, exist_ok=True)
        self.env = IndexEnv(
            self.path / "index", self.config.index_map_bytes, sync=self.config.durability == "fsync"
        )
        self.catalog = Catalog(self.env)
        self.reader = SegmentReader(self.segments_dir)
        self.writes = WritePath(self.segments_dir, self.catalog, self.config, self._index_batch)
        self._closed = False
        self._maintenance_lock = threading.Lock()
        self._primary: str | None = None
        self._role_read_at = float("-inf")
        self.recovery = maintenance.recover(self)
        self._stop = threading.Event()
        self._background: threading.Thread | None = None
        if self.config.idle_recompress_s > 0:
            self._background = threading.Thread(
                target=self._recompress_when_idle, name="engine-recompress", daemon=True
            )
            self._background.start()

    # -- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        """Flush and seal the active segment, then close files and the index."""
        if self._closed:
            return
        self._stop.set()
        if self._background is not None:
            self._background.join()
        self.writes.close()
        self.reader.close()
        self.env.close()
        self._closed = True

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ArchiveClosedError("the archive is closed")

    def replica_of(self) -> str | None:
        """The primary this archive follows as a read-only replica, or None (read at most
        every ROLE_RECHECK_S: `pacs promote` reaches the stores of running workers)."""
        now = time.monotonic()
        if now - self._role_read_at >= ROLE_RECHECK_S:
            with self.env.read() as txn:
                doc = replica_state.state(txn, self.env.db)
            self._primary = None if doc is None else str(doc["primary"])
            self._role_read_at = now
        return self._primary

    def _check_writable(self) -> None:
        primary = self.replica_of()
        if primary is not None:
            raise ReadOnlyError(f"read-only replica of {primary}; store to the primary")

    # -- store ---------------------------------------------------------------------

    def store(
        self,
        source: Source,
        *,
        transfer_syntax: str | None = None,
        source_ae: str | None = None,
    ) -> StoreResult:
        """Store one instance durably; return once it is on disk and indexed.

        Parameters
        ----------
        source
            A Part 10 file (path or bytes), a bare dataset's bytes with
            `transfer_syntax`, or a pydicom Dataset.
        transfer_syntax
            The transfer syntax of a bare dataset (as negotiated in a
            presentation context); ignored when the bytes carry File Meta.
        source_ae
            Calling AE title, recorded in the File Meta Information we write.

        Raises
        ------
        engine.errors.InvalidInstanceError
            The bytes are not storable (not DICOM, malformed, a bad or missing
            UID, an unknown transfer syntax); nothing was written.
        engine.errors.StorageIOError
            The disk failed or is full; the instance was not acknowledged.
        """
        return self.wait(self.submit(source, transfer_syntax=transfer_syntax, source_ae=source_ae))

    def submit(
        self, source: Source, *, transfer_syntax: str | None = None, source_ae: str | None = None
    ) -> _Pending:
        """Append without waiting: the first half of :meth:`store`, for pipelined callers."""
        self._check_open()
        self._check_writable()
        data = _load(source)
        prepared = prepare(data, self.config, transfer_syntax, source_ae)
        if self.config.duplicate_policy != "reject":
            return self.writes.submit(prepared)
        uid = prepared.entry.sop_uid
        if not self.env.call(self.catalog.claim, uid, os.getpid(), time.time_ns()):
            raise DuplicateInstanceError(f"stored already: SOPInstanceUID {uid}")
        try:
            return self.writes.submit(prepared)
        except BaseException:
            self.env.call(self.catalog.release, uid)
            raise

    def wait(self, pending: _Pending) -> StoreResult:
        """Wait until a submitted instance is durable and indexed: the second half of store."""
        try:
            self.writes.wait(pending)
        except BaseException:
            if self.config.duplicate_policy == "reject" and pending.entry is not None:
                with contextlib.suppress(EngineError):
                    self.env.call(self.catalog.release, pending.entry.sop_uid)
            raise
        e = pending.entry
        assert e is not None  # only instance records are waited on here
        return StoreResult(
            e.sop_uid, e.series_uid, e.study_uid, str(e.attrs["TransferSyntaxUID"]),
            pending.duplicate, e.loc.total,
        )  # fmt: skip

    def _index_batch(self, txn: Any, items: list[_Pending], result: ApplyResult) -> None:
        for p in items:
            if p.entry is not None:
                self.catalog.put(txn, p.entry, result)
                if self.config.duplicate_policy == "reject":
                    self.catalog.release(txn, p.entry.sop_uid)
            elif p.tombstone is not None:
                self.catalog.apply_tombstone(txn, *p.tombstone, result)

    # -- read ----------------------------------------------------------------------

    def _locate(self, sop_instance_uid: str) -> Location:
        with self.env.read() as txn:
            loc = self.catalog.location(txn, sop_instance_uid)
        if loc is None:
            raise NotFoundError(f"no instance with SOPInstanceUID {sop_instance_uid}")
        return loc

    def _read(self, sop_instance_uid: str, *, with_pixel: bool) -> StoredRecord:
        self._check_open()
        loc = self._locate(sop_instance_uid)
        length = loc.total if with_pixel else loc.meta_span
        try:
            rec = self.reader.read_record(loc.segment_id, loc.offset, length, with_pixel=with_pixel)
        except (StorageIOError, CorruptRecordError):
            again = self._locate(sop_instance_uid)  # compaction may have moved it
            if again == loc:
                raise
            loc, length = again, again.total if with_pixel else again.meta_span
            rec = self.reader.read_record(loc.segment_id, loc.offset, length, with_pixel=with_pixel)
        if rec.uid != sop_instance_uid:
            raise CorruptRecordError(
                str(loc.segment_id),
                loc.offset,
                f"record holds {rec.uid}, index says {sop_instance_uid}",
            )
        return rec

    def get(self, sop_instance_uid: str) -> bytes:
        """The stored instance as a Part 10 file, in the transfer syntax it was received in."""
        rec = self._read(sop_instance_uid, with_pixel=True)
        return assemble(rec.meta, rec.pixel, rec.header.pixel_at)

    def check(self, sop_instance_uid: str) -> str:
        """The stored instance's SOP Class UID, once its whole record has been read back from
        disk with its checksum verified: what Storage Commitment answers for.

        Raises
        ------
        engine.errors.NotFoundError
            It is not stored.
        engine.errors.CorruptRecordError, engine.errors.StorageIOError
            Its bytes cannot be read back as they were stored.
        """
        self._read(sop_instance_uid, with_pixel=True)
        with self.env.read() as txn:
            doc = self.catalog.instance_doc(txn, sop_instance_uid)
        if doc is None:  # deleted meanwhile
            raise NotFoundError(f"no instance with SOPInstanceUID {sop_instance_uid}")
        return str(doc["a"].get("SOPClassUID", ""))

    def get_dataset_parts(self, sop_instance_uid: str) -> list[memoryview]:
        """The stored data set, without preamble or File Meta Information, as the parts it is in.

        What a C-STORE sub-operation sends (PS3.7 9.1.1: the data set in the
        accepted syntax, PS3.10 group 0002 left out): the metadata before
        Pixel Data, Pixel Data, the metadata after it; nothing is joined.
        """
        rec = self._read(sop_instance_uid, with_pixel=True)
        meta = memoryview(rec.meta)
        start = dataset_offset(meta, preamble=False)
        if not rec.pixel:
            return [meta[start:]]
        at = rec.header.pixel_at
        return [meta[start:at], memoryview(rec.pixel), meta[at:]]

    def get_metadata(self, sop_instance_uid: str) -> Dataset:
        """The stored instance without Pixel Data, read from the metadata part alone."""
        data, _ = self.read_metadata(sop_instance_uid)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a stored odd value is not the caller's problem
            return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)

    def read_metadata(self, sop_instance_uid: str) -> tuple[bytes, bool]:
        """The metadata part as Part 10 bytes (no Pixel Data), and whether the instance has pixels.

        One positioned read of the record's metadata span, checksum verified;
        pixel bytes are never read. For callers that encode the dataset
        themselves (WADO-RS metadata writes DICOM JSON).
        """
        rec = self._read(sop_instance_uid, with_pixel=False)
        return PREAMBLE + bytes(rec.meta), rec.header.pixel_at != NO_PIXEL

    def frames(self, sop_instance_uid: str) -> frames_mod.FrameSource:
        """The frames of one instance's Pixel Data, as stored, read one at a time.

        See :mod:`engine.frames`: native pixels kept raw are read with one
        positioned read per frame; otherwise the record is read once.

        Raises
        ------
        engine.errors.NotFoundError
            No such instance, or it has no Pixel Data.
        """
        self._check_open()
        loc = self._locate(sop_instance_uid)
        return frames_mod.open_frames(self, sop_instance_uid, loc)

    def find(
        self,
        level: str,
        query: Mapping[str, Any] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> Iterator[Dataset]:
        """Yield one Dataset per match at `level`, holding exactly the requested keys.

        `query` maps keywords to DICOM query strings (PS3.4 C.2.2.2: single
        value, ``*``/``?`` wildcards, ``lo-hi`` ranges, backslash UID lists,
        ``""`` to return a key without matching on it). The unique key of the
        level is always returned.
        """
        self._check_open()
        yield from search.find(self, level, dict(query or {}), limit=limit, offset=offset)

    def find_attrs(
        self,
        level: str,
        query: Mapping[str, Any] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> Iterator[dict[str, Any]]:
        """Like :meth:`find`, yielding plain dicts of the requested keys instead of Datasets.

        A key without a stored value is absent from its dict. Same matching,
        paging and errors as :meth:`find`; no pydicom object is built.
        """
        self._check_open()
        yield from search.find_attrs(self, level, dict(query or {}), limit=limit, offset=offset)

    def instances_of(
        self,
        *,
        patient_id: str | None = None,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> list[str]:
        """SOP Instance UIDs under one patient, study, series or instance."""
        self._check_open()
        return search.instances_of(
            self, patient_id, study_instance_uid, series_instance_uid, sop_instance_uid
        )

    # -- delete and maintenance -----------------------------------------------------

    def delete(
        self,
        *,
        patient_id: str | None = None,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> int:
        """Delete every instance under the given identifier; return how many.

        Each deletion appends a durable tombstone before the index forgets the
        instance, so a reindex never brings it back.

        Raises
        ------
        engine.errors.ReadOnlyError
            This archive is a replica: delete on its primary.
        """
        self._check_writable()
        uids = self.instances_of(
            patient_id=patient_id, study_instance_uid=study_instance_uid,
            series_instance_uid=series_instance_uid, sop_instance_uid=sop_instance_uid,
        )  # fmt: skip
        pendings = []
        for uid in uids:
            parts, total, stamp = tombstone(uid)
            pendings.append(self.writes.submit_tombstone(parts, total, uid, stamp))
        for p in pendings:
            self.writes.wait(p)
        return len(pendings)

    def verify(self, progress: maintenance.Progress | None = None) -> maintenance.VerifyReport:
        """Re-read every record, check every checksum, and check the index against them.

        `progress`, if given, is called with (segments done, segments in all).
        """
        self._check_open()
        return maintenance.verify(self, progress)

    def compact(
        self, *, max_segments: int | None = None, progress: maintenance.Progress | None = None
    ) -> maintenance.CompactReport:
        """Rewrite sealed segments without dead records, recompressed for the cold tier."""
        self._check_open()
        with self._maintenance_lock:
            self.writes.close()  # seal our active segment so that it can be compacted too
            return maintenance.compact(self, max_segments=max_segments, progress=progress)

    def _recompress_when_idle(self) -> None:
        """Background thread: one sealed segment at a time, only while no store comes in.

        The active segment is sealed first once it holds ``idle_seal_min_bytes``.

        Idle means no store or deletion by any process of this archive: the change
        log's head has not moved (another worker's stores, a replica's follower),
        and none of ours is being written.
        """
        idle_ns = int(self.config.idle_recompress_s * 1e9)
        head, moved_ns = -1, time.monotonic_ns()
        while not self._stop.wait(min(self.config.idle_recompress_s, 5.0)):
            with self.env.read() as txn:
                now_head = changes.head(txn, self.env.db)
            now_ns = time.monotonic_ns()
            if now_head != head:
                head, moved_ns = now_head, now_ns
            if now_ns - max(moved_ns, self.writes.last_write_ns) < idle_ns:
                continue
            with self._maintenance_lock:
                try:
                    # what came in the last burst is compressed too, not only full segments
                    self.writes.seal_active(self.config.idle_seal_min_bytes)
                    report = maintenance.compact(self, max_segments=1)
                except EngineError as exc:  # never kill the thread; say it and retry later
                    log.error("background recompression failed: %s", exc)
                    continue
            if report.segments:
                log.info("recompressed segment: %.1f MB -> %.1f MB",
                         report.bytes_before / 1e6, report.bytes_after / 1e6)  # fmt: skip

    def reindex(self, progress: maintenance.Progress | None = None) -> maintenance.ReindexReport:
        """Rebuild the whole index from the segments."""
        self._check_open()
        with self._maintenance_lock:
            return maintenance.reindex(self, progress)

    def stats(self) -> dict[str, Any]:
        """Counts of patients, studies, series, instances, duplicates, bytes and segments."""
        self._check_open()
        return maintenance.stats(self)


def _load(source: Source) -> bytes | bytearray | memoryview:
    if isinstance(source, bytes | bytearray | memoryview):
        return source
    if isinstance(source, Dataset):
        return _encode_dataset(source)
    if isinstance(source, str | os.PathLike):
        try:
            with open(source, "rb") as f:
                return f.read()
        except OSError as exc:
            raise InvalidInstanceError(f"cannot read {os.fspath(source)}: {exc.strerror}") from exc
    raise TypeError(f"cannot store a {type(source).__name__}; give a path, bytes or a Dataset")


def _encode_dataset(ds: Dataset) -> bytes:
    """Encode a pydicom Dataset as a Part 10 file (Explicit VR Little Endian by default)."""
    ds = ds.copy()
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for key, source_key in (
        ("MediaStorageSOPClassUID", "SOPClassUID"),
        ("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
    ):
        if key not in meta and source_key in ds:
            setattr(meta, key, ds[source_key].value)
    ds.file_meta = meta
    buf = io.BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=True)
    except (AttributeError, ValueError, TypeError) as exc:
        raise InvalidInstanceError(f"cannot encode the dataset: {exc}") from exc
    return buf.getvalue()


def open_archive(
    path: str | os.PathLike[str],
    config: Config | str | os.PathLike[str] | None = None,
    **settings: Any,
) -> Archive:
    """Open (or create) the archive in folder `path`.

    `config` is a :class:`Config`, or the path of a TOML file; keyword
    `settings` override single fields (``durability="none"``).
    """
    if config is None or isinstance(config, str | os.PathLike):
        cfg = load_config(None if config is None else os.fspath(config), **settings)
    else:
        cfg = config.updated(**settings)
    return Archive(path, cfg)
