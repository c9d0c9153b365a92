"""A power cut between the index commit and the segment's fdatasync (they overlap).

A process crash cannot produce this state (the page cache survives it), so
the tests make it by hand: the segment file loses its last records while the
index still names them. Recovery must rebuild the index from the segments.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import engine
from engine.errors import NotFoundError
from engine.storage.segment import list_segment_ids, segment_path
from tests._helpers import small_ct_bytes


def _cut_last_records(path: Path, keep: int) -> None:
    """Truncate the newest segment right after its first `keep` records."""
    from engine.storage.segment import recover_segment

    root = path / "segments"
    seg = max(list_segment_ids(root))
    records = recover_segment(root, seg, 0, truncate=False).records
    os.truncate(segment_path(root, seg), records[keep].offset)


def test_index_ahead_of_a_cut_segment_is_rebuilt_from_the_segments(tmp_path: Path) -> None:
    datas = [small_ct_bytes(100 + i) for i in range(6)]
    with engine.open_archive(tmp_path) as archive:
        uids = [archive.store(d).sop_instance_uid for d in datas]
    _cut_last_records(tmp_path, keep=4)
    with engine.open_archive(tmp_path) as archive:
        assert archive.recovery.index_ahead and archive.recovery.rebuilt
        for uid, data in zip(uids[:4], datas[:4], strict=True):
            assert archive.get(uid)[132:] == data[132:]
        for uid in uids[4:]:
            with pytest.raises(NotFoundError):
                archive.get(uid)
        assert archive.stats()["instances"] == 4
        assert archive.verify().ok
        assert len(list(archive.find("IMAGE", {"SOPInstanceUID": ""}))) == 4


def test_a_lost_duplicate_falls_back_to_the_older_durable_copy(tmp_path: Path) -> None:
    first = small_ct_bytes(7)
    with engine.open_archive(tmp_path) as archive:
        uid = archive.store(first).sop_instance_uid
    newer = bytearray(first)
    newer[-1] ^= 0xFF  # same SOP Instance UID, other pixel bytes
    with engine.open_archive(tmp_path) as archive:
        archive.store(small_ct_bytes(8))
        assert archive.store(bytes(newer)).duplicate
    _cut_last_records(tmp_path, keep=1)  # the newer copy never reached the disk
    with engine.open_archive(tmp_path) as archive:
        assert archive.recovery.rebuilt
        assert archive.get(uid)[132:] == first[132:]
        assert archive.verify().ok
