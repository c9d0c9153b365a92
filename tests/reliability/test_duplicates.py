"""The same SOP Instance UID stored twice: back to back, and at once from several associations.

Under ``duplicate_policy = "newest"`` both stores succeed and the later one
is what the archive holds; under ``"reject"`` the first succeeds and every
other gets 0x0111 (Duplicate SOP Instance) with an Error Comment. Either way
one index entry per UID, `pacs verify` clean, and a fresh reindex from the
segments alone holds exactly the same instances.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

import engine
from engine.synthetic import ct_series
from tests._helpers import deep_copy
from tests.net._support import Server
from tests.reliability._intact import data_set_bytes, pacs
from tests.reliability._raw import STORE_CONTEXT, RawPeer, command_for, data_set
from tests.reliability.conftest import scaled

Figure = Callable[[str, Any], None]
DUPLICATE = 0x0111  # PS3.7 C.5 (engine/net/status.py)
POLICIES = ("newest", "reject")


def _versions(seed: int, count: int) -> list[tuple[Dataset, Dataset]]:
    """(first, second) versions of `count` instances: same UIDs, other content."""
    out = []
    for ds in ct_series(seed, count, rows=16, columns=16):
        other = deep_copy(ds)
        other.SeriesDescription = "second version"
        other.PixelData = bytes(b ^ 0xFF for b in ds.PixelData)
        out.append((ds, other))
    return out


def _server(tmp_path: Path, policy: str) -> Server:
    config = f'[archive]\nduplicate_policy = "{policy}"\n'
    return Server(tmp_path, workers=2, config=config).start()


def _store(peer: RawPeer, ds: Dataset, message_id: int) -> tuple[int, str]:
    rsp = peer.store_raw(command_for(str(ds.SOPInstanceUID), message_id), data_set(ds),
                         STORE_CONTEXT)  # fmt: skip
    return int(rsp.Status), str(rsp.get("ErrorComment", ""))


def _held(archive_path: Path, uids: list[str]) -> dict[str, bytes]:
    """The data set bytes the archive holds for each UID, and its instance count."""
    with engine.open_archive(archive_path) as archive:
        held = {uid: data_set_bytes(archive.get(uid)) for uid in uids}
        assert archive.stats()["instances"] == len(uids), archive.stats()
    return held


def _reindexed_same(archive_path: Path, held: dict[str, bytes]) -> None:
    r = pacs("-A", str(archive_path), "verify")
    assert r.returncode == 0, r.stdout + r.stderr
    r = pacs("-A", str(archive_path), "reindex")
    assert r.returncode == 0, r.stdout + r.stderr
    assert _held(archive_path, list(held)) == held, "a reindex chose other versions"


@pytest.mark.parametrize("policy", POLICIES)
def test_a_duplicate_back_to_back_follows_the_policy(tmp_path: Path, policy: str) -> None:
    pairs = _versions(3100, 5)
    srv = _server(tmp_path, policy)
    try:
        peer = RawPeer(srv.port)
        peer.associate(via_pynetdicom=False)
        try:
            for i, (first, second) in enumerate(pairs):
                assert _store(peer, first, 2 * i + 1) == (0, "")
                status, comment = _store(peer, second, 2 * i + 2)
                if policy == "newest":
                    assert status == 0
                else:
                    assert status == DUPLICATE, (status, comment)
                    assert comment.startswith("stored already"), comment
        finally:
            peer.close()
    finally:
        assert srv.stop() == 0
    winner = 1 if policy == "newest" else 0
    expected = {str(p[0].SOPInstanceUID): data_set(p[winner]) for p in pairs}
    assert _held(srv.archive, list(expected)) == expected
    _reindexed_same(srv.archive, expected)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_duplicate_from_concurrent_associations_follows_the_policy(
    tmp_path: Path, policy: str, figure: Figure
) -> None:
    """Four associations (spread over both workers by SO_REUSEPORT) store two versions of
    each UID at the same moment."""
    pairs = _versions(3200, scaled(40, 400))
    srv = _server(tmp_path, policy)
    statuses: dict[str, list[tuple[int, int, str]]] = {str(p[0].SOPInstanceUID): [] for p in pairs}
    lock = threading.Lock()
    start = threading.Barrier(4)

    def sender(which: int, offset: int) -> None:
        peer = RawPeer(srv.port)
        peer.associate(via_pynetdicom=False)
        try:
            start.wait()
            order = pairs[offset:] + pairs[:offset]
            for i, pair in enumerate(order):
                status, comment = _store(peer, pair[which], i + 1)
                with lock:
                    statuses[str(pair[0].SOPInstanceUID)].append((which, status, comment))
        finally:
            peer.close()

    try:
        half = len(pairs) // 2
        threads = [threading.Thread(target=sender, args=(which, offset))
                   for which, offset in ((0, 0), (1, 0), (0, half), (1, half))]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads)
    finally:
        assert srv.stop() == 0
    assert all(len(v) == 4 for v in statuses.values()), statuses
    held = _held(srv.archive, list(statuses))
    for pair in pairs:
        uid = str(pair[0].SOPInstanceUID)
        ok = [which for which, status, _ in statuses[uid] if status == 0]
        refused = [(s, c) for _, s, c in statuses[uid] if s != 0]
        versions = {0: data_set(pair[0]), 1: data_set(pair[1])}
        if policy == "newest":
            assert not refused, statuses[uid]
            assert held[uid] in versions.values()
        else:
            assert len(ok) == 1, f"{uid}: {len(ok)} stores acknowledged under reject"
            assert all(s == DUPLICATE and c for s, c in refused), refused
            assert held[uid] == versions[ok[0]], "the archive holds a version it refused"
    figure("UIDs stored 4 times at once", len(pairs))
    _reindexed_same(srv.archive, held)
