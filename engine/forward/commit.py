"""Storage Commitment as SCU for a forward rule with ``commit = true`` (PS3.4 Annex J).

After each batch the destination took, the rule asks it to commit those
instances: N-ACTION-RQ on an association of its own (the Push Model only),
kept open while batches keep coming and released once idle, like the
C-STORE associations. The destination's report may come back on that
association or on a new one to one of our workers; either way
:func:`engine.net.commitment.keep_report` keeps it in the index, where the
rule's next round settles the transaction (:meth:`ForwardQueue.settle`).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from typing import TYPE_CHECKING, Any

from pynetdicom import AE, evt

from engine.net.commitment import (
    PUSH_MODEL,
    REQUEST_COMMITMENT,
    WELL_KNOWN_INSTANCE,
    keep_report,
    request_dataset,
)
from engine.net.settings import ServerSettings

if TYPE_CHECKING:
    from engine.archive import Archive

log = logging.getLogger("engine.forward")

IDLE_RELEASE_S = 5.0
ACSE_TIMEOUT_S = 30.0
DIMSE_TIMEOUT_S = 60.0

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
        self.archive, self.remote, self.our_ae = archive, remote, settings.ae_title
        self.host, self.port = remote.host, remote.port
        self.tls = tls if remote.tls else None
        self._assoc: Any = None
        self._used = time.monotonic()

    def request(self, transaction: str, pairs: list[tuple[str, str]]) -> str | None:
        """Ask the destination to commit `pairs` (SOP Class, Instance UIDs); None once it
        accepted the request, else why it did not."""
        self._used = time.monotonic()
        assoc = self._open()
        if assoc is None:
            return f"cannot associate with {self.remote.ae_title} for Storage Commitment"
        status, _ = assoc.send_n_action(request_dataset(transaction, pairs), REQUEST_COMMITMENT,
                                        PUSH_MODEL, WELL_KNOWN_INSTANCE)  # fmt: skip
        code = getattr(status, "Status", None)
        if code is None:
            self.close()
            return f"{self.remote.ae_title} did not answer the Storage Commitment request"
        if code != 0x0000:
            return f"{self.remote.ae_title} refused the Storage Commitment request: 0x{code:04X}"
        return None

    def _open(self) -> Any:
        if self._assoc is not None and self._assoc.is_established:
            return self._assoc
        ae = AE(ae_title=self.our_ae)
        ae.acse_timeout, ae.dimse_timeout = ACSE_TIMEOUT_S, DIMSE_TIMEOUT_S
        ae.add_requested_context(PUSH_MODEL)
        connect: dict[str, Any] = {"tls_args": (self.tls, None)} if self.tls else {}
        handlers: list[Any] = [(evt.EVT_N_EVENT_REPORT, self._on_report)]  # one sent back here
        assoc = ae.associate(self.host, self.port, ae_title=self.remote.ae_title,
                             evt_handlers=handlers, **connect)  # fmt: skip
        self._assoc = assoc if assoc.is_established else None
        return self._assoc

    def _on_report(self, event: Any) -> tuple[int, None]:
        return keep_report(self.archive, event), None

    def idle(self) -> None:
        if self._assoc is not None and time.monotonic() - self._used >= IDLE_RELEASE_S:
            self.close()

    def close(self) -> None:
        held, self._assoc = self._assoc, None
        if held is not None:
            with contextlib.suppress(Exception):
                held.release()
