"""Verification and Storage SCP handlers: C-ECHO, and C-STORE straight into the archive.

A C-STORE data set is stored as received (PS3.4 B.2.2, level 2 storage:
every element kept): the encoded bytes pynetdicom collected from the P-DATA
fragments go to :meth:`engine.archive.Archive.store` with the transfer
syntax of the presentation context, and are never decoded into a pydicom
Dataset. The response leaves only once ``store`` has returned, that is once
the record is fsynced and indexed (PS3.4 B.2.3: success means the SCP has
taken responsibility for the instance).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from engine.net.settings import Access
from engine.net.status import REFUSED_NOT_AUTHORISED, SUCCESS, failure, status_dataset

if TYPE_CHECKING:
    from engine.archive import Archive

log = logging.getLogger("engine.net")


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
    if not access.may(calling, "store"):
        log.warning("C-STORE from %s refused: not allowed to store", calling)
        return status_dataset(REFUSED_NOT_AUTHORISED, f"{calling} may not store here")
    stream = event.request.DataSet
    try:
        data = stream.getbuffer()  # a view of pynetdicom's buffer: no copy of the pixels
        archive.store(data, transfer_syntax=str(event.context.transfer_syntax), source_ae=calling)
    except Exception as exc:  # noqa: BLE001 -- every failure must become a status (status.py)
        uid = event.request.AffectedSOPInstanceUID
        return failure(exc, f"C-STORE from {calling} of {uid}")
    return SUCCESS
