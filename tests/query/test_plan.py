"""Index planning: the choice order, the key normalisation, and that no match is ever lost."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import InvalidQueryError
from engine.query import (
    IndexChoice,
    choose_index,
    compile_query,
    index_keys,
    normalise_for_index,
)

ALL = frozenset(
    {
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "StudyDate",
        "AccessionNumber",
        "ModalitiesInStudy",
    }
)


def _choice(query: Mapping[str, str], available: frozenset[str] = ALL) -> IndexChoice | None:
    return choose_index(compile_query("STUDY", query), available)


# -- key normalisation ----------------------------------------------------------


def test_patient_name_keys_are_upper_cased_without_empty_components() -> None:
    assert normalise_for_index("PatientName", "Doe^John^^ ") == "DOE^JOHN"
    assert normalise_for_index("PatientName", "doe^john") == "DOE^JOHN"


def test_date_keys_are_yyyymmdd() -> None:
    assert normalise_for_index("StudyDate", "20240101") == "20240101"
    assert normalise_for_index("StudyDate", "2024.01.01 ") == "20240101"


def test_time_keys_are_fixed_width() -> None:
    assert normalise_for_index("StudyTime", "1030") == "103000.000000"
    assert normalise_for_index("StudyTime", "101530.25") == "101530.250000"


def test_numeric_keys_are_decimal_integers() -> None:
    assert normalise_for_index("SeriesNumber", "05") == "5"
    assert normalise_for_index("Rows", 512) == "512"


def test_text_keys_lose_padding() -> None:
    assert normalise_for_index("PatientID", "  P1 ") == "P1"
    assert normalise_for_index("StudyInstanceUID", "1.2.3\x00") == "1.2.3"


def test_multi_valued_attribute_has_one_key_per_value() -> None:
    assert index_keys("ModalitiesInStudy", "CT\\MR\\CT") == ["CT", "MR"]
    assert index_keys("ModalitiesInStudy", "") == []
    assert index_keys("ModalitiesInStudy", None) == []


def test_normalise_for_index_rejects_unknown_keyword() -> None:
    with pytest.raises(InvalidQueryError, match="Nope"):
        normalise_for_index("Nope", "x")


# -- the choice -----------------------------------------------------------------


def test_uid_list_is_preferred_over_everything() -> None:
    c = _choice({"PatientID": "P1", "AccessionNumber": "A1", "StudyInstanceUID": "1.2.4\\1.2.3"})
    assert c is not None
    assert (c.index, c.kind, c.keys) == ("StudyInstanceUID", "exact", ["1.2.3", "1.2.4"])


def test_single_uid_is_an_exact_key() -> None:
    c = _choice({"StudyInstanceUID": "1.2.3"})
    assert c is not None and (c.kind, c.keys, c.level) == ("exact", ["1.2.3"], "STUDY")


def test_accession_number_beats_patient_id() -> None:
    c = _choice({"PatientID": "P1", "AccessionNumber": " A1"})
    assert c is not None and (c.index, c.keys) == ("AccessionNumber", ["A1"])


def test_patient_id_single_beats_patient_id_prefix_and_name() -> None:
    c = _choice({"PatientName": "Doe^John", "PatientID": "P1"})
    assert c is not None and (c.index, c.keys) == ("PatientID", ["P1"])


def test_patient_id_prefix_is_a_prefix_scan() -> None:
    c = _choice({"PatientID": "P1*", "StudyDate": "20240101"})
    assert c is not None and (c.index, c.kind, c.prefix) == ("PatientID", "prefix", "P1")


def test_patient_name_prefix_is_upper_cased() -> None:
    c = _choice({"PatientName": "doe*", "StudyDate": "20240101-"})
    assert c is not None and (c.index, c.kind, c.prefix) == ("PatientName", "prefix", "DOE")


def test_case_sensitive_patient_name_still_reads_the_upper_cased_index() -> None:
    q = compile_query("STUDY", {"PatientName": "Doe*"}, case_sensitive_pn=True)
    c = choose_index(q, ALL)
    assert c is not None and c.prefix == "DOE"
    q = compile_query("STUDY", {"PatientName": "Doe^John"}, case_sensitive_pn=True)
    c = choose_index(q, ALL)
    assert c is not None and c.keys == ["DOE^JOHN"]


def test_wildcard_without_literal_prefix_is_not_usable() -> None:
    c = _choice({"PatientName": "*oe", "ModalitiesInStudy": "CT"})
    assert c is not None and c.index == "ModalitiesInStudy"
    assert _choice({"PatientName": "?oe*"}) is None


def test_study_date_range_is_a_key_range() -> None:
    c = _choice({"StudyDate": "20240101-20240131", "ModalitiesInStudy": "CT"})
    assert c is not None and (c.index, c.kind, c.lo, c.hi) == (
        "StudyDate",
        "range",
        "20240101",
        "20240131",
    )
    c = _choice({"StudyDate": "-20240131"})
    assert c is not None and (c.lo, c.hi) == (None, "20240131")


def test_study_date_single_is_an_exact_key() -> None:
    c = _choice({"StudyDate": "2024.01.15"})
    assert c is not None and (c.kind, c.keys) == ("exact", ["20240115"])


def test_unbounded_range_is_not_usable() -> None:
    assert _choice({"StudyDate": "-"}) is None


def test_modalities_in_study_is_the_last_resort() -> None:
    c = _choice({"ModalitiesInStudy": "CT\\MR", "StudyDescription": "Head*"})
    assert c is not None and (c.index, c.keys) == ("ModalitiesInStudy", ["CT", "MR"])


def test_only_available_indexes_are_chosen() -> None:
    c = _choice({"AccessionNumber": "A1", "StudyDate": "20240101"}, frozenset({"StudyDate"}))
    assert c is not None and c.index == "StudyDate"
    assert _choice({"AccessionNumber": "A1"}, frozenset()) is None


def test_universal_query_needs_a_full_scan() -> None:
    assert _choice({"PatientName": "", "StudyDate": "", "StudyInstanceUID": ""}) is None


def test_other_levels_use_their_uid_index() -> None:
    q = compile_query("IMAGE", {"SOPInstanceUID": "1.2.9", "StudyInstanceUID": "1.2.3"})
    c = choose_index(q, {"SOPInstanceUID", "StudyInstanceUID"})
    assert c is not None and (c.index, c.level) == ("SOPInstanceUID", "IMAGE")


def test_covers_describes_the_candidate_keys() -> None:
    c = _choice({"StudyDate": "20240101-20240131"})
    assert c is not None
    assert c.covers("20240115") and not c.covers("20240201")
    c = _choice({"PatientID": "P1*"})
    assert c is not None and c.covers("P12") and not c.covers("Q1")


# -- property: candidate set, then filter == full scan ------------------------------

_records = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "StudyInstanceUID": st.sampled_from(["1.2.1", "1.2.2", "1.2.3", "1.2.3\x00"]),
            "PatientID": st.text(alphabet="P12 ", max_size=4),
            "PatientName": st.text(alphabet="aAbB^ =", max_size=6),
            "StudyDate": st.sampled_from(["20240101", "20240115", "2024.01.31", "20240201", "x"]),
            "AccessionNumber": st.text(alphabet="A1 ", max_size=3),
            "ModalitiesInStudy": st.lists(st.sampled_from(["CT", "MR", "US", ""]), max_size=3).map(
                "\\".join
            ),
        },
    ),
    max_size=12,
)

_queries = st.fixed_dictionaries(
    {},
    optional={
        "StudyInstanceUID": st.sampled_from(["", "1.2.1", "1.2.3", "1.2.2\\1.2.3"]),
        "PatientID": st.text(alphabet="P12 *?", max_size=4),
        "PatientName": st.text(alphabet="aAbB^ *?=", max_size=6),
        "StudyDate": st.sampled_from(
            ["", "20240115", "20240101-20240115", "-20240131", "20240115-", "-"]
        ),
        "AccessionNumber": st.text(alphabet="A1 *", max_size=3),
        "ModalitiesInStudy": st.sampled_from(["", "CT", "MR\\US", "C*", "?T"]),
    },
)


@given(
    records=_records,
    query=_queries,
    available=st.sets(st.sampled_from(sorted(ALL))),
    case_sensitive_pn=st.booleans(),
)
def test_planner_never_excludes_a_matching_record(
    records: list[dict[str, str]],
    query: dict[str, str],
    available: set[str],
    case_sensitive_pn: bool,
) -> None:
    q = compile_query("STUDY", query, case_sensitive_pn=case_sensitive_pn)
    full_scan = [r for r in records if q.matches(r)]
    choice = choose_index(q, available)
    if choice is None:
        return
    assert choice.index in available and choice.index in q.matchers
    candidates = [
        r
        for r in records
        if any(choice.covers(k) for k in index_keys(choice.index, r.get(choice.index)))
    ]
    assert [r for r in candidates if q.matches(r)] == full_scan


@given(records=_records.filter(bool), data=st.data(), case_sensitive_pn=st.booleans())
def test_planner_keeps_records_found_by_queries_built_from_them(
    records: list[dict[str, str]], data: st.DataObject, case_sensitive_pn: bool
) -> None:
    # Queries taken from a stored value (cut short, wildcarded, case changed),
    # so that most of them match something.
    source = data.draw(st.sampled_from(records))
    keys = [k for k in sorted(source) if k != "StudyInstanceUID" and source[k]]
    if not keys:
        return
    keyword = data.draw(st.sampled_from(keys))
    value = source[keyword].split("\\")[0]
    cut = data.draw(st.integers(0, len(value)))
    mode = data.draw(st.sampled_from(["as is", "prefix*", "lower", "?"]))
    if keyword == "StudyDate":
        text = value if mode == "as is" else f"{value}-"
    elif mode == "prefix*":
        text = value[:cut] + "*"
    elif mode == "lower":
        text = value.lower()
    elif mode == "?" and value:
        text = value[:cut] + "?" + value[cut + 1 :]
    else:
        text = value
    try:
        q = compile_query("STUDY", {keyword: text}, case_sensitive_pn=case_sensitive_pn)
    except InvalidQueryError:
        return  # e.g. a date that is not one ("x")
    full_scan = [r for r in records if q.matches(r)]
    choice = choose_index(q, ALL)
    if choice is None:
        return
    candidates = [
        r
        for r in records
        if any(choice.covers(k) for k in index_keys(choice.index, r.get(choice.index)))
    ]
    assert [r for r in candidates if q.matches(r)] == full_scan


def test_a_name_of_several_groups_has_a_key_per_group() -> None:
    assert index_keys("PatientName", "Yamada^Tarou=山田^太郎=やまだ^たろう") == [
        "YAMADA^TAROU=山田^太郎=やまだ^たろう",
        "YAMADA^TAROU",
        "山田^太郎",
        "やまだ^たろう",
    ]
    assert index_keys("PatientName", "Doe^John=") == ["DOE^JOHN"]
    assert index_keys("PatientName", "=ドウ^ジョン") == ["=ドウ^ジョン", "ドウ^ジョン"]


@pytest.mark.parametrize(("query", "key"), [("山田^太郎", "山田^太郎"), ("=山田^太郎", "山田^太郎"),
                                            ("Yamada^Tarou=山田^太郎", "YAMADA^TAROU"),
                                            ("=山田*", "山田"), ("yamada*", "YAMADA")])  # fmt: skip
def test_a_name_query_reads_the_key_of_its_first_group(query: str, key: str) -> None:
    c = _choice({"PatientName": query})
    assert c is not None and c.index == "PatientName"
    assert c.covers(key)
    stored = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert any(c.covers(k) for k in index_keys("PatientName", stored))


def test_patient_name_prefix_ending_in_a_delimiter_keeps_names_with_empty_components() -> None:
    q = compile_query("STUDY", {"PatientName": "Doe^John^*"})
    assert q.matches({"PatientName": "Doe^John^^"})
    c = choose_index(q, ALL)
    assert c is not None and c.prefix == "DOE^JOHN"
    assert all(c.covers(k) for k in index_keys("PatientName", "Doe^John^^"))
