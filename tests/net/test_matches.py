"""engine.net.retrieve.Matches: the first instance before the rest, then all, once each;
and engine.net.send.send_all, which finds and reads each instance while the one before is
being answered."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset

from engine.archive import Archive
from engine.net.find import Identifier
from engine.net.retrieve import Matches, resolve
from engine.net.scp import STUDY_ROOT_LEVELS
from engine.net.send import send_all
from engine.synthetic import ct_series, encode


def _ident(**keys: str) -> Identifier:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    for k, v in keys.items():
        setattr(ds, k, v)
    return Identifier(ds, STUDY_ROOT_LEVELS)


def _stored_series(tmp_path: Path, seed: int, slices: int) -> tuple[Archive, list[Dataset],
                                                                   Identifier]:  # fmt: skip
    """An archive holding one generated CT series, and a SERIES-level identifier for it."""
    archive = Archive(tmp_path / "a")
    series = list(ct_series(seed, slices, rows=16, columns=16))
    for ds in series:
        archive.store(encode(ds))
    ident = _ident(StudyInstanceUID=series[0].StudyInstanceUID,
                   SeriesInstanceUID=series[0].SeriesInstanceUID)  # fmt: skip
    return archive, series, ident


def test_matches_yield_the_first_before_resolving_and_then_each_once(tmp_path: Path) -> None:
    archive, series, ident = _stored_series(tmp_path, 5, 6)
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


class _Sink:
    """Where sub-operations go in these tests: every C-STORE succeeds and is recorded."""

    def __init__(self, on_store: object = None) -> None:
        self.sent: list[bytes] = []
        self.on_store = on_store
        self.events: list[str] = []

    def accepted(self, sop_class: str) -> dict[str, int]:
        return {"1.2.840.10008.1.2.1": 1}

    def store(self, context_id: int, command: bytes, data: list[memoryview],
              meanwhile: Callable[[], None] = lambda: None) -> int:  # fmt: skip
        self.sent.append(b"".join(data))
        self.events.append(f"sent {len(self.sent)}")
        if callable(self.on_store):
            self.on_store()
        meanwhile()  # what a real link does while the peer answers
        self.events.append(f"answered {len(self.sent)}")
        return 0x0000

    def next_message_id(self) -> int:
        return len(self.sent) + 1

    def cancelled(self) -> bool:
        return False


def test_an_index_failure_after_the_first_match_is_a701_with_a_comment(tmp_path: Path) -> None:
    """The rest of a lazy C-GET answer cannot be found (here: the archive closed under it):
    the retrieve ends with A701 and the reason, the first instance counted as sent."""
    archive, _, ident = _stored_series(tmp_path, 6, 4)
    matches = Matches(archive, ident, lambda n: None)
    sink = _Sink(on_store=archive.close)
    status, tally = send_all(archive, matches, sink, lambda status, tally: None)
    assert status == 0xA701
    assert tally.completed == 1 and len(sink.sent) == 1
    assert tally.error.startswith("finding the matches failed")


def test_each_instance_is_read_while_the_one_before_is_answered(tmp_path: Path) -> None:
    archive, _, ident = _stored_series(tmp_path, 7, 3)
    sink = _Sink()
    read, reads = archive.get_dataset_parts, []

    def reading(uid: str) -> list[memoryview]:
        reads.append(uid)
        sink.events.append(f"read {len(reads)}")
        return read(uid)

    archive.get_dataset_parts = reading  # type: ignore[method-assign]
    status, tally = send_all(archive, Matches(archive, ident, lambda n: None), sink,
                             lambda status, tally: None)  # fmt: skip
    assert status == 0 and tally.completed == 3 and tally.remaining == 0
    assert sink.events == ["read 1", "sent 1", "read 2", "answered 1", "sent 2", "read 3",
                           "answered 2", "sent 3", "answered 3"]  # fmt: skip
    assert sink.sent == [bytes(b"".join(read(m.sop_instance)))
                         for m in resolve(archive, ident)]  # fmt: skip
    archive.close()
