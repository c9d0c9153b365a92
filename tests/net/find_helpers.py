"""pynetdicom C-FIND helpers shared by the network tests."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from tests.net._support import NODELAY

MODELS = {"P": PatientRootQueryRetrieveInformationModelFind,
          "S": StudyRootQueryRetrieveInformationModelFind}  # fmt: skip


def identifier(level: str, keys: dict[str, Any]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def c_find(port: int, level: str, keys: dict[str, Any], model: str = "S",
           ae_title: str = "PYNETDICOM") -> tuple[list[Dataset], int]:  # fmt: skip
    """(matches, final status) of one C-FIND."""
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(MODELS[model])
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS", evt_handlers=NODELAY)
    assert assoc.is_established
    matches: list[Dataset] = []
    final = -1
    try:
        for status, ds in assoc.send_c_find(identifier(level, keys), MODELS[model]):
            if status.Status == 0xFF00 or status.Status == 0xFF01:
                matches.append(ds)
            else:
                final = int(status.Status)
    finally:
        assoc.release()
    return matches, final


def image_uids(port: int, keys: dict[str, Any]) -> dict[str, Dataset]:
    """IMAGE-level matches by SOP Instance UID."""
    matches, final = c_find(port, "IMAGE", {"SOPInstanceUID": "", **keys})
    assert final == 0
    return {str(ds.SOPInstanceUID): ds for ds in matches}
