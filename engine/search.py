"""find: walk the hierarchy from the best index, match, and build the requested keys.

Candidates come from the most selective secondary index (engine.query.plan)
or from the parent's child list, and are matched level by level, so a query
with a higher-level key (a SERIES query with StudyDate) joins upwards once
per parent, not once per record. Results are built in pages, each in its own
short read transaction, so a caller that stores while iterating never holds a
reader open across a write.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from engine.attributes import COMPUTED, UNIQUE_KEY, level_of, vr_of
from engine.index import keys as K
from engine.index.catalog import Catalog
from engine.query import compile_query
from engine.query.compiled import Query
from engine.query.plan import EXACT, PREFIX, choose_index

if TYPE_CHECKING:
    from engine.archive import Archive

PAGE = 256
STUDY_INDEXES = ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "AccessionNumber",
                 "ModalitiesInStudy")  # fmt: skip
_PARENT = {"IMAGE": "SERIES", "SERIES": "STUDY", "STUDY": "PATIENT"}
_DB = {"PATIENT": "patients", "STUDY": "studies", "SERIES": "series", "IMAGE": "instances"}


def _level_keys(q: Query, level: str) -> bool:
    return bool(q.matchers_at(level))


def _uids(q: Query, keyword: str) -> list[str] | None:
    m = q.matchers.get(keyword)
    if m is None or m.kind not in ("single", "uid_list"):
        return None
    return sorted(m.uids) if m.uids else [str(v) for v in m.values]


def _study_candidates(cat: Catalog, txn: Any, q: Query) -> list[str] | None:
    uids = _uids(q, "StudyInstanceUID")
    if uids is not None:
        return uids
    choice = choose_index(q, STUDY_INDEXES[1:])
    if choice is None:
        return None
    if choice.kind == EXACT:
        assert choice.keys is not None
        out: list[str] = []
        for key in choice.keys:
            out.extend(cat.ix_range(txn, choice.index, key, key))
    elif choice.kind == PREFIX:
        assert choice.prefix is not None
        out = list(cat.ix_range(txn, choice.index, choice.prefix, None))
    else:
        out = list(cat.ix_range(txn, choice.index, choice.lo or "", choice.hi or "\U0010ffff"))
    return sorted(set(out))


def _candidates(cat: Catalog, txn: Any, q: Query, level: str) -> list[str] | None:
    """Keys at `level` that may match (None: every key); never excludes a match."""
    if level == "PATIENT":
        ids = _uids_or_single(q, "PatientID")
        if ids is not None:
            return [K.patient_key(i) for i in ids]
        return None
    if level == "STUDY":
        return _study_candidates(cat, txn, q)
    own = _uids(q, UNIQUE_KEY[level])
    if own is not None:
        return own
    parent = _PARENT[level]
    if _uids(q, UNIQUE_KEY[parent]) is None and not any(
        _level_keys(q, lvl) for lvl in ("PATIENT", "STUDY", "SERIES") if lvl != level
    ):
        return None  # nothing above narrows it: a full scan
    child_db = "study_series" if level == "SERIES" else "series_instances"
    parents = _candidates(cat, txn, q, parent)
    if parents is None:
        parents = list(cat.all_keys(txn, _DB[parent]))
    out: list[str] = []
    for parent_key in parents:
        out.extend(cat.children(txn, child_db, parent_key))
    return out


def _uids_or_single(q: Query, keyword: str) -> list[str] | None:
    m = q.matchers.get(keyword)
    if m is None or m.kind != "single":
        return None
    return [str(v) for v in m.values]


def _record(
    cat: Catalog, txn: Any, level: str, key: str, cache: dict[str, Any]
) -> dict[str, Any] | None:
    """Merged attributes of one record and its parents, computed keys included."""
    if level == "IMAGE":  # the hot case: one per instance of a series
        doc = cat.instance_doc(txn, key)
        if doc is None:
            return None
        attrs = {**_cached(cat, txn, "SERIES", doc["series"], cache), **doc["a"]}
        attrs["SOPInstanceUID"] = attrs.get("SOPInstanceUID", key)
        return attrs
    else:
        raw = cat.doc(txn, _DB[level], key)
        if raw is None:
            return None
        attrs = _computed(level, raw)
        parent_key = {"SERIES": "study", "STUDY": "patient"}.get(level)
        parent = {}
        if parent_key == "patient":
            parent = _cached(cat, txn, "PATIENT", K.patient_key(raw["patient"]), cache)
        elif parent_key:
            parent = _cached(cat, txn, _PARENT[level], raw[parent_key], cache)
    if level == "PATIENT":
        attrs.setdefault("PatientID", K.patient_id_of(key))
    if parent:
        merged = dict(parent)
        merged.update(attrs)
        attrs = merged
    if level != "PATIENT":
        attrs[UNIQUE_KEY[level]] = attrs.get(UNIQUE_KEY[level], key)
    return attrs


def _cached(cat: Catalog, txn: Any, level: str, key: str, cache: dict[str, Any]) -> dict[str, Any]:
    ck = level + ":" + key
    if ck not in cache:
        cache[ck] = _record(cat, txn, level, key, cache) or {}
    result: dict[str, Any] = cache[ck]
    return result


def _computed(level: str, doc: dict[str, Any]) -> dict[str, Any]:
    attrs = dict(doc["a"])
    if level == "SERIES":
        attrs["NumberOfSeriesRelatedInstances"] = doc["n"]
    elif level == "STUDY":
        attrs["NumberOfStudyRelatedSeries"] = doc["n_series"]
        attrs["NumberOfStudyRelatedInstances"] = doc["n"]
        attrs["ModalitiesInStudy"] = "\\".join(sorted(doc["mods"]))
        attrs["SOPClassesInStudy"] = "\\".join(sorted(doc["classes"]))
    elif level == "PATIENT":
        attrs["NumberOfPatientRelatedStudies"] = doc["n_studies"]
        attrs["NumberOfPatientRelatedSeries"] = doc["n_series"]
        attrs["NumberOfPatientRelatedInstances"] = doc["n"]
    return attrs


def answer_columns(q: Query) -> list[tuple[str, int, str]]:
    """(keyword, tag, VR) of each key a match of `q` returns, in the order requested.

    The requested keys and the level's unique key, without SpecificCharacterSet
    (set only when a value needs it); QueryRetrieveLevel is the query's level.
    """
    columns = []
    for keyword in dict.fromkeys([*q.requested, UNIQUE_KEY[q.level]]):
        if keyword == "SpecificCharacterSet":
            continue
        known = keyword in COMPUTED or level_of(keyword)
        vr = vr_of(keyword) if known else dictionary_VR(keyword)
        tag = tag_for_keyword(keyword)
        assert tag is not None  # compile_query accepts known keywords only
        columns.append((keyword, tag, vr))
    return columns


def _dataset(q: Query, columns: list[tuple[str, int, str]], attrs: dict[str, Any]) -> Dataset:
    ds = Dataset()
    non_ascii = False
    for keyword, tag, vr in columns:
        if keyword == "QueryRetrieveLevel":
            ds.QueryRetrieveLevel = q.level
            continue
        value = attrs.get(keyword)
        if isinstance(value, str) and not value.isascii():
            non_ascii = True
        ds.add_new(tag, vr, "" if value is None else value)
    if non_ascii:
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def find(
    archive: Archive, level: str, query: dict[str, Any], *, limit: int | None, offset: int
) -> Iterator[Dataset]:
    q = compile_query(level, query, case_sensitive_pn=archive.config.case_sensitive_pn)
    columns = answer_columns(q)
    for attrs in _matches(archive, q, limit=limit, offset=offset):
        yield _dataset(q, columns, attrs)


def find_rows(
    archive: Archive, level: str, query: dict[str, Any]
) -> tuple[list[tuple[str, int, str]], Iterator[dict[str, Any]]]:
    """The :func:`answer_columns` of a query and its matches' merged attributes, unbuilt.

    For callers that encode the answers themselves (C-FIND); the query is
    compiled, and so validated, before this returns.
    """
    q = compile_query(level, query, case_sensitive_pn=archive.config.case_sensitive_pn)
    return answer_columns(q), _matches(archive, q, limit=None, offset=0)


def find_attrs(
    archive: Archive, level: str, query: dict[str, Any], *, limit: int | None, offset: int
) -> Iterator[dict[str, Any]]:
    """Like :func:`find`, but each match is a plain dict of the requested keys.

    Values are as the index stores them (str, int, float or tuples; a
    missing value is absent from the dict), for callers that encode them
    themselves (QIDO-RS writes DICOM JSON) and need no pydicom Dataset.
    """
    q = compile_query(level, query, case_sensitive_pn=archive.config.case_sensitive_pn)
    keys = [k for k in dict.fromkeys([*q.requested, UNIQUE_KEY[q.level]]) if k not in _NOT_STORED]
    for attrs in _matches(archive, q, limit=limit, offset=offset):
        yield {k: attrs[k] for k in keys if k in attrs}


_NOT_STORED = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet"})


def _matches(
    archive: Archive, q: Query, *, limit: int | None, offset: int
) -> Iterator[dict[str, Any]]:
    """Merged attributes of each record that matches `q`, after `offset`, at most `limit`."""
    cat = archive.catalog
    with archive.env.read() as txn:
        candidates = _candidates(cat, txn, q, q.level)
    pages = _scan_pages(archive, _DB[q.level]) if candidates is None else _pages(candidates)
    skipped = emitted = 0
    for keys in pages:
        page: list[dict[str, Any]] = []
        with archive.env.read() as txn:
            cache: dict[str, Any] = {}
            for key in keys:
                attrs = _record(cat, txn, q.level, key, cache)
                if attrs is None or not q.matches(attrs):
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                page.append(attrs)
                emitted += 1
                if limit is not None and emitted >= limit:
                    break
        yield from page
        if limit is not None and emitted >= limit:
            return


def _pages(keys: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(keys), PAGE):
        yield keys[start : start + PAGE]


def _scan_pages(archive: Archive, db_name: str) -> Iterator[list[str]]:
    """Every key of a database, a page at a time, each page from its own short transaction."""
    after: str | None = None
    while True:
        with archive.env.read() as txn:
            page = archive.catalog.keys_after(txn, db_name, after, PAGE)
        if not page:
            return
        yield page
        after = page[-1]


def instances_of(archive: Archive, patient_id: str | None, study: str | None, series: str | None,
                 sop: str | None) -> list[str]:  # fmt: skip
    cat = archive.catalog
    with archive.env.read() as txn:
        if sop is not None:
            return [sop] if cat.location(txn, sop) is not None else []
        if series is not None:
            return list(cat.children(txn, "series_instances", series))
        if study is not None:
            studies = [study]
        elif patient_id is not None:
            studies = list(cat.children(txn, "patient_studies", K.patient_key(patient_id)))
        else:
            raise ValueError("name a patient, study, series or instance")
        out: list[str] = []
        for st in studies:
            for se in cat.children(txn, "study_series", st):
                out.extend(cat.children(txn, "series_instances", se))
        return out
