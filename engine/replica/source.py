"""The primary's side of replication: what its log holds, and the bytes of a span of it.

A replica asks for :func:`log_state` (each segment and how far its records
are committed in the index, with the change log's head and the primary's
clock, all from one read transaction), then for spans of segments with
:func:`read_span`. Only committed bytes are handed out: an active segment up
to ``indexed_upto``, which always ends on a record boundary. Segments being
written by a compaction, or retired by one, are not listed: their live
records are in the compacted segment, listed once it is committed.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from engine.errors import NotFoundError
from engine.index import changes
from engine.index import keys as K

if TYPE_CHECKING:
    from engine.archive import Archive

SPAN_MAX_BYTES = 64 << 20  # one answer; a replica asks again from where it ended
_SHIPPED = (K.SEG_ACTIVE, K.SEG_SEALED)


def log_state(archive: Archive) -> dict[str, Any]:
    """{now_ns, head, segments: [[id, end, sealed], ...]}: what a replica can fetch now.

    `now_ns` is read before the transaction opens: every store acknowledged
    before it was committed before, so it is within the ends listed.
    """
    now_ns = time.time_ns()
    with archive.env.read() as txn:
        head = changes.head(txn, archive.env.db)
        cur = txn.cursor(db=archive.env.db["segments"])
        segs = []
        for key, value in cur:
            st = K.unpack_segment(value)
            if st.state in _SHIPPED:
                segs.append([int.from_bytes(key, "big"), st.indexed_upto, st.state == K.SEG_SEALED])
    return {"now_ns": now_ns, "head": head, "segments": segs}


def change_head(archive: Archive) -> int:
    """The number of the newest committed change (what a waiting replica watches)."""
    with archive.env.read() as txn:
        return changes.head(txn, archive.env.db)


def read_span(archive: Archive, segment_id: int, start: int, length: int) -> bytes:
    """Up to `length` committed bytes of a segment from `start` (fewer at its committed end).

    Raises
    ------
    engine.errors.NotFoundError
        The segment is not (or no longer) in the log: compacted away, or never was.
    """
    with archive.env.read() as txn:
        st = archive.catalog.get_segment(txn, segment_id)
    if st is None or st.state not in _SHIPPED:
        raise NotFoundError(f"segment {segment_id} is not in the log (compacted away?); "
                            "read the log state again")  # fmt: skip
    end = min(st.indexed_upto, start + min(length, SPAN_MAX_BYTES))
    if end <= start:
        return b""
    return archive.reader.read(segment_id, start, end - start)
