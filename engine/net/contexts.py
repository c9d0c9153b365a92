"""The presentation contexts a worker accepts: which SOP classes, which transfer syntaxes.

Every Storage SOP Class of the standard, retired ones included
(:data:`STORAGE_SOP_CLASSES`), and any abstract syntax the standard does not
name, taken as storage (:func:`unknown_storage_contexts`), each with every
transfer syntax pynetdicom knows in our order of preference
(:data:`ACCEPTED_TRANSFER_SYNTAXES`).
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom._uid_dict import UID_dictionary
from pydicom.uid import (
    RE_VALID_UID,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
)
from pynetdicom import build_context, register_uid
from pynetdicom import sop_class as sop_class_module
from pynetdicom._globals import ALL_TRANSFER_SYNTAXES
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.service_class import StorageServiceClass


def _storage_sop_classes() -> tuple[str, ...]:
    """pynetdicom's storage SOP classes and every other one pydicom's UID dictionary names,
    retired ones too: old modalities still send them (retired Ultrasound Image Storage,
    1.2.840.10008.5.1.4.1.1.6, from US carts), and an archive must keep what it is sent.

    The extra ones are registered with pynetdicom's Storage Service Class: without that its
    acceptor has no handler for their C-STORE-RQ and aborts the association.
    """
    ours = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    for uid, (name, kind, _info, _retired, keyword) in UID_dictionary.items():
        storage = kind == "SOP Class" and "Storage" in name and "Commitment" not in name
        # a DICOMDIR (Media Storage Directory) indexes a file set: it is no object to store
        if storage and uid not in ours and uid != MediaStorageDirectoryStorage:
            if not hasattr(sop_class_module, keyword):
                register_uid(uid, keyword, StorageServiceClass)
            ours.append(uid)
    return tuple(ours)


def acceptor_order(syntaxes: list[str]) -> list[str]:
    """Our preference among the transfer syntaxes a peer proposes in one context.

    pynetdicom's acceptor takes the first of *its own* list that the peer proposed,
    and its list starts with Implicit VR: a modality offering JPEG-LS and Explicit
    VR sent Implicit, decompressed, private VRs lost. We store what arrives, so:
    a lossless compression first (smaller, nothing lost), then Explicit VR Little
    Endian, then Implicit, then the rest (lossy ones last among what is offered
    with them: a sender offering lossy beside uncompressed may hold the original).
    """

    def rank(uid: str) -> int:
        name = UID(uid).name
        if "Lossless" in name and "Lossy" not in name:
            return 0
        return {str(ExplicitVRLittleEndian): 1, str(ImplicitVRLittleEndian): 2}.get(uid, 3)

    return sorted(syntaxes, key=rank)  # stable: pynetdicom's order within a rank


ACCEPTED_TRANSFER_SYNTAXES = acceptor_order(list(ALL_TRANSFER_SYNTAXES))
STORAGE_SOP_CLASSES = _storage_sop_classes()


def is_unknown_sop_class(uid: str) -> bool:
    """Whether `uid` is a well-formed UID the standard does not name (private, or newer).

    Such an abstract syntax can only be an object to store: services need a
    SOP class we implement. A standard SOP class we do not serve (Modality
    Worklist, Storage Commitment...) is not unknown: it stays refused.
    """
    return RE_VALID_UID.match(uid) is not None and uid not in UID_dictionary


def unknown_storage_contexts(abstract_syntaxes: Iterable[str]) -> list[PresentationContext]:
    """Contexts accepting the unknown ones of `abstract_syntaxes` as storage, either role.

    Each gets pynetdicom's Storage Service Class too: without it pynetdicom's
    acceptor has no handler for their C-STORE-RQ and aborts the association.
    """
    contexts = []
    for uid in sorted({u for u in abstract_syntaxes if is_unknown_sop_class(u)}):
        keyword = "Unknown_" + uid.replace(".", "_")
        if not hasattr(sop_class_module, keyword):
            register_uid(uid, keyword, StorageServiceClass)
        cx = build_context(uid, ACCEPTED_TRANSFER_SYNTAXES)
        cx.scu_role = cx.scp_role = True
        contexts.append(cx)
    return contexts
