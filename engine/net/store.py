"""Verification and Storage SCP handlers: C-ECHO, and C-STORE straight into the archive.

A C-STORE data set is stored as received (PS3.4 B.2.2, level 2 storage:
every element kept): the encoded bytes pynetdicom collected from the P-DATA
fragments go to :meth:`engine.archive.Archive.store` with the transfer
syntax of the presentation context, and are never decoded into a pydicom
Dataset. The response leaves only once ``store`` has returned, that is once
the record is fsynced and indexed (PS3.4 B.2.3: success means the SCP has
taken responsibility for the instance). Each store, and each refused one,
writes one audit record (DICOM Instances Transferred) before the response;
if the audit trail cannot be written the response is a failure (A700).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from engine import audit
from engine.errors import AuditError
from engine.net.settings import Access
from engine.net.status import REFUSED_NOT_AUTHORISED, SUCCESS, failure, status_dataset

if TYPE_CHECKING:
    from engine.archive import Archive

log = logging.getLogger("engine.net")


def audit_store(calling: str, address: str, sop_uid: str, study: str | None,
                outcome: int = audit.SUCCESS, why: str = "") -> None:  # fmt: skip
    """One audit record for one C-STORE (fast path or pynetdicom); raises AuditError."""
    audit.emit(audit.Event.INSTANCES_TRANSFERRED, outcome, user=calling, address=address,
               study=study, description=why, sop_instance_uid=sop_uid)  # fmt: skip


def audit_refusal(event: audit.Event, calling: str, address: str, why: str) -> None:
    """Audit a refused request; the refusal stands whether or not the record is written."""
    audit.emit_refusal(event, user=calling, address=address, description=why)


def handle_echo(event: Any) -> int:
    """EVT_C_ECHO: PS3.7 9.1.5, the Verification service always succeeds."""
    return SUCCESS


def handle_store(event: Any, archive: Archive, access: Access) -> int | Dataset:
    """EVT_C_STORE: store the data set as received; answer once it is durable.

    Parameters
    ----------
    event : pynetdicom.events.Event
        The C-STORE request; ``event.request.DataSet`` holds the encoded bytes.
    archive
        This worker's archive.
    access
        Whether the calling AE may store.

    Returns
    -------
    int or pydicom.dataset.Dataset
        0x0000, or a failure status with an Error Comment (engine.net.status).
    """
    calling = str(event.assoc.requestor.ae_title).strip()
    address = str(event.assoc.requestor.address)
    uid = str(event.request.AffectedSOPInstanceUID)
    if not access.may(calling, "store"):
        log.warning("C-STORE from %s refused: not allowed to store", calling)
        audit_refusal(audit.Event.INSTANCES_TRANSFERRED, calling, address, "may not store")
        return status_dataset(REFUSED_NOT_AUTHORISED, f"{calling} may not store here")
    stream = event.request.DataSet
    try:
        data = stream.getbuffer()  # a view of pynetdicom's buffer: no copy of the pixels
        result = archive.store(data, transfer_syntax=str(event.context.transfer_syntax),
                               source_ae=calling)  # fmt: skip
        audit_store(calling, address, uid, result.study_instance_uid)
    except Exception as exc:  # noqa: BLE001 -- every failure must become a status (status.py)
        if not isinstance(exc, AuditError):
            with contextlib.suppress(AuditError):  # logged by the trail
                audit_store(calling, address, uid, None, audit.SERIOUS_FAILURE, str(exc))
        return failure(exc, f"C-STORE from {calling} of {uid}")
    return SUCCESS
