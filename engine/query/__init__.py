"""DICOM attribute matching (PS3.4 C.2.2.2), shared by find, C-FIND and QIDO-RS.

``compile_query(level, {keyword: value})`` validates a query and parses each
key once; ``Query.matches(record)`` tests a stored record;
``choose_index(query, available)`` picks the secondary index to read, with
keys made by ``normalise_for_index`` / ``index_keys``, the same functions the
index writer uses.
"""

from engine.query._values import parse_int
from engine.query.compiled import RETURN_ONLY, Query, compile_query, normalise_level
from engine.query.matching import (
    Matcher,
    compile_matcher,
    match_range,
    match_single_value,
    match_uid_list,
    match_universal,
    match_wildcard,
    matching_type,
    parse_range,
)
from engine.query.plan import IndexChoice, choose_index, index_keys, normalise_for_index

__all__ = [
    "RETURN_ONLY",
    "IndexChoice",
    "Matcher",
    "Query",
    "choose_index",
    "compile_matcher",
    "compile_query",
    "index_keys",
    "match_range",
    "match_single_value",
    "match_uid_list",
    "match_universal",
    "match_wildcard",
    "matching_type",
    "normalise_for_index",
    "normalise_level",
    "parse_int",
    "parse_range",
]
