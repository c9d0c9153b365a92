"""[[forward]] tables: what is accepted, the errors that name the problem, PS3.4 matching."""

from __future__ import annotations

from typing import Any

import pytest

from engine.forward.rules import forward_rules
from engine.net.settings import Remote

REMOTES = {"VIEWER": Remote("VIEWER", "127.0.0.1", 104), "NOWHERE": Remote("NOWHERE")}


def _one(**table: Any) -> Any:
    (rule,) = forward_rules({"forward": [{"name": "r", "to": "dicom:VIEWER", **table}]}, REMOTES)
    return rule


def test_a_rule_with_defaults() -> None:
    rule = _one()
    assert (str(rule.target), rule.parallel, rule.batch, rule.conditions) == (
        "dicom:VIEWER",
        1,
        200,
        (),
    )
    assert rule.matches({}, None)
    assert (rule.commit, rule.commit_timeout_s) == (False, 600)
    assert _one(commit=True, commit_timeout_s=30).commit_timeout_s == 30


@pytest.mark.parametrize(("table", "message"), [
    ({"to": "dicom:OTHER"}, "not a [remotes.OTHER] entry"),
    ({"to": "dicom:NOWHERE"}, "with host and port"),
    ({"to": "ftp:x"}, "unknown destination kind"),
    ({"to": "stow:host/x"}, "http(s) URL"),
    ({"to": "stow:http://host:80x/x"}, "Port could not be cast"),
    ({"when": {"Modality": 1}}, "must be a string"),
    ({"when": {"Modalty": "CT"}}, "not a DICOM keyword"),
    ({"when": {"Modality": "*"}}, "matches everything"),
    ({"when": {"StudyDate": "2020-01-01-2021"}}, "StudyDate"),
    ({"parallel": 0}, "parallel must be an integer 1..16"),
    ({"colour": "red"}, "unknown keys ['colour']"),
    ({"name": "a b"}, "name must be"),
    ({"commit": "yes"}, "commit must be true or false"),
    ({"commit": True, "to": "stow:http://host/dicom-web"}, "needs a dicom: target"),
    ({"commit": True, "commit_timeout_s": 0}, "commit_timeout_s must be an integer"),
])  # fmt: skip
def test_bad_tables_name_the_problem(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        _one(**table)
    assert message in str(info.value)


def test_names_must_differ() -> None:
    with pytest.raises(ValueError, match="names must differ"):
        forward_rules({"forward": [{"name": "a", "to": "dicom:VIEWER"}] * 2}, REMOTES)


def test_indexed_keys_match_the_index_and_others_the_metadata() -> None:
    rule = _one(when={"Modality": "CT\\MR", "CallingAE": "CT*", "StudyDate": "20200101-",
                      "Manufacturer": "ACME*"})  # fmt: skip
    indexed = {c.keyword: c.indexed for c in rule.conditions}
    assert indexed == {"Modality": True, "SourceApplicationEntityTitle": False,
                       "StudyDate": True, "Manufacturer": False}  # fmt: skip
    assert rule.needs_metadata
    stored = {"SourceApplicationEntityTitle": "CT_SCANNER1", "Manufacturer": "ACME Medical"}
    assert rule.matches({"Modality": "MR", "StudyDate": "20240102"}, stored)
    assert not rule.matches({"Modality": "US", "StudyDate": "20240102"}, stored)
    assert not rule.matches({"Modality": "CT", "StudyDate": "20190102"}, stored)
    assert not rule.matches({"Modality": "CT", "StudyDate": "20240102"},
                            {**stored, "SourceApplicationEntityTitle": "MRI"})  # fmt: skip
    assert not rule.matches({"Modality": "CT", "StudyDate": "20240102"}, {})
