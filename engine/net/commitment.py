"""Storage Commitment Push Model as SCP (PS3.4 Annex J): N-ACTION answered, N-EVENT-REPORT sent.

A requester (a modality, another archive) sends N-ACTION-RQ, Action Type 1,
with a Transaction UID and the SOP instances it wants us to take
responsibility for. We answer the N-ACTION at once, then judge each
instance: stored, of the SOP class the requester names, and its whole
record read back from disk with its checksum verified (stores are
acknowledged only once fsynced, so a stored instance is a durable one; an
archive run with ``durability = "none"`` commits nothing). The verdict goes
back in an N-EVENT-REPORT-RQ, Event Type 1 (all committed) or 2 (failures
exist, each with its Failure Reason, PS3.3 C.14.1.1):

- on a new association to the requester's ``[remotes.AET]`` (host and port,
  TLS as configured) proposing the Push Model with us in the SCP role
  (PS3.4 J.3.3.1.2 note 1, PS3.7 D.3.3.4): the one way every SCU supports,
  since an SCU may release the request's association at once (Orthanc does);
- when the requester has no ``[remotes]`` entry, on the association the
  request came on, which the requester must then keep open.

A report that cannot be delivered is retried with backoff for
:data:`REPORT_ATTEMPTS` tries, then logged at ERROR. Transactions are not
kept across a restart of the worker: an SCU that hears nothing asks again
(IHE RAD-10 leaves the timeout to it).

As SCU (a forward rule with ``commit = true``, :mod:`engine.forward.commit`)
the forwarder asks; a destination's report may come on a new association
to any worker, which :func:`handle_n_event_report` keeps in the index for
the forwarder (:mod:`engine.index.commitments`).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lmdb
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from engine.errors import CorruptRecordError, EngineError, NotFoundError, StorageIOError
from engine.index.commitments import Report, record_report
from engine.net.settings import Access, Remote

if TYPE_CHECKING:
    from engine.archive import Archive

log = logging.getLogger("engine.net")

PUSH_MODEL = str(StorageCommitmentPushModel)
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"  # PS3.4 J.3.5: the one SOP Instance of the class
REQUEST_COMMITMENT = 1  # Action Type ID (PS3.4 J.3.2.1)
ALL_COMMITTED, FAILURES_EXIST = 1, 2  # Event Type IDs (PS3.4 J.3.3.1)

# N-ACTION statuses (PS3.7 10.1.4.1.10, Annex C)
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
NO_SUCH_SOP_INSTANCE = 0x0112
NO_SUCH_EVENT_TYPE = 0x0113
INVALID_ARGUMENT = 0x0115
NO_SUCH_SOP_CLASS = 0x0118
NO_SUCH_ACTION = 0x0123
NOT_AUTHORISED = 0x0124

# Failure Reason (0008,1197) of a Failed SOP Sequence item (PS3.3 C.14.1.1)
REASON_PROCESSING_FAILURE = 0x0110
REASON_NO_SUCH_INSTANCE = 0x0112
REASON_CLASS_CONFLICT = 0x0119

REPORT_ATTEMPTS = 6
REPORT_RETRY_BASE_S = 2.0  # then 4, 8, 16, 32 s: about a minute in all
ACSE_TIMEOUT_S = 30.0
DIMSE_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """What an N-EVENT-REPORT-RQ carries: its Event Type ID and Event Information."""

    event_type: int
    information: Dataset
    committed: int
    failed: int


def request_dataset(transaction: str, pairs: list[tuple[str, str]]) -> Dataset:
    """An N-ACTION's Action Information asking to commit `pairs` (SOP Class, Instance UIDs)."""
    info = Dataset()
    info.TransactionUID = transaction
    items = []
    for sop_class, sop_instance in pairs:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
        items.append(item)
    info.ReferencedSOPSequence = items
    return info


def requested(information: Dataset | None) -> tuple[str, list[tuple[str, str]]] | None:
    """The Transaction UID and the (SOP Class UID, SOP Instance UID) pairs of an Action
    Information; None if one of them is missing (PS3.4 J.3.2.1.1, Table J.3-1)."""
    if information is None:
        return None
    transaction = str(information.get("TransactionUID", "") or "").strip()
    items = information.get("ReferencedSOPSequence")
    if not transaction or not items:
        return None
    pairs = []
    for item in items:
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
        sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
        if not sop_class or not sop_instance:
            return None
        pairs.append((sop_class, sop_instance))
    return transaction, pairs


def failure_reason(archive: Archive, sop_class: str, sop_instance: str) -> int | None:
    """None if the archive commits to the instance, else the Failure Reason why not."""
    try:
        stored_class = archive.check(sop_instance)
    except NotFoundError:
        return REASON_NO_SUCH_INSTANCE
    except (CorruptRecordError, StorageIOError) as exc:
        log.error("storage commitment: %s cannot be read back: %s", sop_instance, exc)
        return REASON_PROCESSING_FAILURE
    except (EngineError, lmdb.Error) as exc:  # the index failed, the archive is closing, a
        log.error("storage commitment: %s not checked: %s", sop_instance, exc)  # bad UID
        return REASON_PROCESSING_FAILURE
    return None if stored_class == sop_class else REASON_CLASS_CONFLICT


def judge(archive: Archive, transaction: str, pairs: list[tuple[str, str]],
          retrieve_ae: str) -> Verdict:  # fmt: skip
    """Check every requested instance; the report that answers the transaction."""
    info = Dataset()
    info.TransactionUID = transaction
    committed, failed = [], []
    for sop_class, sop_instance in pairs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        reason = failure_reason(archive, sop_class, sop_instance)
        if reason is None:
            committed.append(item)
        else:
            item.FailureReason = reason
            failed.append(item)
    if committed:
        info.RetrieveAETitle = retrieve_ae  # where the committed instances can be retrieved
        info.ReferencedSOPSequence = committed
    if failed:
        info.FailedSOPSequence = failed
    return Verdict(FAILURES_EXIST if failed else ALL_COMMITTED, info, len(committed), len(failed))


def report_on(assoc: Any, verdict: Verdict) -> int | None:
    """Send the N-EVENT-REPORT on an established association; the peer's status or None."""
    status, _ = assoc.send_n_event_report(verdict.information, verdict.event_type,
                                          PUSH_MODEL, WELL_KNOWN_INSTANCE)  # fmt: skip
    code = getattr(status, "Status", None)
    return int(code) if code is not None else None


def associate(our_ae: str, remote: Remote, tls: ssl.SSLContext | None, *, as_scp: bool,
              handlers: list[Any] | None = None) -> Any:  # fmt: skip
    """A new association to `remote` for the Push Model alone (TLS if the remote wants it),
    proposing us as SCP if `as_scp`; None if it was not established."""
    assert remote.host is not None and remote.port is not None
    ae = AE(ae_title=our_ae)
    ae.acse_timeout, ae.dimse_timeout = ACSE_TIMEOUT_S, DIMSE_TIMEOUT_S
    ae.add_requested_context(PUSH_MODEL)
    connect: dict[str, Any] = {"tls_args": (tls, None)} if remote.tls and tls else {}
    roles: list[Any] | None = [build_role(PUSH_MODEL, scp_role=True)] if as_scp else None
    assoc = ae.associate(remote.host, remote.port, ae_title=remote.ae_title, ext_neg=roles,
                         evt_handlers=handlers, **connect)  # fmt: skip
    return assoc if assoc.is_established else None


def report_to(remote: Remote, our_ae: str, verdict: Verdict,
              tls: ssl.SSLContext | None) -> int | None:  # fmt: skip
    """Send the N-EVENT-REPORT on a new association to `remote`, us in the SCP role."""
    assoc = associate(our_ae, remote, tls, as_scp=True)
    if assoc is None:
        return None
    if not any(cx.as_scp for cx in assoc.accepted_contexts):  # sent all the same: most take it
        log.warning("storage commitment: %s did not accept us as SCP of the Push Model "
                    "(PS3.7 D.3.3.4); reporting anyway", remote.ae_title)  # fmt: skip
    try:
        return report_on(assoc, verdict)
    finally:
        assoc.release()


def deliver(send: Callable[[], int | None], transaction: str, calling: str,
            attempts: int = REPORT_ATTEMPTS) -> bool:  # fmt: skip
    """Call `send` until the peer answers N-EVENT-REPORT-RSP with success, with backoff."""
    for attempt in range(attempts):
        try:
            status = send()
        except Exception as exc:  # noqa: BLE001 -- a bug or an odd peer must not end the worker
            log.warning("storage commitment %s: reporting to %s failed: %s",
                        transaction, calling, exc)  # fmt: skip
            status = None
        if status == SUCCESS:
            return True
        if status is not None:
            log.warning("storage commitment %s: %s answered the report with 0x%04X",
                        transaction, calling, status)  # fmt: skip
        if attempt + 1 < attempts:
            time.sleep(REPORT_RETRY_BASE_S * 2**attempt)
    log.error("storage commitment %s: the report to %s was not delivered after %d attempts",
              transaction, calling, attempts)  # fmt: skip
    return False


def handle_n_action(event: Any, archive: Archive, access: Access, remotes: dict[str, Remote],
                    our_ae: str, tls: ssl.SSLContext | None) -> tuple[int, None]:  # fmt: skip
    """EVT_N_ACTION: accept a Storage Commitment request; the report follows in a thread."""
    rq = event.request
    calling = str(event.assoc.requestor.ae_title).strip()
    if str(rq.RequestedSOPClassUID) != PUSH_MODEL:
        return NO_SUCH_SOP_CLASS, None
    if str(rq.RequestedSOPInstanceUID) != WELL_KNOWN_INSTANCE:
        return NO_SUCH_SOP_INSTANCE, None
    if event.action_type != REQUEST_COMMITMENT:
        return NO_SUCH_ACTION, None
    if not access.may(calling, "store"):
        log.warning("storage commitment from %s refused: it may not store", calling)
        return NOT_AUTHORISED, None
    if archive.config.durability != "fsync":
        log.warning("storage commitment from %s refused: durability is %r, nothing is fsynced",
                    calling, archive.config.durability)  # fmt: skip
        return PROCESSING_FAILURE, None
    try:
        found = requested(event.action_information)
    except Exception as exc:  # noqa: BLE001 -- an undecodable Action Information
        log.warning("storage commitment from %s: Action Information unreadable: %s", calling, exc)
        return INVALID_ARGUMENT, None
    if found is None:
        log.warning("storage commitment from %s: no Transaction UID or Referenced SOP Sequence "
                    "(or an item without its UIDs)", calling)  # fmt: skip
        return INVALID_ARGUMENT, None
    transaction, pairs = found
    remote = remotes.get(calling)
    if remote is not None and (remote.host is None or remote.port is None):
        remote = None
    assoc = event.assoc

    def work() -> None:
        try:
            report()
        except Exception:  # a bug must be seen, and must not pass silently with the thread
            log.exception("storage commitment %s from %s: no report sent", transaction, calling)

    def report() -> None:
        verdict = judge(archive, transaction, pairs, our_ae)
        log.info("storage commitment %s from %s: %d committed, %d failed; reporting %s",
                 transaction, calling, verdict.committed, verdict.failed,
                 f"to {remote.host}:{remote.port}" if remote else "on its association")  # fmt: skip
        if remote is not None:
            deliver(lambda: report_to(remote, our_ae, verdict, tls), transaction, calling)
        else:  # the request's association is the only way back: it is gone once released
            deliver(lambda: report_on(assoc, verdict) if assoc.is_established else None,
                    transaction, calling, attempts=1)  # fmt: skip

    # after the N-ACTION-RSP: pynetdicom sends it when this handler returns, and the
    # report on the same association waits for the association's reactor to pause
    threading.Thread(target=work, name=f"commitment-{transaction[-12:]}", daemon=True).start()
    return SUCCESS, None


def parse_report(event_type: int, info: Dataset | None) -> tuple[str, Report] | None:
    """The Transaction UID and verdict of an N-EVENT-REPORT's Event Information; None if it
    is not a Storage Commitment result (PS3.4 J.3.3.1.1)."""
    if event_type not in (ALL_COMMITTED, FAILURES_EXIST) or info is None:
        return None
    transaction = str(info.get("TransactionUID", "") or "").strip()
    if not transaction:
        return None
    committed = [str(i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", [])
                 if "ReferencedSOPInstanceUID" in i]  # fmt: skip
    failed = {}
    for item in info.get("FailedSOPSequence", []):
        if "ReferencedSOPInstanceUID" in item:
            reason = item.get("FailureReason", REASON_PROCESSING_FAILURE)
            failed[str(item.ReferencedSOPInstanceUID)] = int(reason)
    return transaction, Report(committed, failed)


def keep_report(archive: Archive, event: Any) -> int:
    """An N-EVENT-REPORT-RQ a destination sent us: keep its verdict for the forwarder; the
    N-EVENT-REPORT-RSP status."""
    calling = (
        str(event.assoc.requestor.ae_title).strip()
        if event.assoc.is_acceptor
        else str(event.assoc.acceptor.ae_title).strip()
    )
    if str(event.request.AffectedSOPClassUID) != PUSH_MODEL:
        return NO_SUCH_SOP_CLASS
    if event.event_type not in (ALL_COMMITTED, FAILURES_EXIST):
        return NO_SUCH_EVENT_TYPE
    try:
        parsed = parse_report(event.event_type, event.event_information)
    except Exception as exc:  # noqa: BLE001 -- an undecodable Event Information
        log.warning("storage commitment report from %s unreadable: %s", calling, exc)
        return INVALID_ARGUMENT
    if parsed is None:
        log.warning("storage commitment report from %s: no Transaction UID", calling)
        return INVALID_ARGUMENT
    transaction, report = parsed
    env = archive.env
    if env.write(lambda txn: record_report(txn, env.db, transaction, report)):
        log.info("storage commitment %s: %s committed %d, failed %d", transaction, calling,
                 len(report.committed), len(report.failed))  # fmt: skip
    else:  # answered all the same: a refusal would only make it send again
        log.warning("storage commitment report from %s for %s: no such request of ours",
                    calling, transaction)  # fmt: skip
    return SUCCESS


def handle_n_event_report(event: Any, archive: Archive) -> tuple[int, None]:
    """EVT_N_EVENT_REPORT: a destination's Storage Commitment result (PS3.4 J.3.3)."""
    return keep_report(archive, event), None
