"""The change log: every store and deletion the index committed, numbered in commit order.

Each entry is written in the transaction that indexes the instance, so an
entry exists exactly when its change is committed, and costs no fsync of
its own. LMDB has one writer across every process, so the numbers are one
sequence for the whole archive: a reader that remembers the last number it
handled (a forward rule's cursor) resumes there after any crash.

Keys are the number, 8 bytes big endian (they sort in order); values are
one byte of kind and the SOP Instance UID. A reindex keeps the log of the
index it replaces (:func:`copy_log`): the numbers cursors hold stay valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STORED, DELETED = "stored", "deleted"
_KIND_BYTE = {STORED: b"S", DELETED: b"D"}
_KIND_OF = {v[0]: k for k, v in _KIND_BYTE.items()}
_NEXT = b"next_change"  # meta key: the number the next entry gets


@dataclass(frozen=True, slots=True)
class Change:
    seq: int
    kind: str  # STORED or DELETED
    sop_uid: str


def append(txn: Any, dbs: dict[str, Any], kind: str, sop_uid: str) -> int:
    """Log one change inside the caller's write transaction; its number."""
    raw = txn.get(_NEXT, db=dbs["meta"])
    seq = int(raw) if raw else 1
    txn.put(_NEXT, b"%d" % (seq + 1), db=dbs["meta"])
    txn.put(seq.to_bytes(8, "big"), _KIND_BYTE[kind] + sop_uid.encode(), db=dbs["changes"])
    return seq


def head(txn: Any, dbs: dict[str, Any]) -> int:
    """The number of the newest change (0: none yet)."""
    raw = txn.get(_NEXT, db=dbs["meta"])
    return int(raw) - 1 if raw else 0


def after(txn: Any, dbs: dict[str, Any], seq: int, limit: int) -> list[Change]:
    """Up to `limit` changes numbered above `seq`, oldest first."""
    cur = txn.cursor(db=dbs["changes"])
    out: list[Change] = []
    if not cur.set_range((seq + 1).to_bytes(8, "big")):
        return out
    for key, value in cur:
        out.append(Change(int.from_bytes(key, "big"), _KIND_OF[value[0]], value[1:].decode()))
        if len(out) >= limit:
            break
    return out


CARRIED = ("changes", "forward")  # what a reindex keeps: the log and the cursors over it


def copy_log(src_txn: Any, src: dict[str, Any], dst_txn: Any, dst: dict[str, Any]) -> int:
    """Copy the log, its counter and the forward queues' state into another index (a
    reindex, which derives everything else from the segments); entries copied."""
    n = 0
    for name in CARRIED:
        for key, value in src_txn.cursor(db=src[name]):
            dst_txn.put(key, value, db=dst[name])
            n += 1
    raw = src_txn.get(_NEXT, db=src["meta"])
    if raw:
        dst_txn.put(_NEXT, raw, db=dst["meta"])
    return n
