"""engine.net.retrieve.Matches: the first instance before the rest, then all, once each."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset

from engine.archive import Archive
from engine.net.find import Identifier
from engine.net.retrieve import Matches, resolve
from engine.net.scp import STUDY_ROOT_LEVELS
from engine.synthetic import ct_series, encode


def _ident(**keys: str) -> Identifier:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    for k, v in keys.items():
        setattr(ds, k, v)
    return Identifier(ds, STUDY_ROOT_LEVELS)


def test_matches_yield_the_first_before_resolving_and_then_each_once(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "a")
    series = list(ct_series(5, 6, rows=16, columns=16))
    for ds in series:
        archive.store(encode(ds))
    ident = _ident(StudyInstanceUID=series[0].StudyInstanceUID,
                   SeriesInstanceUID=series[0].SeriesInstanceUID)  # fmt: skip
    resolved: list[int] = []
    matches = Matches(archive, ident, resolved.append)
    it = iter(matches)
    first = next(it)
    assert resolved == []  # the first came from a one-row query
    late = list(ct_series(5, 7, rows=16, columns=16))[6]  # stored between the first and the rest
    late.StudyInstanceUID = series[0].StudyInstanceUID
    late.SeriesInstanceUID = series[0].SeriesInstanceUID
    archive.store(encode(late))
    rest = list(it)
    uids = [first.sop_instance, *(m.sop_instance for m in rest)]
    assert len(uids) == len(set(uids)) == 7 and resolved == [7]
    assert sorted(uids) == sorted(m.sop_instance for m in resolve(archive, ident))
    assert len(matches) == 7 and [m.sop_instance for m in matches] == [
        m.sop_instance for m in resolve(archive, ident)]
    assert resolved == [7]  # resolved once
    archive.close()


def test_matches_of_nothing_resolve_to_zero(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "a")
    resolved: list[int] = []
    matches = Matches(archive, _ident(StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.4"),
                      resolved.append)  # fmt: skip
    assert list(matches) == [] and resolved == [0] and len(matches) == 0
    archive.close()
