"""The change log the index writes, and the forward queue over it (in process, real LMDB)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.archive import Archive
from engine.forward.queue import ForwardQueue, Outcome
from engine.index import changes, commitments
from engine.index.commitments import Pending
from tests._helpers import small_ct_bytes


def _log(archive: Archive, after: int = 0) -> list[changes.Change]:
    with archive.env.read() as txn:
        return changes.after(txn, archive.catalog.db, after, 1000)


def test_every_store_and_deletion_is_logged_in_commit_order(tmp_path: Path) -> None:
    with Archive(tmp_path / "a") as archive:
        uids = [archive.store(small_ct_bytes(i)).sop_instance_uid for i in range(5)]
        archive.store(small_ct_bytes(2))  # a second store of one UID: a new version
        archive.delete(sop_instance_uid=uids[0])
        log = _log(archive)
    assert [c.seq for c in log] == list(range(1, 8))
    assert [(c.kind, c.sop_uid) for c in log] == [
        *((changes.STORED, u) for u in uids),
        (changes.STORED, uids[2]),
        (changes.DELETED, uids[0]),
    ]


def test_the_log_survives_reopening_replay_and_reindex(tmp_path: Path) -> None:
    with Archive(tmp_path / "a") as archive:
        queue = ForwardQueue(archive.env, "r")
        assert queue.cursor() == 0
        for i in range(4):
            archive.store(small_ct_bytes(i))
        before = _log(archive)
        queue.commit(Outcome(2, [], [], []), max_attempts=3)
        archive.reindex()
        assert _log(archive) == before  # the numbers cursors hold stay valid
        assert ForwardQueue(archive.env, "r").cursor() == 2
        archive.store(small_ct_bytes(9))
    with Archive(tmp_path / "a") as archive:
        assert [c.seq for c in _log(archive)] == [1, 2, 3, 4, 5]


def test_a_new_queue_starts_at_the_head_and_keeps_its_cursor(tmp_path: Path) -> None:
    with Archive(tmp_path / "a") as archive:
        archive.store(small_ct_bytes(1))
        q = ForwardQueue(archive.env, "new")
        assert q.cursor() == 1  # history before the rule is not forwarded
        archive.store(small_ct_bytes(2))
        assert q.cursor() == 1
        assert [c.seq for c in q.changes_after(q.cursor(), 10)] == [2]
        assert q.state().behind == 1


def test_refusals_retry_with_backoff_then_become_dead_letters(tmp_path: Path) -> None:
    with Archive(tmp_path / "a") as archive:
        q = ForwardQueue(archive.env, "r")
        q.cursor()
        assert q.commit(Outcome(1, [], [("1.2.3", "A700")], []), max_attempts=3) == []
        (w,) = q.retries()
        assert w.attempts == 1 and w.error == "A700" and w.next_ns > time.time_ns()
        assert q.retries_due(time.time_ns(), 10) == []  # not due before its backoff
        assert q.retries_due(w.next_ns, 10) == [w]
        q.commit(Outcome(1, [], [("1.2.3", "A700")], []), max_attempts=3)
        assert q.commit(Outcome(1, [], [("1.2.3", "A701")], []), max_attempts=3) == ["1.2.3"]
        assert q.retries() == []
        (dead,) = q.dead_letters()
        assert dead.attempts == 3 and "A701" in dead.error
        s = q.state()
        assert (s.retries, s.dead, s.refused, s.sent) == (0, 1, 3, 0)
        assert q.retry_dead() == 1  # pacs queue --retry
        assert q.dead_letters() == [] and q.retries_due(time.time_ns(), 10)[0].sop_uid == "1.2.3"
        q.commit(Outcome(1, ["1.2.3"], [], []), max_attempts=3)  # then it went
        assert q.retries() == [] and q.state().sent == 1


def test_purge_forgets_dead_letters_and_expired_ones_are_dead_at_once(tmp_path: Path) -> None:
    with Archive(tmp_path / "a") as archive:
        q = ForwardQueue(archive.env, "r")
        q.commit(Outcome(5, [], [], [("1.2.3", "waited"), ("1.2.4", "waited")]), max_attempts=3)
        assert {w.sop_uid for w in q.dead_letters()} == {"1.2.3", "1.2.4"}
        assert q.cursor() == 5
        assert q.purge_dead(["1.2.3"]) == 1
        assert [w.sop_uid for w in q.dead_letters()] == ["1.2.4"]
        assert q.purge_dead() == 1 and q.dead_letters() == []


def test_a_cursor_never_goes_back(tmp_path: Path) -> None:
    with Archive(tmp_path / "a") as archive:
        q = ForwardQueue(archive.env, "r")
        q.commit(Outcome(7, [], [], []), max_attempts=3)
        q.commit(Outcome(3, [], [], []), max_attempts=3)  # a batch that held: the same cursor
        assert q.cursor() == 7


@pytest.mark.parametrize("name", ["a", "b"])
def test_queues_are_independent(tmp_path: Path, name: str) -> None:
    with Archive(tmp_path / "a") as archive:
        ForwardQueue(archive.env, name).commit(Outcome(0, [], [("1.2", "x")], []), 1)
        other = "b" if name == "a" else "a"
        assert ForwardQueue(archive.env, other).dead_letters() == []
        assert len(ForwardQueue(archive.env, name).dead_letters()) == 1


def test_awaiting_instances_count_once_committed_and_keep_their_attempts(tmp_path: Path) -> None:
    with Archive(tmp_path / "a") as archive:
        q = ForwardQueue(archive.env, "r")
        q.cursor()
        ok, bad = "1.2.3.1", "1.2.3.2"

        def ask(transaction: str) -> None:
            pending = Pending(transaction, "r", dict.fromkeys((ok, bad), (0, 0)), 0)
            q.commit(Outcome(0, [], [], [], awaiting=pending), max_attempts=2)

        ask("9.1")
        assert q.state().awaiting == 2 and q.state().sent == 0 and q.retries() == []
        archive.env.write(lambda txn: commitments.record_report(
            txn, archive.env.db, "9.1", commitments.Report([ok], {bad: 0x0110})))  # fmt: skip
        assert q.report("9.1") == commitments.Report([ok], {bad: 0x0110})
        assert q.settle("9.1", [ok], [(bad, "not committed")], max_attempts=2) == []
        assert q.settle("9.1", [ok], [], max_attempts=2) == []  # settled already: no-op
        state = q.state()
        assert (state.sent, state.refused, state.awaiting) == (1, 1, 0)
        (retry,) = q.retries()
        assert (retry.sop_uid, retry.attempts) == (bad, 1)
        ask("9.2")  # sent again: its attempts wait with it, and the second failure buries it
        assert q.retries() == []
        assert q.settle("9.2", [ok], [(bad, "not committed")], max_attempts=2) == [bad]
        (letter,) = q.dead_letters()
        assert letter.attempts == 2 and "not committed" in letter.error
        assert not archive.env.write(lambda txn: commitments.record_report(
            txn, archive.env.db, "9.9", commitments.Report([], {})))  # fmt: skip  # never asked
