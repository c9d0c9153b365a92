"""A-ASSOCIATE-RQs seen before: pynetdicom's decoding of them, and our answer, kept.

A peer sends the same request each time it associates. DCMTK ``getscu``
proposes 121 presentation contexts with as many role selections, which
pynetdicom takes about 20 ms to decode (every UID is validated) and 7 ms
more to negotiate and encode the A-ASSOCIATE-AC for: longer than sending a
50-slice series. The request's bytes are the key: the same bytes decode to
the same primitive and, on one server, negotiate to the same presentation
context results and the same A-ASSOCIATE-AC (which echoes the request's AE
titles, part of the key).

Everything checked per association is still checked every time (the called
AE title, access, the association limit, the user identity); only pure
functions of the bytes are kept. A request with a user identity item is
never kept, so a passcode lives no longer than its association.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from pynetdicom.pdu_primitives import A_ASSOCIATE, UserIdentityNegotiation
from pynetdicom.presentation import PresentationContext

KEPT_REQUESTS = 64  # distinct peer configurations; a getscu request is about 17 KB


@dataclass(frozen=True, slots=True)
class Answer:
    """What negotiating a request gave: the context results and the encoded A-ASSOCIATE-AC."""

    results: list[PresentationContext]
    ac: bytes


class RequestCache:
    """The last :data:`KEPT_REQUESTS` requests by their bytes; shared by a worker's threads.

    The primitives and answers handed out are shared between associations:
    callers read them and never change them.
    """

    def __init__(self, size: int = KEPT_REQUESTS) -> None:
        self._size = size
        self._entries: OrderedDict[bytes, tuple[A_ASSOCIATE, Answer | None]] = OrderedDict()
        self._lock = threading.Lock()

    def decoded(
        self, rq: bytes, decode: Callable[[bytes], A_ASSOCIATE | None]
    ) -> A_ASSOCIATE | None:
        """The primitive of the A-ASSOCIATE-RQ PDU `rq`: kept, or ``decode(rq)`` (which may
        raise, or be None for a request the caller will not serve; neither is kept)."""
        with self._lock:
            entry = self._entries.get(rq)
            if entry is not None:
                self._entries.move_to_end(rq)
                return entry[0]
        primitive = decode(rq)
        if primitive is not None and not _carries_identity(primitive):
            with self._lock:
                self._entries[rq] = (primitive, None)
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
        return primitive

    def answer(self, rq: bytes) -> Answer | None:
        """The answer kept for `rq`, if it was negotiated here before."""
        with self._lock:
            entry = self._entries.get(rq)
        return entry[1] if entry is not None else None

    def keep_answer(self, rq: bytes, answer: Answer) -> None:
        """Keep `answer` beside the request it answers (a request not kept: nothing)."""
        with self._lock:
            entry = self._entries.get(rq)
            if entry is not None:
                self._entries[rq] = (entry[0], answer)


def _carries_identity(primitive: A_ASSOCIATE) -> bool:
    return any(isinstance(item, UserIdentityNegotiation) for item in primitive.user_information)
