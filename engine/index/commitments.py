"""Storage Commitment transactions a forward rule waits on, and the reports that answer them.

Both live in the index's ``forward`` database, so that the forwarder (which
asks) and every worker (where a destination's report arrives when it opens
a new association to us, PS3.4 J.3.3.1.2) see one state:

``p:TRANSACTION``
    pending: the rule, each instance's attempts so far and when it first
    waited, and when the request went out;
``k:TRANSACTION``
    the report: the committed SOP Instance UIDs and the failed ones with
    their Failure Reason (PS3.3 C.14.1.1).

A report is kept only for a pending transaction: one for a request we never
made is answered and forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

_PENDING, _REPORT = b"p:", b"k:"


@dataclass(frozen=True, slots=True)
class Pending:
    transaction: str
    rule: str
    uids: dict[str, tuple[int, int]]  # SOP Instance UID -> (attempts before, first waited ns)
    asked_ns: int


@dataclass(frozen=True, slots=True)
class Report:
    committed: list[str]
    failed: dict[str, int]  # SOP Instance UID -> Failure Reason


def add_pending(txn: Any, dbs: dict[str, Any], p: Pending) -> None:
    uids = {u: list(a) for u, a in p.uids.items()}
    value = {"rule": p.rule, "uids": uids, "asked_ns": p.asked_ns}
    txn.put(_PENDING + p.transaction.encode(), orjson.dumps(value), db=dbs["forward"])


def _pending(transaction: str, raw: bytes) -> Pending:
    v = orjson.loads(raw)
    uids = {u: (int(a[0]), int(a[1])) for u, a in v["uids"].items()}
    return Pending(transaction, v["rule"], uids, int(v["asked_ns"]))


def get_pending(txn: Any, dbs: dict[str, Any], transaction: str) -> Pending | None:
    raw = txn.get(_PENDING + transaction.encode(), db=dbs["forward"])
    return _pending(transaction, raw) if raw else None


def pending_of(txn: Any, dbs: dict[str, Any], rule: str) -> list[Pending]:
    """The transactions rule `rule` waits on, oldest request first."""
    out = []
    cur = txn.cursor(db=dbs["forward"])
    if cur.set_range(_PENDING):
        for key, value in cur:
            if not key.startswith(_PENDING):
                break
            p = _pending(key[len(_PENDING) :].decode(), value)
            if p.rule == rule:
                out.append(p)
    return sorted(out, key=lambda p: p.asked_ns)


def record_report(txn: Any, dbs: dict[str, Any], transaction: str, report: Report) -> bool:
    """Keep the report of a pending transaction; False (nothing kept) if none is pending."""
    if get_pending(txn, dbs, transaction) is None:
        return False
    value = {"committed": report.committed, "failed": report.failed}
    txn.put(_REPORT + transaction.encode(), orjson.dumps(value), db=dbs["forward"])
    return True


def get_report(txn: Any, dbs: dict[str, Any], transaction: str) -> Report | None:
    raw = txn.get(_REPORT + transaction.encode(), db=dbs["forward"])
    if raw is None:
        return None
    v = orjson.loads(raw)
    return Report(list(v["committed"]), {u: int(r) for u, r in v["failed"].items()})


def drop(txn: Any, dbs: dict[str, Any], transaction: str) -> None:
    """Forget a transaction and its report (settled)."""
    for prefix in (_PENDING, _REPORT):
        txn.delete(prefix + transaction.encode(), db=dbs["forward"])
