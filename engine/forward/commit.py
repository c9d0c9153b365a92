"""Storage Commitment as SCU for a forward rule with ``commit = true`` (PS3.4 Annex J).

After each batch the destination took, the rule asks it to commit those
instances: N-ACTION-RQ on a new association (the Push Model only). The
destination's report may come back on that association or on a new one to
one of our workers; either way :func:`engine.net.commitment.keep_report`
keeps it in the index, where the rule's next round settles the transaction
(:meth:`ForwardQueue.settle`).

One request per association: a report that arrived while a later N-ACTION
waited for its response would be taken for that response (pynetdicom reads
the next message). Each association stays open, without blocking the rule,
until its report is in or for :data:`REPORT_ON_ASSOCIATION_S`, then it is
released (the oldest first once :data:`MAX_OPEN` are open).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from typing import TYPE_CHECKING, Any

from pynetdicom import evt

from engine.index import commitments
from engine.net.commitment import (
    PUSH_MODEL,
    REQUEST_COMMITMENT,
    WELL_KNOWN_INSTANCE,
    associate,
    keep_report,
    request_dataset,
)
from engine.net.settings import ServerSettings

if TYPE_CHECKING:
    from engine.archive import Archive

log = logging.getLogger("engine.forward")

REPORT_ON_ASSOCIATION_S = 10.0  # how long a request's association waits for a report on it
MAX_OPEN = 4  # requests' associations open at once; the oldest goes first

# Failure Reason (PS3.3 C.14.1.1) as words, for the retry's error and the dead letter
FAILURE_REASONS = {
    0x0110: "processing failure", 0x0112: "no such object instance",
    0x0119: "class/instance conflict", 0x0122: "SOP class not supported",
    0x0131: "duplicate transaction UID", 0x0213: "resource limitation",
}  # fmt: skip


def not_committed(reason: int) -> str:
    """Why an instance was not committed, e.g. ``not committed: 0x0112 (no such object...)``."""
    return f"not committed: 0x{reason:04X} ({FAILURE_REASONS.get(reason, 'failure')})"


class Committer:
    """N-ACTION requests to the [remotes] entry `ae_title`, from our AE title."""

    def __init__(self, archive: Archive, settings: ServerSettings, ae_title: str,
                 tls: ssl.SSLContext | None) -> None:  # fmt: skip
        remote = settings.remotes[ae_title]
        assert remote.host is not None and remote.port is not None  # checked by forward_rules
        self.archive, self.remote, self.our_ae, self.tls = archive, remote, settings.ae_title, tls
        self._open: list[tuple[Any, str, float]] = []  # (association, transaction, release by)

    def request(self, transaction: str, pairs: list[tuple[str, str]]) -> str | None:
        """Ask the destination to commit `pairs` (SOP Class, Instance UIDs); None once it
        accepted the request, else why it did not."""
        self.idle()
        assoc = self._associate()
        if assoc is None:
            return f"cannot associate with {self.remote.ae_title} for Storage Commitment"
        try:
            status, _ = assoc.send_n_action(request_dataset(transaction, pairs),
                                            REQUEST_COMMITMENT, PUSH_MODEL,
                                            WELL_KNOWN_INSTANCE)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 -- an odd peer or dataset: this request fails
            _release(assoc)
            return f"the Storage Commitment request to {self.remote.ae_title} failed: {exc}"
        code = getattr(status, "Status", None)
        if code != 0x0000:
            _release(assoc)
            if code is None:
                return f"{self.remote.ae_title} did not answer the Storage Commitment request"
            return f"{self.remote.ae_title} refused the Storage Commitment request: 0x{code:04X}"
        self._open.append((assoc, transaction, time.monotonic() + REPORT_ON_ASSOCIATION_S))
        while len(self._open) > MAX_OPEN:  # the destination's association limit is not ours
            _release(self._open.pop(0)[0])
        return None

    def _associate(self) -> Any:
        handlers: list[Any] = [(evt.EVT_N_EVENT_REPORT, self._on_report)]  # one sent back here
        return associate(self.our_ae, self.remote, self.tls, as_scp=False, handlers=handlers)

    def _on_report(self, event: Any) -> tuple[int, None]:
        return keep_report(self.archive, event), None

    def idle(self) -> None:
        """Release the associations whose report is in, or that waited long enough."""
        now, kept = time.monotonic(), []
        for assoc, transaction, until in self._open:
            if now >= until or not assoc.is_established or self._answered(transaction):
                _release(assoc)
            else:
                kept.append((assoc, transaction, until))
        self._open = kept

    def _answered(self, transaction: str) -> bool:
        env = self.archive.env
        with env.read() as txn:
            return (
                commitments.get_pending(txn, env.db, transaction) is None
                or commitments.get_report(txn, env.db, transaction) is not None
            )

    def close(self) -> None:
        for assoc, _, _ in self._open:
            _release(assoc)
        self._open = []


def _release(assoc: Any) -> None:
    with contextlib.suppress(Exception):  # a peer gone meanwhile: nothing left to release
        assoc.release()
