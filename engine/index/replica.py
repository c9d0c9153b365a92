"""Whether this archive follows a primary, and how far it has come: a few keys in the index.

A replica's state is one document under the ``meta`` key ``replica``, written
in the same transactions as what it describes, so that it survives any crash
along with the records it talks about:

- ``primary``: the primary's URL, without credentials;
- ``cursors``: for each of the primary's segments, the offset up to which its
  records are stored and indexed here (a record fetched again after a crash
  is recognised by its UID and stamp and skipped);
- ``applied_head`` / ``applied_ns``: the primary's change number and clock at
  a moment when the replica held everything the primary had committed: every
  instance the primary acknowledged before ``applied_ns`` is here;
- ``seen_head`` / ``seen_ns`` / ``behind_bytes``: the newest the replica has
  heard of; ``contact_ns`` (our clock) and ``error``;
- ``promote``: set by ``pacs promote`` for the follower to finish and let go.

``promoted`` stays once a replica became a primary (when, and its last
document), so that it is never made to follow again by a leftover flag or
config, and so that ``pacs promote`` can say what the replica held.
"""

from __future__ import annotations

from typing import Any

import orjson

from engine.errors import ReplicaRoleError

_STATE = b"replica"
_PROMOTED = b"promoted"


def state(txn: Any, dbs: dict[str, Any]) -> dict[str, Any] | None:
    """The replica document; None when this archive is a primary."""
    raw = txn.get(_STATE, db=dbs["meta"])
    return orjson.loads(raw) if raw else None


def put_state(txn: Any, dbs: dict[str, Any], doc: dict[str, Any]) -> None:
    txn.put(_STATE, orjson.dumps(doc), db=dbs["meta"])


def promoted(txn: Any, dbs: dict[str, Any]) -> dict[str, Any] | None:
    """{"promoted_ns", "last"}: when this archive stopped following a primary, and its last
    replica document; None if it never did."""
    raw = txn.get(_PROMOTED, db=dbs["meta"])
    return orjson.loads(raw) if raw else None


def begin(txn: Any, dbs: dict[str, Any], primary: str, instances: int) -> dict[str, Any]:
    """Make this archive a replica of `primary` (or confirm that it is one); its document.

    Raises
    ------
    ReplicaRoleError
        It was promoted already, follows another primary, or holds instances of
        its own: following would mix two histories.
    """
    doc = state(txn, dbs)
    if doc is not None:
        if doc["primary"] != primary:
            raise ReplicaRoleError(
                f"this archive is a replica of {doc['primary']}, not of {primary}; "
                "start the new replica in an empty data directory"
            )
        return doc
    if promoted(txn, dbs) is not None:
        raise ReplicaRoleError(
            "this archive was a replica and has been promoted to primary; it follows no one "
            "now (drop --replica-of / [replica], or start a new replica in an empty directory)"
        )
    if instances:
        raise ReplicaRoleError(
            f"this archive holds {instances} instances of its own; a replica starts empty"
        )
    doc = {"primary": primary, "cursors": {}, "applied_head": 0, "applied_ns": 0,
           "seen_head": 0, "seen_ns": 0, "behind_bytes": 0, "contact_ns": 0,
           "error": None}  # fmt: skip
    put_state(txn, dbs, doc)
    return doc


def request_promotion(txn: Any, dbs: dict[str, Any]) -> dict[str, Any]:
    """Ask the running follower to stop and let this archive take stores; its document."""
    doc = state(txn, dbs)
    if doc is None:
        raise ReplicaRoleError("this archive is not a replica: there is nothing to promote")
    doc["promote"] = True
    put_state(txn, dbs, doc)
    return doc


def finish_promotion(txn: Any, dbs: dict[str, Any], now_ns: int) -> dict[str, Any] | None:
    """Become a primary: the last replica document is returned (None: was one already)."""
    doc = state(txn, dbs)
    if doc is None:
        return None
    txn.delete(_STATE, db=dbs["meta"])
    txn.put(_PROMOTED, orjson.dumps({"promoted_ns": now_ns, "last": doc}), db=dbs["meta"])
    return doc


def lag(doc: dict[str, Any]) -> dict[str, Any]:
    """How far behind the primary a replica document says it is: records, bytes, seconds."""
    records = max(0, doc["seen_head"] - doc["applied_head"])
    behind = records > 0 or doc["behind_bytes"] > 0
    seconds = max(0.0, (doc["seen_ns"] - doc["applied_ns"]) / 1e9) if behind else 0.0
    return {"records": records, "bytes": doc["behind_bytes"], "seconds": seconds,
            "point_ns": doc["applied_ns"]}  # fmt: skip


def summary(txn: Any, dbs: dict[str, Any]) -> dict[str, Any] | None:
    """Whom this replica follows and how far behind it is (``pacs stats``, the admin API);
    None when it is a primary."""
    doc = state(txn, dbs)
    if doc is None:
        return None
    return {"primary": doc["primary"], **lag(doc), "records_applied": doc.get("records", 0),
            "contact_ns": doc["contact_ns"], "error": doc["error"]}  # fmt: skip
