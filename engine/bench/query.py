"""``pacs bench query``: a fixed mix of C-FIND (and QIDO-RS) queries, p50/p99 per type.

The mix, one query of each type per repeat, values rotating through the
corpus's studies (from ``--corpus DIR``'s manifest, or from one broad
STUDY query and a SERIES query per study made before timing starts):

======================  ===============  ==================================================
type                    level (root)     matching keys
======================  ===============  ==================================================
patient_by_id           PATIENT (pat.)   PatientID=<id>
study_by_patient_id     STUDY (study)    PatientID=<id>
study_by_name_wildcard  STUDY (study)    PatientName=<first 3 letters>*
study_by_date_range     STUDY (study)    StudyDate=<year>0101-<year>1231
study_by_modality       STUDY (study)    ModalitiesInStudy=<modality>
all_studies             STUDY (study)    universal: every study
series_of_study         SERIES (study)   StudyInstanceUID=<uid>
instances_of_series     IMAGE (study)    StudyInstanceUID=<uid>, SeriesInstanceUID=<uid>
======================  ===============  ==================================================

Each query also asks for the usual return keys of its level. Latency runs
from the C-FIND-RQ to the final response; the responses are read by
:mod:`engine.dimse` without being decoded, and the client's own CPU
(``thread_time``) is reported as a share of each type's wall time. With
``--http`` the same mix goes through QIDO-RS (``patient_by_id`` has no
QIDO-RS resource and is left out there).
"""

from __future__ import annotations

import io
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from engine import dimse
from engine.bench.report import metric, percentile
from engine.bench.target import Target
from engine.dimse import C_FIND_RQ

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
SYNTAXES = [str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)]
DISCOVER_STUDIES_MAX = 50  # values for the mix come from at most this many studies
HTTP_TIMEOUT_S = 300.0
RETURN_KEYS = {
    "PATIENT": ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"),
    "STUDY": (
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "PatientName",
        "PatientID",
        "StudyDescription",
        "ModalitiesInStudy",
    ),
    "SERIES": ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription"),
    "IMAGE": ("SOPInstanceUID", "SOPClassUID", "InstanceNumber"),
}
QUERY_TYPES = (
    "patient_by_id",
    "study_by_patient_id",
    "study_by_name_wildcard",
    "study_by_date_range",
    "study_by_modality",
    "all_studies",
    "series_of_study",
    "instances_of_series",
)


@dataclass(frozen=True, slots=True)
class StudyValues:
    """What the mix needs from one study to build its queries."""

    study_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    modality: str
    series_uid: str


@dataclass(frozen=True, slots=True)
class Query:
    """One query of the mix: its type, root, level and the matching keys."""

    kind: str
    root: str
    level: str
    keys: dict[str, str]

    def identifier(self) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = self.level
        for keyword in RETURN_KEYS[self.level]:
            setattr(ds, keyword, "")
        if self.level == "IMAGE":
            ds.StudyInstanceUID = ds.SeriesInstanceUID = ""
        for keyword, value in self.keys.items():
            setattr(ds, keyword, value)
        return ds

    def qido_path(self) -> str | None:
        k = self.keys
        if self.kind == "patient_by_id":
            return None
        if self.kind == "series_of_study":
            return f"/studies/{k['StudyInstanceUID']}/series"
        if self.kind == "instances_of_series":
            return f"/studies/{k['StudyInstanceUID']}/series/{k['SeriesInstanceUID']}/instances"
        return "/studies"

    def qido_params(self) -> dict[str, str]:
        if self.level in ("SERIES", "IMAGE"):
            return {}
        return {key: value for key, value in self.keys.items() if value}

    def qido_query_string(self) -> str:
        """``?key=value&...`` with ``*`` left as it is: RFC 3986 2.2 makes ``*`` reserved, so
        ``%2A`` need not mean the wildcard (Orthanc's plugin matches it literally)."""
        params = self.qido_params()
        return "?" + urllib.parse.urlencode(params, safe="*") if params else ""


def mix(values: StudyValues) -> list[Query]:
    """The documented queries for one study's values."""
    year = values.study_date[:4]
    study, patient = STUDY_ROOT_FIND, PATIENT_ROOT_FIND
    return [
        Query("patient_by_id", patient, "PATIENT", {"PatientID": values.patient_id}),
        Query("study_by_patient_id", study, "STUDY", {"PatientID": values.patient_id}),
        Query(
            "study_by_name_wildcard", study, "STUDY", {"PatientName": values.patient_name[:3] + "*"}
        ),
        Query("study_by_date_range", study, "STUDY", {"StudyDate": f"{year}0101-{year}1231"}),
        Query("study_by_modality", study, "STUDY", {"ModalitiesInStudy": values.modality}),
        Query("all_studies", study, "STUDY", {}),
        Query("series_of_study", study, "SERIES", {"StudyInstanceUID": values.study_uid}),
        Query(
            "instances_of_series",
            study,
            "IMAGE",
            {"StudyInstanceUID": values.study_uid, "SeriesInstanceUID": values.series_uid},
        ),
    ]


def values_from_manifest(manifest: dict[str, Any]) -> list[StudyValues]:
    return [
        StudyValues(
            s["StudyInstanceUID"],
            s["PatientID"],
            s["PatientName"],
            s["StudyDate"],
            s["ModalitiesInStudy"][0],
            s["series"][0]["SeriesInstanceUID"],
        )
        for s in manifest["study_list"]
    ]


def encode_identifier(ds: Dataset, transfer_syntax: str) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = transfer_syntax == str(ImplicitVRLittleEndian)
    write_dataset(fp, ds)
    return fp.getvalue()


def _decode(data: bytes, transfer_syntax: str) -> Dataset:
    implicit = transfer_syntax == str(ImplicitVRLittleEndian)
    return read_dataset(io.BytesIO(data), implicit, True)


# -- C-FIND -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Timings:
    """The samples of one query type."""

    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    matches: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def find_contexts() -> list[tuple[str, list[str]]]:
    return [(STUDY_ROOT_FIND, SYNTAXES), (PATIENT_ROOT_FIND, SYNTAXES)]


def c_find(
    assoc: dimse.Association, root: str, identifier: bytes, *, keep: bool = False
) -> tuple[int, int, list[bytes]]:
    """Send one C-FIND; (matches, final status, the match data sets if `keep`)."""
    cid = assoc.context_for(root)
    assoc.send(cid, dimse.request(C_FIND_RQ, assoc.next_message_id(), root), identifier)
    matches, kept = 0, list[bytes]()
    while True:
        rsp = assoc.read_message(keep_dataset=keep)
        if rsp.status not in dimse.PENDING:
            return matches, rsp.status, kept
        matches += 1
        if keep and rsp.dataset is not None:
            kept.append(rsp.dataset)


def discover(assoc: dimse.Association) -> list[StudyValues]:
    """Values for the mix from the archive itself: a broad STUDY query, then SERIES queries."""
    ts = assoc.accepted[assoc.context_for(STUDY_ROOT_FIND)][1]
    broad = Query("all_studies", STUDY_ROOT_FIND, "STUDY", {}).identifier()
    _, status, found = c_find(assoc, STUDY_ROOT_FIND, encode_identifier(broad, ts), keep=True)
    values = []
    for raw in found[:DISCOVER_STUDIES_MAX]:
        st = _decode(raw, ts)
        series_q = Query(
            "series_of_study", STUDY_ROOT_FIND, "SERIES", {"StudyInstanceUID": st.StudyInstanceUID}
        ).identifier()
        _, _, series = c_find(assoc, STUDY_ROOT_FIND, encode_identifier(series_q, ts), keep=True)
        if not series:
            continue
        se = _decode(series[0], ts)
        modality = str(se.get("Modality", "") or "CT")
        values.append(
            StudyValues(
                str(st.StudyInstanceUID),
                str(st.get("PatientID", "")),
                str(st.get("PatientName", "")),
                str(st.get("StudyDate", "")),
                modality,
                str(se.SeriesInstanceUID),
            )
        )
    if not values:
        raise ValueError(
            f"the archive answered no studies (status {status:#06x}): "
            "ingest a corpus first, or give --corpus DIR"
        )
    return values


def run_dimse(
    target: Target, values: list[StudyValues], repeat: int, advance: Any = None
) -> dict[str, Timings]:
    """Run the mix `repeat` times over one association."""
    timings = {kind: Timings() for kind in QUERY_TYPES}
    with dimse.Association.open(target, find_contexts()) as assoc:
        for query in _queries(values, repeat):
            ts = assoc.accepted[assoc.context_for(query.root)][1]
            identifier = encode_identifier(query.identifier(), ts)
            t = timings[query.kind]
            c0, t0 = time.thread_time(), time.perf_counter()
            matches, status, _ = c_find(assoc, query.root, identifier)
            t.wall_s.append(time.perf_counter() - t0)
            t.cpu_s.append(time.thread_time() - c0)
            t.matches.append(matches)
            if status != 0:
                t.failures.append(f"status {status:#06x}")
            if advance:
                advance(1)
    return timings


def _queries(values: list[StudyValues], repeat: int) -> Iterator[Query]:
    for i in range(repeat):
        yield from mix(values[i % len(values)])


# -- QIDO-RS ----------------------------------------------------------------------------------


def run_qido(
    base_url: str, values: list[StudyValues], repeat: int, advance: Any = None
) -> dict[str, Timings]:
    """The same mix through QIDO-RS, over one keep-alive connection."""
    timings = {kind: Timings() for kind in QUERY_TYPES if kind != "patient_by_id"}
    headers = {"Accept": "application/dicom+json"}
    with httpx.Client(base_url=base_url, timeout=HTTP_TIMEOUT_S, headers=headers) as client:
        for query in _queries(values, repeat):
            path = query.qido_path()
            if path is None:
                continue
            t = timings[query.kind]
            c0, t0 = time.thread_time(), time.perf_counter()
            rsp = client.get(path + query.qido_query_string())
            body = rsp.content
            t.wall_s.append(time.perf_counter() - t0)
            t.cpu_s.append(time.thread_time() - c0)
            if rsp.status_code == 200:
                t.matches.append(len(orjson.loads(body)))
            elif rsp.status_code == 204:  # no content: no match
                t.matches.append(0)
            else:
                t.matches.append(0)
                t.failures.append(f"HTTP {rsp.status_code}: {body[:200]!r}")
            if advance:
                advance(1)
    return timings


def figures(prefix: str, timings: dict[str, Timings]) -> dict[str, dict[str, Any]]:
    """p50/p99, mean matches and the client's CPU share per query type."""
    metrics = {}
    for kind, t in timings.items():
        ms = [x * 1e3 for x in t.wall_s]
        wall = sum(t.wall_s)
        metrics[f"{prefix}.{kind}.p50_ms"] = metric(percentile(ms, 50), "ms", "lower")
        metrics[f"{prefix}.{kind}.p99_ms"] = metric(percentile(ms, 99), "ms", "lower")
        metrics[f"{prefix}.{kind}.matches"] = metric(
            sum(t.matches) / len(t.matches) if t.matches else 0, "responses"
        )
        metrics[f"{prefix}.{kind}.client_cpu_share"] = metric(
            sum(t.cpu_s) / wall if wall else 0, "fraction", "lower"
        )
        metrics[f"{prefix}.{kind}.failures"] = metric(len(t.failures), "queries", "lower")
    return metrics
