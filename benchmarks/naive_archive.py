"""The naive archive: the baseline every storage benchmark compares against.

This is how a small archive is usually written: parse each instance with
pydicom, write it back out with ``pydicom.dcmwrite`` to a file whose path is
made of its UIDs (``files/STUDY/SERIES/SOP.dcm``), and insert one SQLite row
per instance, committed per instance. It is a fair baseline, not a straw man:

- ``fsync=True`` matches our ``durability="fsync"``: the file is fsynced and
  SQLite runs with ``synchronous=FULL``, so a store returns only once both
  are on disk. (A new file's directory entry is not fsynced, which a truly
  durable archive would also need: that favours the baseline.)
- ``fsync=False`` matches our ``durability="none"``: no fsync, and
  ``synchronous=OFF``.
- SQLite runs in WAL mode (one sync per commit instead of a rollback
  journal's several) and has an index on every column that C-FIND uses.
- Each thread gets its own connection, so stores from several threads run
  concurrently as far as SQLite's single writer lets them.

Nothing here is used by the engine; it exists only to be measured against.
"""

from __future__ import annotations

import io
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")  # PS3.5 9.1; keeps a UID from being a path trick

COLUMNS = (
    "sop_uid", "series_uid", "study_uid", "patient_id", "patient_name", "study_date",
    "accession", "modality", "path",
)  # fmt: skip

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid      TEXT PRIMARY KEY,
    series_uid   TEXT NOT NULL,
    study_uid    TEXT NOT NULL,
    patient_id   TEXT NOT NULL,
    patient_name TEXT NOT NULL COLLATE NOCASE,  -- so that LIKE 'SMI%' can use the index
    study_date   TEXT NOT NULL,
    accession    TEXT NOT NULL,
    modality     TEXT NOT NULL,
    path         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_study ON instances (study_uid);
CREATE INDEX IF NOT EXISTS ix_patient_id ON instances (patient_id);
CREATE INDEX IF NOT EXISTS ix_patient_name ON instances (patient_name);
CREATE INDEX IF NOT EXISTS ix_study_date ON instances (study_date);
CREATE INDEX IF NOT EXISTS ix_accession ON instances (accession);
CREATE INDEX IF NOT EXISTS ix_modality ON instances (modality);
"""

_INSERT = (
    f"INSERT OR REPLACE INTO instances ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(COLUMNS))})"
)

# The study-level keys the naive C-FIND answers, and the SQL that computes each.
STUDY_KEYS = {
    "StudyInstanceUID": "study_uid",
    "PatientID": "MIN(patient_id)",
    "PatientName": "MIN(patient_name)",
    "StudyDate": "MIN(study_date)",
    "AccessionNumber": "MIN(accession)",
    "ModalitiesInStudy": "GROUP_CONCAT(DISTINCT modality)",
    "NumberOfStudyRelatedInstances": "COUNT(*)",
}
_VR = {"ModalitiesInStudy": "CS", "NumberOfStudyRelatedInstances": "IS"}


class NaiveArchive:
    """Files written by pydicom plus one SQLite row per instance."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.files = self.root / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "index.sqlite"
        self.fsync = fsync
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        conn = self._conn()
        conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, timeout=60, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'OFF'}")
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def close(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._local = threading.local()

    # -- store ------------------------------------------------------------------------

    def store(self, data: bytes) -> str:
        """Parse, write the file, insert and commit its row; return its SOP Instance UID."""
        ds = pydicom.dcmread(io.BytesIO(data))
        sop, series, study = ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID
        for uid in (sop, series, study):
            if not _UID.fullmatch(uid):
                raise ValueError(f"bad UID {uid!r}")
        folder = self.files / study / series
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{sop}.dcm"
        with open(path, "wb") as f:
            pydicom.dcmwrite(f, ds, enforce_file_format=True)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        row = (
            sop, series, study, str(ds.get("PatientID", "")), str(ds.get("PatientName", "")),
            str(ds.get("StudyDate", "")), str(ds.get("AccessionNumber", "")),
            str(ds.get("Modality", "")), str(path.relative_to(self.root)),
        )  # fmt: skip
        conn = self._conn()
        with conn:  # one transaction, committed per instance
            conn.execute(_INSERT, row)
        return str(sop)

    def index_rows(self, rows: Iterable[Sequence[str]]) -> None:
        """Bulk-insert rows (in COLUMNS order) without files: for building a query corpus fast."""
        conn = self._conn()
        with conn:
            conn.executemany(_INSERT, rows)
        conn.execute("ANALYZE")  # give the planner the statistics a tuned deployment would have

    # -- read -------------------------------------------------------------------------

    def path_of(self, sop_uid: str) -> Path:
        row = (
            self._conn()
            .execute("SELECT path FROM instances WHERE sop_uid = ?", (sop_uid,))
            .fetchone()
        )
        if row is None:
            raise KeyError(sop_uid)
        return self.root / row[0]

    def get(self, sop_uid: str) -> bytes:
        """The file's bytes, as a naive archive sends them for a retrieve."""
        with open(self.path_of(sop_uid), "rb") as f:
            return f.read()

    def read_dataset(self, sop_uid: str, *, stop_before_pixels: bool = False) -> Dataset:
        """pydicom.dcmread of the instance's file."""
        return pydicom.dcmread(self.path_of(sop_uid), stop_before_pixels=stop_before_pixels)

    def count(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM instances").fetchone()[0])

    # -- query ------------------------------------------------------------------------

    def find_studies(self, query: Mapping[str, str], *, limit: int | None = None) -> list[Dataset]:
        """A STUDY-level C-FIND in SQL: the study keys in STUDY_KEYS, one Dataset per study.

        Supports what the benchmarks ask: PatientID and AccessionNumber
        (single value), PatientName (single value or ``*``/``?`` wildcard,
        case-insensitive), StudyDate (single value or ``lo-hi`` range) and
        ModalitiesInStudy (single value); an empty value only returns the key.
        """
        where: list[str] = []
        params: list[Any] = []
        for keyword, value in query.items():
            if keyword not in STUDY_KEYS:
                raise ValueError(f"the naive archive cannot query {keyword}")
            if value == "":
                continue
            if keyword == "PatientName" and ("*" in value or "?" in value):
                like = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                where.append("patient_name LIKE ? ESCAPE '\\'")
                params.append(like.replace("*", "%").replace("?", "_"))
            elif keyword == "StudyDate" and "-" in value:
                lo, hi = value.split("-")
                where.append("study_date BETWEEN ? AND ?")
                params += [lo or "00000000", hi or "99999999"]
            elif keyword == "ModalitiesInStudy":
                where.append("study_uid IN (SELECT study_uid FROM instances WHERE modality = ?)")
                params.append(value)
            else:
                where.append(f"{STUDY_KEYS[keyword].removeprefix('MIN(').rstrip(')')} = ?")
                params.append(value)
        keys = list(dict.fromkeys(["StudyInstanceUID", *query]))
        sql = f"SELECT {', '.join(STUDY_KEYS[k] for k in keys)} FROM instances"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " GROUP BY study_uid"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        out = []
        for row in self._conn().execute(sql, params):
            ds = Dataset()
            for keyword, value in zip(keys, row, strict=True):
                if keyword == "ModalitiesInStudy":
                    value = "\\".join(sorted(value.split(",")))
                if keyword in _VR:
                    ds.add_new(keyword, _VR[keyword], value)
                else:
                    setattr(ds, keyword, value)
            out.append(ds)
        return out
