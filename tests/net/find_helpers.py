"""pynetdicom C-FIND helpers shared by the network tests."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from engine.part10 import IMPLEMENTATION_VERSION_NAME
from tests.net._support import NODELAY

MODELS = {"P": PatientRootQueryRetrieveInformationModelFind,
          "S": StudyRootQueryRetrieveInformationModelFind}  # fmt: skip
# The worker serves a Find-only association itself; one that could also C-GET goes to
# pynetdicom. Tests of C-FIND run on both: "fast" and "pynetdicom".
PATHS = ("fast", "pynetdicom")


def find_association(port: int, via: str, *contexts: str, ae_title: str = "PYNETDICOM",
                     syntaxes: list[str] | None = None) -> Any:  # fmt: skip
    """An association for C-FIND served by `via` (one of :data:`PATHS`), checked to be.

    `contexts` are abstract syntaxes (both Find models if none), proposed
    with `syntaxes` (pynetdicom's default transfer syntaxes if None).
    """
    ae = AE(ae_title=ae_title)
    for cx in contexts or tuple(MODELS.values()):
        ae.add_requested_context(cx, *([syntaxes] if syntaxes else []))
    if via == "pynetdicom":  # a class the fast path does not serve sends it to pynetdicom
        ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS", evt_handlers=NODELAY)
    assert assoc.is_established
    fast = assoc.acceptor.implementation_version_name == IMPLEMENTATION_VERSION_NAME
    assert fast == (via == "fast"), assoc.acceptor.implementation_version_name
    return assoc


def identifier(level: str, keys: dict[str, Any]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def c_find(port: int, level: str, keys: dict[str, Any], model: str = "S",
           ae_title: str = "PYNETDICOM",
           via: str = "fast") -> tuple[list[Dataset], int]:  # fmt: skip
    """(matches, final status) of one C-FIND on its own association."""
    assoc = find_association(port, via, MODELS[model], ae_title=ae_title)
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
