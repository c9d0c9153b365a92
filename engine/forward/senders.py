"""Sending a batch of stored instances to a forward destination: DIMSE C-STORE or STOW-RS.

Either sender answers with a :class:`Delivery`: what the destination took,
what it refused (a failure status, a STOW failure reason), and what never
reached it because the association or the connection failed (``unsent``,
with the reason). Refusals count against an instance's attempts; a
destination that cannot be reached does not, it only makes the queue wait.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import orjson
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

from engine import dimse as D
from engine import pdu as P
from engine.net.retrieve import Match, proposed_contexts
from engine.net.send import Destination, DestinationLink, LinkLost, store_each
from engine.net.settings import ServerSettings

if TYPE_CHECKING:
    from engine.archive import Archive

log = logging.getLogger("engine.forward")

STOW_REQUEST_BYTES = 32 << 20  # one STOW-RS request carries at most about this much
HTTP_TIMEOUT_S = 120.0
IDLE_RELEASE_S = 5.0  # an association nothing was sent over for this long is released


@dataclass(slots=True)
class Delivery:
    sent: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    unsent: list[str] = field(default_factory=list)
    error: str = ""  # why `unsent` could not go

    def add(self, other: Delivery) -> None:
        self.sent += other.sent
        self.refused += other.refused
        self.unsent += other.unsent
        self.error = self.error or other.error


def describe(status: int) -> str:
    """A C-STORE status as words, e.g. ``0xA700 (Refused: Out of Resources)``."""
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(status, ("", "failure"))[1]
    return f"C-STORE status 0x{status:04X} ({meaning})"


# -- DIMSE ------------------------------------------------------------------------


class DicomSender:
    """C-STORE to a [remotes] entry over `parallel` associations, each instance as stored.

    The associations stay open between batches while stores keep coming (a
    modality's series arrives as many small batches) and are released once
    idle for :data:`IDLE_RELEASE_S`, or replaced when a batch holds a SOP
    Class or transfer syntax they were not proposed for.
    """

    def __init__(self, archive: Archive, settings: ServerSettings, ae_title: str,
                 parallel: int, client_tls: ssl.SSLContext | None = None) -> None:  # fmt: skip
        remote = settings.remotes[ae_title]
        assert remote.host is not None and remote.port is not None  # checked by forward_rules
        self.archive, self.parallel = archive, parallel
        self.target = Destination(remote.host, remote.port, settings.ae_title, ae_title)
        self.tls = client_tls if remote.tls else None
        self.timeout_s = settings.network_timeout_s
        self._links: list[_Open | None] = [None] * parallel
        self._used = time.monotonic()

    def send(self, matches: Sequence[Match], study_of: Callable[[Match], str]) -> Delivery:
        """Send `matches` (in order; a study's instances stay on one association)."""
        self._used = time.monotonic()
        groups = _by_study(matches, study_of, self.parallel)
        if len(groups) == 1:
            return self._send_group(0, groups[0])
        results = [Delivery() for _ in groups]

        def work(i: int) -> None:
            results[i] = self._send_group(i, groups[i])

        threads = [threading.Thread(target=work, args=(i,), name=f"forward-{i}", daemon=True)
                   for i in range(len(groups))]  # fmt: skip
        for t in threads:
            t.start()
        total = Delivery()
        for t in threads:
            t.join()
        for r in results:
            total.add(r)
        return total

    def idle(self) -> None:
        """Release the associations once nothing was sent for :data:`IDLE_RELEASE_S`."""
        if time.monotonic() - self._used >= IDLE_RELEASE_S:
            self.close()

    def close(self) -> None:
        for i in range(len(self._links)):
            self._release(i)

    def _release(self, i: int) -> None:
        held, self._links[i] = self._links[i], None
        if held is not None:
            with contextlib.suppress(OSError, P.PeerClosed, P.ProtocolError):
                held.assoc.release()
            held.assoc.close()

    def _link(self, i: int, matches: list[Match]) -> _Open:
        pairs = {(m.sop_class, m.transfer_syntax) for m in matches}
        held = self._links[i]
        if held is not None and pairs <= held.pairs:
            return held
        self._release(i)  # proposed for other instances, if any: a new one for these
        contexts = [(str(cx.abstract_syntax), [str(t) for t in cx.transfer_syntax])
                    for cx in proposed_contexts(matches)]  # fmt: skip
        assoc = D.Association.open(self.target, contexts, tls=self.tls, timeout_s=self.timeout_s)
        held = _Open(assoc, DestinationLink(assoc, lambda: False), pairs)
        self._links[i] = held
        return held

    def _send_group(self, i: int, matches: list[Match]) -> Delivery:
        out = Delivery()
        try:
            held = self._link(i, matches)
        except (OSError, P.PeerClosed, P.ProtocolError, ValueError) as exc:
            out.unsent = [m.sop_instance for m in matches]
            out.error = (
                f"cannot associate with {self.target.ae_title} at "
                f"{self.target.host}:{self.target.port}: {exc}"
            )
            return out
        done: set[str] = set()
        try:
            for m, status in store_each(self.archive, matches, held.link):
                done.add(m.sop_instance)
                if code_to_category(status) in ("Success", "Warning"):
                    out.sent.append(m.sop_instance)
                else:
                    out.refused.append((m.sop_instance, describe(status)))
        except LinkLost as exc:
            held.assoc.close()
            self._links[i] = None
            out.unsent = [m.sop_instance for m in matches if m.sop_instance not in done]
            out.error = str(exc)
        return out


@dataclass(slots=True)
class _Open:
    """An association kept open between batches, and the (class, syntax) pairs it was
    proposed for."""

    assoc: D.Association
    link: DestinationLink
    pairs: set[tuple[str, str]]


def _by_study(matches: Sequence[Match], study_of: Callable[[Match], str],
              n: int) -> list[list[Match]]:  # fmt: skip
    """`matches` in at most `n` groups of whole studies, each in order, sizes near even."""
    studies: dict[str, list[Match]] = {}
    for m in matches:
        studies.setdefault(study_of(m), []).append(m)
    groups: list[list[Match]] = [[] for _ in range(min(n, len(studies)) or 1)]
    for ms in studies.values():  # each study to the group with the fewest so far
        min(groups, key=len).extend(ms)
    return [g for g in groups if g]


# -- STOW-RS ----------------------------------------------------------------------


class StowSender:
    """STOW-RS (PS3.18 10.5) to a DICOMweb base URL: the stored Part 10 files, as received.

    Basic auth from the URL's user and password (``https://user:pass@host/dicom-web``).
    """

    def __init__(self, archive: Archive, url: str, parallel: int) -> None:
        parts = urlsplit(url)
        self.archive, self.parallel = archive, parallel
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname or "", parts.port
        self.path = (parts.path.rstrip("/") or "") + "/studies"
        self.auth = None
        if parts.username is not None:
            token = f"{parts.username}:{parts.password or ''}".encode()
            self.auth = "Basic " + base64.b64encode(token).decode()
        port = f":{self.port}" if self.port else ""
        self.shown = f"{parts.scheme}://{self.host}{port}{parts.path}"  # no password

    def send(self, matches: Sequence[Match], study_of: Callable[[Match], str]) -> Delivery:
        out = Delivery()
        chunk: list[tuple[str, bytes]] = []
        size = 0
        for i, m in enumerate(matches):
            try:
                data = self.archive.get(m.sop_instance)
            except Exception as exc:  # noqa: BLE001 -- one instance fails, not the batch
                out.refused.append((m.sop_instance, f"cannot read it here: {exc}"))
                continue
            chunk.append((m.sop_instance, data))
            size += len(data)
            if size >= STOW_REQUEST_BYTES:
                out.add(self._post(chunk))
                chunk, size = [], 0
                if out.unsent:  # unreachable: the rest waits too
                    out.unsent += [x.sop_instance for x in matches[i + 1 :]]
                    return out
        if chunk:
            out.add(self._post(chunk))
        return out

    def idle(self) -> None:
        """Nothing to release: each request has its own connection."""

    def close(self) -> None:
        pass

    def _post(self, items: list[tuple[str, bytes]]) -> Delivery:
        boundary = uuid.uuid4().hex
        body = b"".join(b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n"
                        % (boundary.encode(), data) for _, data in items)  # fmt: skip
        body += b"--%s--\r\n" % boundary.encode()
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
            "Content-Length": str(len(body)),
        }
        if self.auth:
            headers["Authorization"] = self.auth
        uids = [uid for uid, _ in items]
        conn_class = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = conn_class(self.host, self.port, timeout=HTTP_TIMEOUT_S)
        try:
            conn.request("POST", self.path, body=body, headers=headers)
            rsp = conn.getresponse()
            answer = rsp.read()
        except (OSError, http.client.HTTPException) as exc:
            return Delivery(unsent=uids, error=f"STOW-RS to {self.shown}: {exc}")
        finally:
            conn.close()
        return _stow_outcome(rsp.status, answer, uids, self.shown)


def _stow_outcome(status: int, answer: bytes, uids: list[str], shown: str) -> Delivery:
    """PS3.18 10.5.3: 200 all stored, 202 some failed (FailedSOPSequence names them), 4xx
    all refused, 5xx and anything else: the server could not take them now (retry)."""
    if status in (200, 202):
        failed = _failed_sops(answer)
        refused = [(uid, f"STOW-RS failure reason {failed[uid]}") for uid in uids if uid in failed]
        return Delivery(sent=[u for u in uids if u not in failed], refused=refused)
    text = answer[:300].decode("utf-8", "replace").strip()
    if 400 <= status < 500 and status not in (401, 403, 408, 429):
        return Delivery(refused=[(u, f"STOW-RS HTTP {status}: {text}") for u in uids])
    return Delivery(unsent=uids, error=f"STOW-RS to {shown}: HTTP {status}: {text}")


def _failed_sops(answer: bytes) -> dict[str, str]:
    """SOP Instance UID -> Failure Reason of a DICOM JSON STOW-RS response."""
    try:
        doc = orjson.loads(answer) if answer else {}
    except orjson.JSONDecodeError:
        return {}
    out = {}
    for item in (doc.get("00081198") or {}).get("Value", []) if isinstance(doc, dict) else []:
        uid = ((item.get("00081155") or {}).get("Value") or [""])[0]
        reason = ((item.get("00081197") or {}).get("Value") or ["?"])[0]
        out[str(uid)] = f"0x{reason:04X}" if isinstance(reason, int) else str(reason)
    return out
