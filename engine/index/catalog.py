"""The Patient/Study/Series/Instance hierarchy in LMDB, with counters and study indexes.

Every change happens inside a write transaction handed in by the caller, so
that a batch of stores, the segment marks that say how far each segment is
indexed, and the counters all commit together or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.attributes import level_of
from engine.index import changes
from engine.index import keys as K
from engine.index.env import IndexEnv
from engine.query.plan import index_keys
from engine.scan import Value

_LEVEL_OF: dict[str, str] = {}  # keyword -> level, filled lazily for speed


def _split_levels(attrs: dict[str, Value]) -> dict[str, dict[str, Value]]:
    out: dict[str, dict[str, Value]] = {"PATIENT": {}, "STUDY": {}, "SERIES": {}, "IMAGE": {}}
    for kw, value in attrs.items():
        lvl = _LEVEL_OF.get(kw)
        if lvl is None:
            lvl = _LEVEL_OF[kw] = level_of(kw)
        if lvl:
            out[lvl][kw] = value
    return out


_COUNTED = ("instances", "series", "studies")  # counted by LMDB itself (entries)
_IX_ATTRS = ("PatientID", "PatientName", "StudyDate", "AccessionNumber")


def _ix_signature(study: dict[str, Any]) -> tuple[Any, ...]:
    """The values a study's secondary index keys derive from, modalities last."""
    attrs = study["a"]
    return (*(attrs.get(name) for name in _IX_ATTRS), tuple(sorted(study["mods"])))


@dataclass(slots=True)
class IndexEntry:
    """One stored instance, as the index records it."""

    sop_uid: str
    series_uid: str
    study_uid: str
    patient_id: str
    attrs: dict[str, Value]
    loc: K.Location


@dataclass(slots=True)
class ApplyResult:
    stored: int = 0
    duplicates: int = 0
    stale: int = 0  # an older record of a UID already indexed from a newer one
    deleted: int = 0
    duplicate_uids: list[str] = field(default_factory=list)


_CLAIM = b"claim:"  # meta keys of claims; they sort after the "count:" counters
CLAIM_STALE_NS = 600 * 10**9  # a claim this old is a crashed store's


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Catalog:
    """Reads and writes the hierarchy; all writes take an open write transaction."""

    def __init__(self, env: IndexEnv, *, log_changes: bool = True) -> None:
        self.env = env
        self.db = env.db
        # off in a reindex, which keeps the log of the index it replaces
        self.log_changes = log_changes

    # -- segments ---------------------------------------------------------------

    def allocate_segment(self, txn: Any, state: int = K.SEG_ACTIVE) -> int:
        meta = self.db["meta"]
        raw = txn.get(b"next_segment_id", db=meta)
        seg_id = int(raw) if raw else 1
        txn.put(b"next_segment_id", str(seg_id + 1).encode(), db=meta)
        self.put_segment(txn, seg_id, K.SegmentState(state, 0))
        return seg_id

    def put_segment(self, txn: Any, seg_id: int, state: K.SegmentState) -> None:
        txn.put(K.seg_key(seg_id), K.pack_segment(state), db=self.db["segments"])

    def get_segment(self, txn: Any, seg_id: int) -> K.SegmentState | None:
        raw = txn.get(K.seg_key(seg_id), db=self.db["segments"])
        return K.unpack_segment(raw) if raw else None

    def segments(self) -> dict[int, K.SegmentState]:
        with self.env.read() as txn:
            cur = txn.cursor(db=self.db["segments"])
            return {int.from_bytes(k, "big"): K.unpack_segment(v) for k, v in cur}

    def delete_segment(self, txn: Any, seg_id: int) -> None:
        txn.delete(K.seg_key(seg_id), db=self.db["segments"])

    def _account(self, txn: Any, seg_id: int, live: int, dead: int) -> None:
        st = self.get_segment(txn, seg_id)
        if st is None:
            return
        st.live_bytes = max(0, st.live_bytes + live)
        st.dead_bytes += dead
        self.put_segment(txn, seg_id, st)

    def mark_indexed(self, txn: Any, seg_id: int, upto: int, synced: int) -> None:
        """Record that the segment is indexed to `upto`, and known durable to `synced`."""
        st = self.get_segment(txn, seg_id) or K.SegmentState(K.SEG_ACTIVE, 0)
        if upto > st.indexed_upto:
            old_synced = st.indexed_upto if st.synced_upto is None else st.synced_upto
            st.indexed_upto = upto
            st.synced_upto = max(old_synced, synced)
            self.put_segment(txn, seg_id, st)

    # -- counters ---------------------------------------------------------------

    def bump(self, txn: Any, name: str, by: int = 1) -> None:
        key = b"count:" + name.encode()
        raw = txn.get(key, db=self.db["meta"])
        txn.put(key, str((int(raw) if raw else 0) + by).encode(), db=self.db["meta"])

    def counters(self) -> dict[str, int]:
        """Kept counters (bytes, duplicates) and the entry counts of the hierarchy."""
        with self.env.read() as txn:
            out = {name: int(txn.stat(self.db[name])["entries"]) for name in _COUNTED}
            cur = txn.cursor(db=self.db["meta"])
            if cur.set_range(b"count:"):
                for k, v in cur:
                    if not k.startswith(b"count:"):
                        break
                    out[k[6:].decode()] = int(v)
            return out

    # -- claims of duplicate_policy = "reject" ------------------------------------

    def claim(self, txn: Any, sop_uid: str, pid: int, now_ns: int) -> bool:
        """Claim `sop_uid` for one store; False if it is stored or claimed by a live store.

        Under ``duplicate_policy = "reject"`` two workers storing the same UID
        at once would both pass a read-only check and both be acknowledged.
        The claim is taken in a write transaction (LMDB's one writer
        serialises the workers) before anything is appended, so the second
        store is refused without leaving a record in the log that a reindex
        would bring back. A claim of a dead process, or older than
        ``CLAIM_STALE_NS``, is ignored.
        """
        if self.location(txn, sop_uid) is not None:
            return False
        key = _CLAIM + sop_uid.encode()
        raw = txn.get(key, db=self.db["meta"])
        if raw:
            owner, at = (int(v) for v in raw.split(b" "))
            if _alive(owner) and now_ns - at < CLAIM_STALE_NS:
                return False
        txn.put(key, b"%d %d" % (pid, now_ns), db=self.db["meta"])
        return True

    def release(self, txn: Any, sop_uid: str) -> None:
        """Drop the claim on `sop_uid` (it is indexed now, or its store failed)."""
        txn.delete(_CLAIM + sop_uid.encode(), db=self.db["meta"])

    # -- instances --------------------------------------------------------------

    def lookup(self, txn: Any, sop_uid: str) -> tuple[K.Location, dict[str, Any]] | None:
        raw = txn.get(sop_uid.encode(), db=self.db["instances"])
        return K.unpack_instance(raw) if raw else None

    def instance_doc(self, txn: Any, sop_uid: str) -> dict[str, Any] | None:
        """An instance's index document without its location (what a query reads)."""
        raw = txn.get(sop_uid.encode(), db=self.db["instances"])
        return K.instance_doc(raw) if raw else None

    def location(self, txn: Any, sop_uid: str) -> K.Location | None:
        raw = txn.get(sop_uid.encode(), db=self.db["instances"])
        return K.unpack_location(raw) if raw else None

    def put(self, txn: Any, e: IndexEntry, result: ApplyResult) -> None:
        """Index one stored instance (the newest record of a UID wins)."""
        old = self.lookup(txn, e.sop_uid)
        if old is not None:
            old_loc, old_doc = old
            if (old_loc.segment_id, old_loc.offset) == (e.loc.segment_id, e.loc.offset):
                return  # replay of a record already indexed
            if old_loc.stored_at_ns > e.loc.stored_at_ns:
                self._account(txn, e.loc.segment_id, 0, e.loc.total)
                result.stale += 1
                return
            result.duplicates += 1
            result.duplicate_uids.append(e.sop_uid)
            self.bump(txn, "duplicates")
            self._remove_instance(txn, e.sop_uid, old_loc, old_doc)
        levels = _split_levels(e.attrs)
        self._add_instance(txn, e, levels)
        result.stored += 1
        if self.log_changes:
            changes.append(txn, self.db, changes.STORED, e.sop_uid)

    def _add_instance(self, txn: Any, e: IndexEntry, levels: dict[str, dict[str, Value]]) -> None:
        db = self.db
        doc = {"series": e.series_uid, "study": e.study_uid, "a": levels["IMAGE"]}
        txn.put(e.sop_uid.encode(), K.pack_instance(e.loc, doc), db=db["instances"])
        txn.put(K.child_key(e.series_uid, e.sop_uid), b"", db=db["series_instances"])
        self._account(txn, e.loc.segment_id, e.loc.total, 0)
        self.bump(txn, "bytes", e.loc.total)

        patient = self._doc(txn, "patients", K.patient_key(e.patient_id)) or {
            "a": {}, "n_studies": 0, "n_series": 0, "n": 0,
        }  # fmt: skip
        study = self._doc(txn, "studies", e.study_uid)
        old_sig = None if study is None else _ix_signature(study)
        if study is None:
            study = {
                "patient": e.patient_id,
                "a": {},
                "n_series": 0,
                "n": 0,
                "mods": {},
                "classes": {},
            }
            txn.put(
                K.child_key(K.patient_key(e.patient_id), e.study_uid), b"", db=db["patient_studies"]
            )
            patient["n_studies"] += 1
        series = self._doc(txn, "series", e.series_uid)
        if series is None:
            series = {"study": e.study_uid, "a": {}, "n": 0}
            txn.put(K.child_key(e.study_uid, e.series_uid), b"", db=db["study_series"])
            study["n_series"] += 1
            patient["n_series"] += 1
            modality = str(levels["SERIES"].get("Modality", ""))
            if modality:
                study["mods"][modality] = study["mods"].get(modality, 0) + 1
        series["n"] += 1
        series["a"].update(levels["SERIES"])
        study["n"] += 1
        sop_class = str(levels["IMAGE"].get("SOPClassUID", ""))
        if sop_class:
            study["classes"][sop_class] = study["classes"].get(sop_class, 0) + 1
        patient["n"] += 1
        patient["a"].update(levels["PATIENT"])
        study["a"].update(levels["STUDY"])
        study["a"].update(levels["PATIENT"])  # patient keys are study-level return keys too
        if old_sig is None or _ix_signature(study) != old_sig:  # most stores change no index key
            old_ix = set() if old_sig is None else self._ix_entries_of(e.study_uid, old_sig)
            self._reindex_study(txn, e.study_uid, study, old_ix)
        self._put_doc(txn, "series", e.series_uid, series)
        self._put_doc(txn, "studies", e.study_uid, study)
        self._put_doc(txn, "patients", K.patient_key(e.patient_id), patient)

    def relocate(self, txn: Any, sop_uid: str, old: K.Location, new: K.Location) -> bool:
        """Point an instance at its compacted copy, if it still lives at `old`."""
        raw = txn.get(sop_uid.encode(), db=self.db["instances"])
        if raw is None or K.unpack_location(raw) != old:
            return False  # deleted or replaced meanwhile: the copy is dead
        txn.put(
            sop_uid.encode(),
            K.pack_instance(new, K.unpack_instance(raw)[1]),
            db=self.db["instances"],
        )
        return True

    def apply_tombstone(self, txn: Any, sop_uid: str, stamp: int, result: ApplyResult) -> None:
        """Record a deletion at `stamp`; delete the instance if its record is older.

        The marker stays in the index, so a record of the UID older than the
        deletion, replayed later from any segment (a crashed writer's tail),
        is recognised as deleted (:meth:`deleted_at`).
        """
        key, db = sop_uid.encode(), self.db["tombstones"]
        if self.deleted_at(txn, sop_uid) < stamp:
            txn.put(key, K.TOMBSTONE.pack(stamp), db=db)
        loc = self.location(txn, sop_uid)
        if loc is not None and loc.stored_at_ns < stamp:
            self.delete(txn, sop_uid, result)

    def deleted_at(self, txn: Any, sop_uid: str) -> int:
        """The stamp of the newest deletion of `sop_uid` (0: never deleted)."""
        raw = txn.get(sop_uid.encode(), db=self.db["tombstones"])
        return int(K.TOMBSTONE.unpack(raw)[0]) if raw else 0

    def delete(self, txn: Any, sop_uid: str, result: ApplyResult) -> K.Location | None:
        """Remove one instance and whatever becomes empty above it."""
        old = self.lookup(txn, sop_uid)
        if old is None:
            return None
        self._remove_instance(txn, sop_uid, *old)
        result.deleted += 1
        if self.log_changes:
            changes.append(txn, self.db, changes.DELETED, sop_uid)
        return old[0]

    def _remove_instance(
        self, txn: Any, sop_uid: str, loc: K.Location, doc: dict[str, Any]
    ) -> None:
        db = self.db
        series_uid, study_uid = doc["series"], doc["study"]
        txn.delete(sop_uid.encode(), db=db["instances"])
        txn.delete(K.child_key(series_uid, sop_uid), db=db["series_instances"])
        self._account(txn, loc.segment_id, -loc.total, loc.total)
        self.bump(txn, "bytes", -loc.total)
        series = self._doc(txn, "series", series_uid)
        study = self._doc(txn, "studies", study_uid)
        if series is None or study is None:
            return  # the hierarchy above was already removed
        patient_key = K.patient_key(study["patient"])
        patient = self._doc(txn, "patients", patient_key)
        old_ix = self._ix_entries(study_uid, study)
        series["n"] -= 1
        study["n"] -= 1
        sop_class = str(doc["a"].get("SOPClassUID", ""))
        if sop_class in study["classes"]:
            study["classes"][sop_class] -= 1
            if study["classes"][sop_class] <= 0:
                del study["classes"][sop_class]
        if patient is not None:
            patient["n"] -= 1
        if series["n"] <= 0:
            txn.delete(series_uid.encode(), db=db["series"])
            txn.delete(K.child_key(study_uid, series_uid), db=db["study_series"])
            study["n_series"] -= 1
            if patient is not None:
                patient["n_series"] -= 1
            modality = str(series["a"].get("Modality", ""))
            if modality in study["mods"]:
                study["mods"][modality] -= 1
                if study["mods"][modality] <= 0:
                    del study["mods"][modality]
        else:
            self._put_doc(txn, "series", series_uid, series)
        if study["n"] <= 0:
            txn.delete(study_uid.encode(), db=db["studies"])
            txn.delete(K.child_key(patient_key, study_uid), db=db["patient_studies"])
            for key in old_ix:
                txn.delete(key, db=db["ix_study"])
            if patient is not None:
                patient["n_studies"] -= 1
        else:
            self._reindex_study(txn, study_uid, study, old_ix)
            self._put_doc(txn, "studies", study_uid, study)
        if patient is not None:
            if patient["n_studies"] <= 0:
                txn.delete(patient_key.encode(), db=db["patients"])
            else:
                self._put_doc(txn, "patients", patient_key, patient)

    # -- study secondary indexes ------------------------------------------------

    def _ix_entries(self, study_uid: str, study: dict[str, Any]) -> set[bytes]:
        return self._ix_entries_of(study_uid, _ix_signature(study))

    def _ix_entries_of(self, study_uid: str, sig: tuple[Any, ...]) -> set[bytes]:
        out = set()
        for field_name, value in zip(_IX_ATTRS, sig, strict=False):
            for norm in index_keys(field_name, value):
                out.add(K.ix_key(field_name, norm, study_uid))
        for modality in sig[-1]:
            for norm in index_keys("ModalitiesInStudy", modality):
                out.add(K.ix_key("ModalitiesInStudy", norm, study_uid))
        return out

    def _reindex_study(
        self, txn: Any, study_uid: str, study: dict[str, Any], old: set[bytes]
    ) -> None:
        new = self._ix_entries(study_uid, study)
        if new == old:
            return
        ix = self.db["ix_study"]
        for key in old - new:
            txn.delete(key, db=ix)
        for key in new - old:
            txn.put(key, b"", db=ix)

    def ix_range(self, txn: Any, field_name: str, lo: str, hi: str | None) -> Iterator[str]:
        """Study UIDs whose normalised `field_name` lies in [lo, hi] (hi None: prefix lo)."""
        tag = K.IX_FIELDS[field_name]
        lo_b = K.ix_value(lo)
        hi_b = None if hi is None else K.ix_value(hi)
        start = tag + lo_b
        cur = txn.cursor(db=self.db["ix_study"])
        if not cur.set_range(start):
            return
        for key in cur.iternext(values=False):
            if not key.startswith(tag):
                return
            value, _, study = key[1:].rpartition(K.SEP)
            if hi_b is None:
                if not value.startswith(lo_b):
                    return
            elif value > hi_b:
                return
            yield study.decode()

    # -- documents and children -------------------------------------------------

    def _doc(self, txn: Any, db_name: str, key: str) -> dict[str, Any] | None:
        raw = txn.get(key.encode(), db=self.db[db_name])
        return K.loads(raw) if raw else None

    def _put_doc(self, txn: Any, db_name: str, key: str, doc: dict[str, Any]) -> None:
        txn.put(key.encode(), K.dumps(doc), db=self.db[db_name])

    def doc(self, txn: Any, db_name: str, key: str) -> dict[str, Any] | None:
        return self._doc(txn, db_name, key)

    def children(self, txn: Any, db_name: str, parent: str) -> Iterator[str]:
        prefix = parent.encode() + K.SEP
        cur = txn.cursor(db=self.db[db_name])
        if not cur.set_range(prefix):
            return
        for key in cur.iternext(values=False):
            if not key.startswith(prefix):
                return
            yield key[len(prefix) :].decode()

    def all_keys(self, txn: Any, db_name: str) -> Iterator[str]:
        cur = txn.cursor(db=self.db[db_name])
        for key in cur.iternext(values=False):
            yield key.decode()

    def keys_after(self, txn: Any, db_name: str, after: str | None, count: int) -> list[str]:
        """Up to `count` keys of a database that sort after `after` (from the start if None)."""
        cur = txn.cursor(db=self.db[db_name])
        if after is None:
            found = cur.first()
        else:
            found = cur.set_range(after.encode())
            if found and cur.key() == after.encode():
                found = cur.next()
        out: list[str] = []
        while found and len(out) < count:
            out.append(cur.key().decode())
            found = cur.next()
        return out

    def all_instances(self, txn: Any) -> Iterator[tuple[str, K.Location, dict[str, Any]]]:
        cur = txn.cursor(db=self.db["instances"])
        for key, value in cur:
            loc, doc = K.unpack_instance(value)
            yield key.decode(), loc, doc
