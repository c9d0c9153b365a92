"""PS3.4 C.2.2.2 matching: one test per rule, then property tests against references."""

from __future__ import annotations

import fnmatch
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import InvalidQueryError
from engine.query import (
    RETURN_ONLY,
    compile_matcher,
    compile_query,
    match_range,
    match_single_value,
    match_uid_list,
    match_universal,
    match_wildcard,
    matching_type,
    parse_range,
)

# -- classification (C.2.2.2) -------------------------------------------------


@pytest.mark.parametrize(
    ("vr", "query", "kind"),
    [
        ("LO", None, "universal"),
        ("LO", "", "universal"),
        ("LO", "   ", "universal"),
        ("PN", "*", "universal"),
        ("DA", "*", "universal"),
        ("LO", "12*", "wildcard"),
        ("PN", "D?e", "wildcard"),
        ("LO", "12-34", "single"),
        ("DA", "20240101", "single"),
        ("DA", "20240101-", "range"),
        ("TM", "-1000", "range"),
        ("UI", "1.2.3", "single"),
        ("UI", "1.2.3\\1.2.4", "uid_list"),
        ("IS", "5", "single"),
    ],
)
def test_matching_type_follows_ps3_4(vr: str, query: str | None, kind: str) -> None:
    assert matching_type(vr, query) == kind


# -- single value matching (C.2.2.2.1) ----------------------------------------


def test_single_value_matches_exactly() -> None:
    assert match_single_value("12345", "12345", "LO")
    assert not match_single_value("123456", "12345", "LO")
    assert not match_single_value("1234", "12345", "LO")


def test_single_value_is_case_sensitive_for_non_pn() -> None:
    assert not match_single_value("abc", "ABC", "LO")
    assert not match_single_value("ct", "CT", "CS")


def test_patient_name_single_value_is_case_insensitive() -> None:
    assert match_single_value("Doe^John", "DOE^JOHN", "PN")
    assert match_single_value("DOE^JOHN", "doe^john", "PN")


def test_patient_name_case_sensitive_flag_makes_case_significant() -> None:
    assert not match_single_value("Doe^John", "DOE^JOHN", "PN", case_sensitive_pn=True)
    assert match_single_value("Doe^John", "Doe^John", "PN", case_sensitive_pn=True)
    q = compile_query("STUDY", {"PatientName": "doe*"}, case_sensitive_pn=True)
    assert not q.matches({"PatientName": "Doe^John"})
    assert q.matches({"PatientName": "doe^john"})


def test_trailing_padding_is_insignificant() -> None:
    assert match_single_value("ABC  ", "ABC", "SH")
    assert match_single_value("ABC", "ABC ", "SH")
    assert match_single_value("1.2.3\x00", "1.2.3", "UI")
    assert match_single_value("Doe^John ", "Doe^John", "PN")


def test_leading_padding_is_insignificant_for_lo_but_not_for_pn() -> None:
    assert match_single_value("  ID7", "ID7", "LO")
    assert match_single_value(" CT", "CT", "CS")
    assert not match_single_value(" Doe", "Doe", "PN")


def test_patient_name_trailing_empty_components_are_insignificant() -> None:
    assert match_single_value("Doe^John^^", "Doe^John", "PN")
    assert match_single_value("Doe^John", "Doe^John^", "PN")
    assert match_single_value("Doe^John=", "doe^john", "PN")


# -- PN component groups (PS3.5 6.2.1.1): alphabetic=ideographic=phonetic -----------

JAPANESE = "Yamada^Tarou=山田^太郎=やまだ^たろう"  # pydicom's chrH31.dcm


@pytest.mark.parametrize("query", ["Yamada^Tarou", "yamada^tarou", "山田^太郎", "やまだ^たろう",
                                   JAPANESE, "Yamada^Tarou=山田^太郎", "=山田^太郎",
                                   "==やまだ^たろう", "Yamada^Tarou^^=山田^太郎="])  # fmt: skip
def test_patient_name_single_value_matches_any_of_its_groups(query: str) -> None:
    assert match_single_value(JAPANESE, query, "PN")


@pytest.mark.parametrize("query", ["Yamada", "山田", "=Yamada^Tarou", "Yamada^Tarou=やまだ^たろう",
                                   "Yamada^Tarou=山田^太郎=x"])  # fmt: skip
def test_patient_name_groups_match_in_their_own_place(query: str) -> None:
    assert not match_single_value(JAPANESE, query, "PN")


@pytest.mark.parametrize("pattern", ["Yamada*", "yama*", "山田*", "*太郎", "やまだ^*", "Yam*=山*",
                                     "=山田*", "*=山田^太郎=*", "Y?mada^Tarou"])  # fmt: skip
def test_patient_name_wildcard_matches_any_of_its_groups(pattern: str) -> None:
    assert match_wildcard(JAPANESE, pattern, "PN")


@pytest.mark.parametrize(
    "pattern", ["Tarou*", "=Yamada*", "Yamada^Tarou=やまだ*", "Y?mada", "=*=*=x*"]
)
def test_patient_name_wildcard_groups_match_in_their_own_place(pattern: str) -> None:
    assert not match_wildcard(JAPANESE, pattern, "PN")


def test_patient_name_groups_are_case_sensitive_when_asked() -> None:
    assert match_single_value(JAPANESE, "Yamada^Tarou", "PN", case_sensitive_pn=True)
    assert not match_single_value(JAPANESE, "YAMADA^TAROU", "PN", case_sensitive_pn=True)
    assert not match_wildcard(JAPANESE, "yamada*", "PN", case_sensitive_pn=True)


def test_other_text_vrs_have_no_groups() -> None:
    assert not match_single_value("A=B", "A", "LO")
    assert not match_wildcard("A=B", "B*", "LO")


def test_single_value_with_dash_is_literal_for_non_date_vrs() -> None:
    assert match_single_value("12-34", "12-34", "LO")
    assert not match_single_value("12", "12-34", "LO")


# -- list of UID matching (C.2.2.2.2) -----------------------------------------


def test_uid_list_matches_membership() -> None:
    assert match_uid_list("1.2.4", "1.2.3\\1.2.4")
    assert match_uid_list("1.2.4", ["1.2.3", "1.2.4"])
    assert not match_uid_list("1.2.5", "1.2.3\\1.2.4")
    assert not match_uid_list("1.2.3.4", "1.2.3")


def test_single_uid_is_exact_not_prefix() -> None:
    assert match_single_value("1.2.3", "1.2.3", "UI")
    assert not match_single_value("1.2.34", "1.2.3", "UI")


def test_uid_list_matches_multi_valued_stored_uids() -> None:
    q = compile_query("STUDY", {"SOPClassesInStudy": "1.2.840.10008.5.1.4.1.1.2"})
    assert q.matches({"SOPClassesInStudy": "1.2.840.10008.5.1.4.1.1.4\\1.2.840.10008.5.1.4.1.1.2"})


@pytest.mark.parametrize("query", ["1.2.*", "1.2.a", "1." + "2" * 70, "1..2"])
def test_invalid_uid_query_is_rejected(query: str) -> None:
    with pytest.raises(InvalidQueryError):
        compile_query("STUDY", {"StudyInstanceUID": query})


# -- universal matching (C.2.2.2.3) -------------------------------------------


def test_universal_matches_everything_even_no_value() -> None:
    assert match_universal(None)
    assert match_universal("")
    assert match_universal("Doe")
    assert compile_matcher("PatientName", "PN", "PATIENT", "") is None
    assert compile_matcher("PatientName", "PN", "PATIENT", None) is None
    assert compile_matcher("PatientName", "PN", "PATIENT", "**") is None


def test_empty_stored_value_matches_only_universal() -> None:
    for stored in (None, "", "  "):
        assert match_wildcard(stored, "*", "LO")
        assert not match_single_value(stored, "X", "LO")
        assert not match_wildcard(stored, "?*", "LO")
        assert not match_wildcard(stored, "X*", "LO")
        assert not match_range(stored, "20240101-", "DA")
        assert not match_range(stored, "-", "DA")
        assert not match_uid_list(stored, "1.2.3")
    q = compile_query("STUDY", {"PatientID": "", "StudyDate": "", "AccessionNumber": "*"})
    assert q.matches({})


# -- wild card matching (C.2.2.2.4) -------------------------------------------


def test_wildcard_star_matches_any_run_including_none() -> None:
    assert match_wildcard("12", "12*", "LO")
    assert match_wildcard("12345", "12*", "LO")
    assert match_wildcard("A12B", "*12*", "LO")
    assert not match_wildcard("312", "12*", "LO")


def test_wildcard_question_mark_matches_one_character() -> None:
    assert match_wildcard("Doe", "D?e", "LO")
    assert not match_wildcard("De", "D?e", "LO")
    assert not match_wildcard("Dooe", "D?e", "LO")


def test_wildcard_applies_to_the_whole_value() -> None:
    assert not match_wildcard("Doe^John", "Doe", "LO")
    assert not match_wildcard("xDoe", "Doe*", "LO")
    assert match_wildcard("Doe^John", "*John", "LO")


def test_wildcard_regex_metacharacters_are_literal() -> None:
    assert match_wildcard("a.b", "a.?", "LO")
    assert not match_wildcard("axb", "a.*", "LO")
    assert match_wildcard("(x)[y]", "(x)[*", "LO")


def test_patient_name_wildcard_is_case_insensitive() -> None:
    assert match_wildcard("Doe^John", "doe*", "PN")
    assert match_wildcard("Doe^John", "D?E^J*", "PN")
    assert not match_wildcard("Doe^John", "doe*", "PN", case_sensitive_pn=True)


@pytest.mark.parametrize(
    ("keyword", "query"),
    [("StudyDate", "2024*"), ("StudyInstanceUID", "1.2*"), ("SeriesNumber", "1?"), ("Rows", "5*")],
)
def test_wildcard_is_rejected_where_ps3_4_does_not_allow_it(keyword: str, query: str) -> None:
    with pytest.raises(InvalidQueryError, match=re.escape(query)):
        compile_query("IMAGE", {keyword: query})


def test_wildcard_matcher_exposes_literal_prefix() -> None:
    m = compile_matcher("PatientName", "PN", "PATIENT", "doe^j?hn*")
    assert m is not None and m.kind == "wildcard" and m.prefix == "DOE^J"
    m = compile_matcher("PatientID", "LO", "PATIENT", "ab*")
    assert m is not None and m.prefix == "ab"


# -- range matching (C.2.2.2.5) -----------------------------------------------


def test_date_range_is_inclusive() -> None:
    assert match_range("20240101", "20240101-20240131", "DA")
    assert match_range("20240131", "20240101-20240131", "DA")
    assert not match_range("20240201", "20240101-20240131", "DA")
    assert not match_range("20231231", "20240101-20240131", "DA")


def test_date_range_with_open_ends() -> None:
    assert match_range("20991231", "20240101-", "DA")
    assert not match_range("20231231", "20240101-", "DA")
    assert match_range("19000101", "-20240131", "DA")
    assert not match_range("20240201", "-20240131", "DA")


def test_single_date_with_dash_is_a_range() -> None:
    q = compile_query("STUDY", {"StudyDate": "20240101-"})
    assert q.matchers["StudyDate"].kind == "range"
    assert q.matches({"StudyDate": "20240505"})


def test_time_range_with_fractional_seconds() -> None:
    assert match_range("1030", "1000-1100", "TM")
    assert match_range("103015.5", "1000-1100", "TM")
    assert match_range("110059.999", "1000-1100", "TM")
    assert not match_range("110100", "1000-1100", "TM")
    assert not match_range("095959.999999", "1000-1100", "TM")
    assert match_range("101530.25", "101530.2-101530.3", "TM")
    assert not match_range("101530.25", "101530.3-", "TM")


def test_partial_time_query_covers_its_whole_interval() -> None:
    assert parse_range("TM", "10-10") == ("100000.000000", "105959.999999")
    assert match_single_value("105959", "10", "TM")
    assert match_single_value("103015.5", "1030", "TM")
    assert not match_single_value("110000", "10", "TM")


def test_legacy_date_and_time_formats_are_understood() -> None:
    assert match_range("2024.01.15", "20240101-20240131", "DA")
    assert match_range("10:30:15", "1000-1100", "TM")


def test_datetime_range_with_partial_values() -> None:
    assert match_range("20240615120000", "2024-2024", "DT")
    assert match_range("20241231235959.999999", "2024-2024", "DT")
    assert not match_range("20250101", "2024-2024", "DT")
    assert match_range("202403", "202401-202406", "DT")
    assert match_range("20240101093000.5", "2024010109-", "DT")
    assert not match_range("20240101085959", "2024010109-", "DT")


def test_datetime_with_negative_utc_offset_is_one_value_not_a_range() -> None:
    m = compile_matcher("X", "DT", "IMAGE", "20240101120000-0500")
    assert m is not None and m.kind == "single"
    assert m("20240101120000")
    m = compile_matcher("X", "DT", "IMAGE", "20240101120000-0500-")
    assert m is not None and m.kind == "range" and m("20240101130000-0500")


@pytest.mark.parametrize(
    ("keyword", "query"),
    [
        ("StudyDate", "2024"),
        ("StudyDate", "20240101-2024"),
        ("StudyDate", "a-b"),
        ("StudyTime", "1"),
        ("StudyTime", "10-11-12"),
        ("StudyDate", "20240101\\20240102"),
    ],
)
def test_invalid_date_or_time_query_is_rejected(keyword: str, query: str) -> None:
    with pytest.raises(InvalidQueryError, match=keyword):
        compile_query("STUDY", {keyword: query})


def test_invalid_stored_date_never_matches() -> None:
    assert not match_range("2024", "-", "DA")
    assert not match_single_value("notadate", "20240101", "DA")


# -- multiple values, numbers -------------------------------------------------


def test_multi_valued_stored_value_matches_any() -> None:
    assert match_single_value("CT\\MR", "MR", "CS")
    assert match_single_value("CT\\MR", "CT", "CS")
    assert match_wildcard("CT\\MR", "M*", "CS")
    assert not match_single_value("CT\\MR", "US", "CS")


def test_multi_valued_query_matches_any_of_its_values() -> None:
    q = compile_query("STUDY", {"ModalitiesInStudy": "US\\MR"})
    m = q.matchers["ModalitiesInStudy"]
    assert m.kind == "single" and m.values == ("US", "MR") and m.value is None
    assert q.matches({"ModalitiesInStudy": "CT\\MR"})
    assert not q.matches({"ModalitiesInStudy": "CT"})


def test_numeric_values_compare_as_numbers() -> None:
    assert match_single_value("05", "5", "IS")
    assert match_single_value(5, "5", "US")
    assert match_single_value(" 5 ", "+5", "IS")
    assert not match_single_value(50, "5", "US")
    q = compile_query("STUDY", {"NumberOfStudyRelatedInstances": "12"})
    assert q.matches({"NumberOfStudyRelatedInstances": 12})


def test_non_integer_numeric_query_is_rejected() -> None:
    with pytest.raises(InvalidQueryError, match="SeriesNumber"):
        compile_query("SERIES", {"SeriesNumber": "five"})


# -- compiled queries ----------------------------------------------------------


def test_unknown_keyword_is_rejected() -> None:
    with pytest.raises(InvalidQueryError, match="PatientsFavouriteColour"):
        compile_query("STUDY", {"PatientsFavouriteColour": ""})


@pytest.mark.parametrize("level", ["STUDIES", "", "FRAME"])
def test_unknown_level_is_rejected(level: str) -> None:
    with pytest.raises(InvalidQueryError, match="level"):
        compile_query(level, {})


def test_level_is_case_insensitive_and_instance_means_image() -> None:
    assert compile_query("instance", {}).level == "IMAGE"
    assert compile_query("Study", {}).level == "STUDY"


def test_requested_keeps_every_key_in_query_order() -> None:
    q = compile_query(
        "STUDY", {"StudyDate": "20240101", "PatientName": "", "StudyInstanceUID": None}
    )
    assert q.requested == ["StudyDate", "PatientName", "StudyInstanceUID"]
    assert list(q.matchers) == ["StudyDate"]


def test_matcher_exposes_parsed_parameters() -> None:
    q = compile_query(
        "STUDY",
        {
            "AccessionNumber": " A1 ",
            "StudyDate": "20240101-20240131",
            "StudyInstanceUID": "1.2.3\\1.2.4",
            "PatientName": "doe^john",
        },
    )
    acc, date, uid, name = (q.matchers[k] for k in q.requested)
    assert (acc.kind, acc.value, acc.keyword, acc.level) == (
        "single",
        "A1",
        "AccessionNumber",
        "STUDY",
    )
    assert (date.kind, date.lo, date.hi) == ("range", "20240101", "20240131")
    assert (uid.kind, uid.uids) == ("uid_list", frozenset({"1.2.3", "1.2.4"}))
    assert (name.kind, name.value, name.level) == ("single", "DOE^JOHN", "PATIENT")


def test_matches_level_checks_only_that_level() -> None:
    q = compile_query("SERIES", {"PatientID": "P1", "Modality": "CT"})
    assert q.matches_level("SERIES", {"Modality": "CT"})
    assert not q.matches_level("SERIES", {"Modality": "MR", "PatientID": "P1"})
    assert q.matches_level("patient", {"PatientID": "P1"})
    assert q.matches_level("STUDY", {})
    assert not q.matches({"Modality": "CT"})
    assert q.levels == frozenset({"PATIENT", "SERIES"})
    assert [m.keyword for m in q.matchers_at("PATIENT")] == ["PatientID"]


def test_return_only_keys_are_accepted_and_never_matched() -> None:
    q = compile_query("STUDY", {k: "X" for k in RETURN_ONLY - {"QueryRetrieveLevel"}})
    assert not q.matchers and q.matches({})
    q = compile_query("IMAGE", {"QueryRetrieveLevel": "IMAGE", "Rows": "512"})
    assert list(q.matchers) == ["Rows"] and q.matches({"Rows": 512})


def test_query_retrieve_level_must_agree_with_level() -> None:
    with pytest.raises(InvalidQueryError, match="QueryRetrieveLevel"):
        compile_query("STUDY", {"QueryRetrieveLevel": "SERIES"})


def test_non_text_query_value_is_rejected() -> None:
    with pytest.raises(InvalidQueryError, match="SeriesNumber"):
        compile_query("SERIES", {"SeriesNumber": 5})  # type: ignore[dict-item]


def test_invalid_query_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        compile_query("STUDY", {"Nope": ""})


# -- properties ----------------------------------------------------------------

_CHARS = "aAbB.^[]()+"
_text = st.text(alphabet=_CHARS, min_size=0, max_size=8)
_pattern = st.text(alphabet=_CHARS + "*?", min_size=1, max_size=8)


def _reference(value: str, pattern: str) -> bool:
    """fnmatch with everything but * and ? escaped: the PS3.4 wildcard semantics."""
    escaped = "".join(c if c in "*?" else f"[{c}]" for c in pattern)
    return fnmatch.fnmatchcase(value, escaped)


@given(value=_text, pattern=_pattern)
def test_wildcard_agrees_with_fnmatch_reference(value: str, pattern: str) -> None:
    # "*" alone is universal and matches even no value; otherwise no value never matches.
    expected = True if not pattern.strip("*") else bool(value) and _reference(value, pattern)
    assert match_wildcard(value, pattern, "LO") is expected


@given(value=_text, pattern=_pattern)
def test_pn_wildcard_agrees_with_upper_cased_reference(value: str, pattern: str) -> None:
    if matching_type("PN", pattern) != "wildcard":
        return  # universal ("*", "^"), or a single value
    expected = bool(value) and _reference(value.upper(), pattern.upper())
    assert match_wildcard(value, pattern, "PN") is expected


@given(
    vr=st.sampled_from(["LO", "SH", "CS", "PN", "AE"]),
    value=st.text(alphabet="AZaz09^.- ", min_size=1, max_size=10),
)
def test_text_value_matches_its_own_single_value_query(vr: str, value: str) -> None:
    m = compile_matcher("X", vr, "STUDY", value)
    if m is None:  # only padding: universal
        return
    assert m.kind == "single"
    assert m(value)


_dates = st.dates().map(lambda d: f"{d.year:04d}{d.month:02d}{d.day:02d}")
_times = st.builds(
    lambda h, mi, s, f, n: (f"{h:02d}{mi:02d}{s:02d}" + (f".{f}" if f else ""))[:n],
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
    st.sampled_from(["", "5", "25", "123456"]),
    st.sampled_from([2, 4, 6, 20]),
).filter(lambda t: not t.endswith("."))


@given(d=_dates)
def test_date_matches_its_own_single_value_and_range(d: str) -> None:
    assert match_single_value(d, d, "DA")
    assert match_range(d, f"{d}-{d}", "DA")
    assert match_range(d, f"{d}-", "DA") and match_range(d, f"-{d}", "DA")


@given(t=_times)
def test_time_matches_its_own_single_value_and_range(t: str) -> None:
    assert match_single_value(t, t, "TM")
    assert match_range(t, f"{t}-{t}", "TM")


@given(d=_dates, t=_times)
def test_datetime_matches_its_own_single_value_and_range(d: str, t: str) -> None:
    dt = d + t
    assert match_single_value(dt, dt, "DT")
    assert match_range(dt, f"{dt}-{dt}", "DT")


@given(a=_dates, b=_dates, c=_dates)
def test_date_range_agrees_with_date_order(a: str, b: str, c: str) -> None:
    assert match_range(c, f"{a}-{b}", "DA") is (a <= c <= b)
