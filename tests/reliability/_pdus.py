"""Malformed upper-layer traffic, generated from a seed: PS3.8 broken every way we know.

Each :class:`PduCase` is the bytes a peer sends, either before any
association or after a good one (on the fast path: storage alone; on
pynetdicom's path: storage plus C-FIND), and the outcomes the server may
answer with. ``flipped`` and ``truncated`` cases may by chance still be valid,
so they also allow a response.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pydicom.dataset import Dataset

from tests.reliability._raw import (
    PDU,
    PDV,
    STORE_CONTEXT,
    associate_rq,
    c_store,
    p_data,
    store_command,
)

ABORTED = frozenset({"abort", "closed"})
ANY_ANSWER = frozenset({"abort", "closed", "data", "reject", "accept", "release"})
BEFORE = frozenset({"abort", "closed", "reject"})
PATHS = ("before", "fast", "pynetdicom")
HTTP_REQUESTS = (
    b"GET /dicom-web/studies HTTP/1.1\r\nHost: pacs\r\n\r\n",
    b"POST /dicom-web/studies HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100,
    b"OPTIONS * HTTP/1.1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),  # a TLS ClientHello
)


@dataclass(frozen=True)
class PduCase:
    family: str
    path: str  # "before": no association first; "fast" or "pynetdicom": after one
    payload: bytes
    allowed: frozenset[str]
    half_close: bool = False  # shut our side down after sending: the rest never comes

    @property
    def name(self) -> str:
        return f"{self.path}/{self.family}"


def _flip(rng: random.Random, data: bytes, start: int, flips: int) -> bytes:
    out = bytearray(data)
    for _ in range(flips):
        at = rng.randrange(start, len(out))
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def _before(rng: random.Random, ds: Dataset) -> PduCase:
    rq = associate_rq(via_pynetdicom=rng.random() < 0.5)
    family = rng.choice(["garbage", "http", "p-data-first", "version", "rq-flipped",
                         "rq-truncated", "rq-length", "release-first", "abort-first",
                         "ac-first"])  # fmt: skip
    if family == "garbage":
        payload = rng.randbytes(rng.randrange(1, 400))
        return PduCase(family, "before", payload, BEFORE | {"accept", "data"}, half_close=True)
    if family == "http":
        return PduCase(family, "before", rng.choice(HTTP_REQUESTS), BEFORE)
    if family == "p-data-first":
        return PduCase(family, "before", p_data(STORE_CONTEXT, 0x03, store_command(ds)), BEFORE)
    if family == "version":
        version = rng.choice([0, 2, 3, 0x80, 0xFFFF])
        rq_ = associate_rq(via_pynetdicom=False, version=version)
        return PduCase(family, "before", rq_, BEFORE)
    if family == "rq-flipped":
        payload = _flip(rng, rq, 1, rng.randrange(1, 6))
        return PduCase(family, "before", payload, BEFORE | {"accept"}, half_close=True)
    if family == "rq-truncated":
        payload = rq[: rng.randrange(1, len(rq))]
        return PduCase(family, "before", payload, BEFORE, half_close=True)
    if family == "rq-length":
        length = rng.choice([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, len(rq) + rng.randrange(1, 1 << 24)])
        payload = PDU.pack(0x01, length) + rq[6:]
        return PduCase(family, "before", payload, BEFORE, half_close=True)
    kind = {"release-first": 0x05, "abort-first": 0x07, "ac-first": 0x02}[family]
    return PduCase(family, "before", PDU.pack(kind, 4) + b"\0" * 4, BEFORE)


def _after(rng: random.Random, ds: Dataset, path: str) -> PduCase:
    store = c_store(ds)
    command = p_data(STORE_CONTEXT, 0x03, store_command(ds))
    family = rng.choice(["pdu-length", "pdu-type", "pdv-length", "context-id", "data-first",
                         "command-flags", "flipped", "truncated", "release-length",
                         "associate-again", "zero-pdu"])  # fmt: skip
    if family == "pdu-length":
        length = rng.choice([0xFFFFFFFF, 0x80000000, (4 << 20) + rng.randrange(1, 1 << 20)])
        payload = PDU.pack(0x04, length) + PDV.pack(10, STORE_CONTEXT, 0x03) + b"\0" * 8
        return PduCase(family, path, payload, ABORTED)
    if family == "pdu-type":
        kind = rng.choice([0x00, 0x08, 0x09, 0x10, 0x47, 0x80, 0xFF])
        return PduCase(family, path, PDU.pack(kind, 4) + b"\0" * 4, ABORTED)
    if family == "pdv-length":
        item = rng.choice([0, 1, 0xFFFFFFFF, 5000, 0x10000])
        payload = PDU.pack(0x04, 12) + PDV.pack(item, STORE_CONTEXT, 0x03) + b"x" * 6
        return PduCase(family, path, payload, ABORTED, half_close=True)
    if family == "context-id":
        context = rng.choice([0, 2, 5, 99, 255])
        return PduCase(family, path, p_data(context, 0x03, store_command(ds)), ABORTED)
    if family == "data-first":
        return PduCase(family, path, store[len(command) :], ABORTED | {"data"})
    if family == "command-flags":
        mch = rng.choice([0x01, 0x03 | 0x04, 0xFF, 0x01 | 0x80])
        payload = p_data(STORE_CONTEXT, mch, store_command(ds)[:20]) + p_data(
            STORE_CONTEXT, 0x02, b"\0" * 64)  # fmt: skip
        return PduCase(family, path, payload, ABORTED | {"data"}, half_close=True)
    if family == "flipped":
        payload = _flip(rng, store, 0, rng.randrange(1, 8))
        return PduCase(family, path, payload, ANY_ANSWER, half_close=True)
    if family == "truncated":
        payload = store[: rng.randrange(1, len(store))]
        return PduCase(family, path, payload, ABORTED | {"data"}, half_close=True)
    if family == "release-length":
        n = rng.choice([0, 3, 9, 100])
        return PduCase(family, path, PDU.pack(0x05, n) + b"\0" * n, ABORTED | {"release"})
    if family == "associate-again":
        return PduCase(family, path, associate_rq(via_pynetdicom=path == "pynetdicom"), ABORTED)
    return PduCase(family, path, PDU.pack(0x04, 0), ABORTED | {"data"}, half_close=True)


def pdu_cases(seed: int, count: int, ds: Dataset) -> list[PduCase]:
    """`count` malformed cases, a third before association, a third on each path."""
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        path = PATHS[i % 3]
        cases.append(_before(rng, ds) if path == "before" else _after(rng, ds, path))
    return cases
