"""Key and value encodings of the index databases.

Keys are bytes that sort the way lookups need: UIDs and IDs as UTF-8,
segment ids big endian, child lists as ``parent NUL child`` so that a prefix
scan lists the children of one parent. Values are a fixed struct for instance
locations (read on every get) and orjson for attribute maps.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import orjson

SEP = b"\x00"

# instances: uid -> LOCATION + orjson(InstanceDoc)
LOCATION = struct.Struct("<IQQIQ")  # segment_id, offset, total, meta_span, stored_at_ns

# tombstones: uid -> the stored-at stamp of its newest deletion
TOMBSTONE = struct.Struct("<Q")

# segments: u32 big endian id -> SEGMENT_STATE
# state, indexed_upto, live_bytes, dead_bytes, flags, synced_upto
SEGMENT_STATE = struct.Struct("<BQQQIQ")
SEGMENT_STATE_V1 = struct.Struct("<BQQQI")  # before synced_upto: read as synced to indexed_upto
SEG_ACTIVE, SEG_SEALED, SEG_COMPACTING, SEG_RETIRED = 1, 2, 3, 4
SEG_FLAG_COLD = 0x01  # every record recompressed for the cold tier

# ix_study: one byte naming the attribute, its normalised value, NUL, the study UID
IX_FIELDS = {
    "PatientID": b"I",
    "PatientName": b"N",
    "StudyDate": b"D",
    "AccessionNumber": b"A",
    "ModalitiesInStudy": b"M",
}


@dataclass(frozen=True, slots=True)
class Location:
    segment_id: int
    offset: int
    total: int
    meta_span: int
    stored_at_ns: int


@dataclass(slots=True)
class SegmentState:
    state: int
    indexed_upto: int
    live_bytes: int = 0
    dead_bytes: int = 0
    flags: int = 0
    # how far the file was known durable when indexed_upto was committed; the
    # index commit overlaps the fsync, so [synced_upto, indexed_upto) may be
    # lost by a power cut and is re-verified on open (None: = indexed_upto)
    synced_upto: int | None = None


def seg_key(segment_id: int) -> bytes:
    return segment_id.to_bytes(4, "big")


def pack_segment(s: SegmentState) -> bytes:
    synced = s.indexed_upto if s.synced_upto is None else min(s.synced_upto, s.indexed_upto)
    return SEGMENT_STATE.pack(s.state, s.indexed_upto, s.live_bytes, s.dead_bytes, s.flags, synced)


def unpack_segment(data: bytes) -> SegmentState:
    if len(data) == SEGMENT_STATE_V1.size:
        return SegmentState(*SEGMENT_STATE_V1.unpack(data))
    st = SegmentState(*SEGMENT_STATE.unpack(data))
    if st.synced_upto == st.indexed_upto:
        st.synced_upto = None
    return st


def pack_instance(loc: Location, doc: dict[str, Any]) -> bytes:
    return LOCATION.pack(
        loc.segment_id, loc.offset, loc.total, loc.meta_span, loc.stored_at_ns
    ) + orjson.dumps(doc)


def unpack_location(data: bytes) -> Location:
    return Location(*LOCATION.unpack_from(data))


def unpack_instance(data: bytes) -> tuple[Location, dict[str, Any]]:
    return unpack_location(data), instance_doc(data)


def instance_doc(data: bytes) -> dict[str, Any]:
    """The document of an instance entry alone (queries need no location)."""
    doc: dict[str, Any] = orjson.loads(memoryview(data)[LOCATION.size :])
    return doc


def child_key(parent: str, child: str) -> bytes:
    return parent.encode() + SEP + child.encode()


IX_VALUE_MAX_BYTES = 200  # LMDB keys stop at 511 bytes; longer values share a truncated key


def ix_value(value: str) -> bytes:
    """The indexed form of a normalised value; a longer value is cut (candidates are re-matched)."""
    return value.encode()[:IX_VALUE_MAX_BYTES]


def ix_key(field: str, value: str, study_uid: str) -> bytes:
    return IX_FIELDS[field] + ix_value(value) + SEP + study_uid.encode()


def patient_key(patient_id: str) -> str:
    """Key of a patient: PatientID behind a marker, since LMDB refuses the empty key."""
    return "=" + patient_id


def patient_id_of(key: str) -> str:
    return key[1:]


def dumps(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


def loads(data: bytes) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(data)
    return out
