"""QIDO-RS (PS3.18 10.6): search for studies, series and instances.

Resources (PS3.18 10.6.1): ``/studies``, ``/studies/{study}/series``,
``/series``, ``/studies/{study}/series/{series}/instances``,
``/studies/{study}/instances`` and ``/instances``.

Query parameters (PS3.18 8.3.4):

- ``{attributeID}={value}``: attributeID is a keyword (``PatientName``) or a
  tag (``00100010``); the value is matched exactly as a C-FIND key is
  (single value, ``*``/``?`` wildcard, ``lo-hi`` range, UID list with ``,``
  or ``\\``), through :func:`engine.query.compile_query`. A key of a level
  below the one searched (``Modality`` on ``/studies``) is a 400; so is one
  the archive does not index (see :mod:`engine.attributes`).
- ``includefield``: more attributes to return (comma separated, repeatable),
  or ``all`` for every attribute the index holds at the searched level and
  above. An attribute the index does not hold is skipped and named in a
  ``Warning`` header (PS3.18 8.3.4.3).
- ``limit`` / ``offset``: paging. The archive pages through any number of
  matches; one response holds at most ``web.qido_max_limit`` results, and a
  response cut by that cap says so in a ``Warning`` header. Ask for the rest
  with ``offset``.
- ``fuzzymatching``: accepted. No fuzzy (phonetic) matching is done: PN
  values already match case-insensitively, and ``fuzzymatching=true`` adds a
  ``Warning`` header saying only literal matching was performed, as PS3.18
  8.3.4.1 asks of an origin server that does not support it.

Results are ``application/dicom+json`` (PS3.18 F.2) holding the default
attributes of PS3.18 Table 10.6.3-3 (study), 10.6.3-4 (series) and 10.6.3-5
(instance) that the index has, plus RetrieveURL and InstanceAvailability.
An empty result is ``200 []``.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.attributes import BY_KEYWORD, COMPUTED, LEVELS, keywords_at, level_of
from engine.query import RETURN_ONLY
from engine.web.context import (
    WebContext,
    instance_url,
    non_negative,
    path_uid,
    series_url,
    study_url,
)
from engine.web.dicomjson import attrs_to_json
from engine.web.errors import BadRequestError

DICOM_JSON = "application/dicom+json"

# PS3.18 Table 10.6.3-3/4/5 defaults, those the index holds (StudyDescription,
# SeriesDate/Time and BodyPartExamined too: OHIF's study list and display sets use them).
STUDY_DEFAULTS = ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
                  "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate",
                  "PatientSex", "StudyInstanceUID", "StudyID", "StudyDescription",
                  "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")  # fmt: skip
SERIES_DEFAULTS = ("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
                   "SeriesDate", "SeriesTime", "BodyPartExamined",
                   "NumberOfSeriesRelatedInstances", "StudyInstanceUID")  # fmt: skip
INSTANCE_DEFAULTS = ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns",
                     "NumberOfFrames", "StudyInstanceUID", "SeriesInstanceUID")  # fmt: skip
_RANK = {lvl: i for i, lvl in enumerate(LEVELS)}
_CONTROL = frozenset({"limit", "offset", "includefield", "fuzzymatching", "emptyvalueok"})
FUZZY_WARNING = (
    "The fuzzymatching parameter is not supported. Only literal matching has been performed."
)
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")


def _keyword(attribute_id: str) -> str:
    """The keyword for a QIDO attributeID (keyword or 8-digit tag); 400 for anything else."""
    if _TAG.match(attribute_id):
        keyword = keyword_for_tag(int(attribute_id, 16))
        if not keyword:
            raise BadRequestError(f"unknown tag {attribute_id} in the query")
        return str(keyword)
    if "." in attribute_id:
        raise BadRequestError(f"{attribute_id}: sequence matching is not supported here")
    if tag_for_keyword(attribute_id) is None:
        raise BadRequestError(f"{attribute_id!r} is neither a DICOM keyword nor a tag")
    return attribute_id


def _returnable(keyword: str, level: str) -> bool:
    if keyword in ("RetrieveURL", "InstanceAvailability"):
        return True
    if keyword not in BY_KEYWORD and keyword not in COMPUTED:
        return False
    lvl = level_of(keyword)
    return bool(lvl) and _RANK[lvl] <= _RANK[level]


class QidoQuery:
    """A QIDO-RS request parsed: the C-FIND style query, paging and warnings."""

    def __init__(self, level: str, defaults: tuple[str, ...], params: list[tuple[str, str]],
                 path_keys: dict[str, str], max_limit: int) -> None:  # fmt: skip
        self.level = level
        self.limit: int | None = None
        self.offset = 0
        self.warnings: list[str] = []
        match: dict[str, str] = {}
        returned = list(defaults)
        skipped: list[str] = []
        for name, value in params:
            if name in _CONTROL:
                if name == "limit":
                    self.limit = non_negative(name, value)
                elif name == "offset":
                    self.offset = non_negative(name, value)
                elif name == "fuzzymatching":
                    if value.lower() not in ("true", "false"):
                        raise BadRequestError(f"fuzzymatching={value!r}: expected true or false")
                    if value.lower() == "true":
                        self.warnings.append(FUZZY_WARNING)
                elif name == "includefield":
                    for field in filter(None, (f.strip() for f in value.split(","))):
                        if field == "all":
                            for lvl in LEVELS[: _RANK[level] + 1]:
                                returned.extend(keywords_at(lvl))
                            continue
                        kw = _keyword(field)
                        if _returnable(kw, level):
                            returned.append(kw)
                        else:
                            skipped.append(field)
                continue
            kw = _keyword(name)
            if kw in match:
                raise BadRequestError(f"{name} is given twice; use one value or a UID list")
            if kw in RETURN_ONLY:
                continue
            if kw not in BY_KEYWORD and kw not in COMPUTED:
                raise BadRequestError(f"matching on {kw} is not supported: the archive does "
                                      "not index it (see engine.attributes)")  # fmt: skip
            lvl = level_of(kw)
            if not lvl or _RANK[lvl] > _RANK[level]:
                raise BadRequestError(f"{kw} is a {lvl or 'pixel'} attribute: it cannot be "
                                      f"matched in a {level} search")  # fmt: skip
            if BY_KEYWORD.get(kw) is not None and BY_KEYWORD[kw].vr == "UI":
                value = value.replace(",", "\\")  # PS3.18 8.3.4.1: UID list, comma separated
            match[kw] = value
        for kw, value in path_keys.items():
            if match.get(kw, value) != value:
                raise BadRequestError(f"{kw}={match[kw]} contradicts the URL ({value})")
            match[kw] = value
        if skipped:
            self.warnings.append("The following attributes are not supported and are not "
                                 f"returned: {', '.join(skipped)}")  # fmt: skip
        self.query: dict[str, str] = {
            kw: ""
            for kw in dict.fromkeys(returned)
            if kw not in ("RetrieveURL", "InstanceAvailability")
        }
        self.query.update(match)
        self.cap = max_limit if max_limit > 0 else None
        if self.cap is not None and (self.limit is None or self.limit > self.cap):
            self.page = self.cap
            self.cut_by_cap = True
        else:
            self.page = self.limit if self.limit is not None else -1
            self.cut_by_cap = False


def _retrieve_url(base: str, level: str, attrs: dict[str, Any]) -> str | None:
    study = attrs.get("StudyInstanceUID")
    if not isinstance(study, str):
        return None
    if level == "STUDY":
        return study_url(base, study)
    series = attrs.get("SeriesInstanceUID")
    if not isinstance(series, str):
        return None
    if level == "SERIES":
        return series_url(base, study, series)
    sop = attrs.get("SOPInstanceUID")
    return instance_url(base, study, series, sop) if isinstance(sop, str) else None


def search(archive: Any, q: QidoQuery, base: str) -> tuple[list[dict[str, Any]], bool]:
    """Run `q`; return the DICOM JSON results and whether more lie beyond the page."""
    limit = None if q.page < 0 else q.page + 1  # one more: is there a next page?
    out: list[dict[str, Any]] = []
    more = False
    for attrs in archive.find_attrs(q.level, q.query, limit=limit, offset=q.offset):
        if q.page >= 0 and len(out) == q.page:
            more = True
            break
        doc = attrs_to_json(attrs)
        url = _retrieve_url(base, q.level, attrs)
        if url is not None:
            doc["00081190"] = {"vr": "UR", "Value": [url]}
        doc["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
        out.append(dict(sorted(doc.items())))
    return out, more


def _handler(level: str, defaults: tuple[str, ...], path_names: tuple[str, ...]) -> Any:
    keywords = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID"}

    async def endpoint(request: Request) -> Response:
        ctx: WebContext = request.app.state.ctx
        path_keys = {keywords[n]: path_uid(request, n) for n in path_names}
        q = QidoQuery(level, defaults, list(request.query_params.multi_items()), path_keys,
                      ctx.settings.qido_max_limit)  # fmt: skip
        base = ctx.base_url(request)
        results, more = await ctx.call(search, ctx.archive, q, base)
        warnings = list(q.warnings)
        if more and q.cut_by_cap:
            warnings.append(f"The results were limited to {q.page}; more match: "
                            f"ask again with offset={q.offset + q.page}")  # fmt: skip
        headers = (
            {"Warning": ", ".join(f'299 pacs-engine "{w}"' for w in warnings)} if warnings else {}
        )
        return Response(orjson.dumps(results), media_type=DICOM_JSON, headers=headers)

    return endpoint


def routes() -> list[Route]:
    """The QIDO-RS routes, relative to the DICOMweb base path."""
    study_and_below = STUDY_DEFAULTS + SERIES_DEFAULTS
    everything = study_and_below + INSTANCE_DEFAULTS
    return [
        Route("/studies", _handler("STUDY", STUDY_DEFAULTS, ()), methods=["GET"]),
        Route("/studies/{study}/series", _handler("SERIES", SERIES_DEFAULTS, ("study",)),
              methods=["GET"]),
        Route("/series", _handler("SERIES", study_and_below, ()), methods=["GET"]),
        Route("/studies/{study}/series/{series}/instances",
              _handler("IMAGE", INSTANCE_DEFAULTS, ("study", "series")), methods=["GET"]),
        Route("/studies/{study}/instances",
              _handler("IMAGE", SERIES_DEFAULTS + INSTANCE_DEFAULTS, ("study",)), methods=["GET"]),
        Route("/instances", _handler("IMAGE", everything, ()), methods=["GET"]),
    ]  # fmt: skip
