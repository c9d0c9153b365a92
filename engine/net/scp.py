"""The Application Entity of a worker: presentation contexts, limits and handlers.

What we accept (PS3.7 Annex D.3.3.2, PS3.8 9.3.2.2):

- Verification, with the uncompressed transfer syntaxes;
- every Storage SOP Class of the standard, retired ones included
  (:data:`STORAGE_SOP_CLASSES`), with every transfer syntax pynetdicom
  knows (uncompressed, deflated, JPEG, JPEG-LS, JPEG 2000, RLE, MPEG,
  HEVC...), stored as received; of several offered in one context, a
  lossless compression first, then Explicit VR, then Implicit
  (:func:`acceptor_order`); the SCP/SCU role selection of a C-GET
  requestor (PS3.7 D.3.3.4) is accepted on the same contexts;
- Find, Get and Move of the Patient Root and Study Root Query/Retrieve
  information models (PS3.4 C.6.1, C.6.2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydicom._uid_dict import UID_dictionary
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
)
from pynetdicom import AE, _config, evt, register_uid
from pynetdicom import sop_class as sop_class_module
from pynetdicom._globals import ALL_TRANSFER_SYNTAXES, DEFAULT_TRANSFER_SYNTAXES
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from engine.net.find import PATIENT_ROOT_LEVELS, STUDY_ROOT_LEVELS, handle_find
from engine.net.retrieve import handle_get, handle_move
from engine.net.settings import ServerSettings
from engine.net.store import handle_echo, handle_store
from engine.net.tls import client_context

if TYPE_CHECKING:
    from engine.archive import Archive

# PS3.8 9.3.1: the maximum length of the P-DATA-TF PDUs the peer may send us.
# Large PDUs mean fewer reads and fewer PDV headers per instance (a 512x512 CT
# slice fits in one); 0 would be "unlimited", which some SCUs read as "tiny".
MAX_PDU_BYTES = 4 << 20
ACSE_TIMEOUT_S = 30.0
DIMSE_TIMEOUT_S = 60.0

_MODELS = {
    "find": ((PatientRootQueryRetrieveInformationModelFind, PATIENT_ROOT_LEVELS),
             (StudyRootQueryRetrieveInformationModelFind, STUDY_ROOT_LEVELS)),
    "get": ((PatientRootQueryRetrieveInformationModelGet, PATIENT_ROOT_LEVELS),
            (StudyRootQueryRetrieveInformationModelGet, STUDY_ROOT_LEVELS)),
    "move": ((PatientRootQueryRetrieveInformationModelMove, PATIENT_ROOT_LEVELS),
             (StudyRootQueryRetrieveInformationModelMove, STUDY_ROOT_LEVELS)),
}  # fmt: skip


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
# Find SOP Class UID -> its levels; the fast path answers C-FIND on these too
FIND_MODELS = {str(uid): levels for uid, levels in _MODELS["find"]}
GET_MODELS = {str(uid): levels for uid, levels in _MODELS["get"]}
MOVE_MODELS = {str(uid): levels for uid, levels in _MODELS["move"]}


def quiet_pynetdicom() -> None:
    """Switch off pynetdicom's per-message logging: it formats every PDU and identifier."""
    _config.LOG_HANDLER_LEVEL = "none"
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


def build_ae(settings: ServerSettings) -> AE:
    """The AE of one worker: our AE title, limits, timeouts and supported contexts.

    Parameters
    ----------
    settings
        AE title, the maximum number of concurrent associations, the network timeout.

    Returns
    -------
    pynetdicom.AE
        Ready for ``make_server``; no handler is bound yet (see :func:`handlers`).
    """
    quiet_pynetdicom()
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = MAX_PDU_BYTES
    # pynetdicom rejects association N+1 with A-ASSOCIATE-RJ, rejected-transient,
    # source service-provider (presentation), reason 2 "local limit exceeded" (PS3.8 9.3.4)
    ae.maximum_associations = settings.max_associations
    ae.acse_timeout = ACSE_TIMEOUT_S
    ae.dimse_timeout = DIMSE_TIMEOUT_S
    ae.network_timeout = settings.network_timeout_s  # an idle association is aborted after this
    ae.add_supported_context(Verification, DEFAULT_TRANSFER_SYNTAXES)
    for sop_class in STORAGE_SOP_CLASSES:
        # scu_role/scp_role True: accept whatever role a C-GET requestor proposes
        ae.add_supported_context(sop_class, ACCEPTED_TRANSFER_SYNTAXES,
                                 scu_role=True, scp_role=True)  # fmt: skip
    for models in _MODELS.values():
        for sop_class, _ in models:
            ae.add_supported_context(sop_class, DEFAULT_TRANSFER_SYNTAXES)
    return ae


def _by_model(kind: str) -> dict[str, tuple[str, ...]]:
    return {str(uid): levels for uid, levels in _MODELS[kind]}


def _levels(event: Any, kind: str) -> tuple[str, ...]:
    return _by_model(kind).get(str(event.context.abstract_syntax), PATIENT_ROOT_LEVELS)


def handlers(archive: Archive, settings: ServerSettings) -> list[tuple[Any, ...]]:
    """The pynetdicom event handlers of a worker, bound to its archive and settings."""
    access, remotes = settings.access, dict(settings.remotes)
    tls = client_context(settings.tls) if any(r.tls for r in remotes.values()) else None

    def on_find(event: Any) -> Any:
        return handle_find(event, archive, access, _levels(event, "find"), settings.ae_title)

    def on_get(event: Any) -> Any:
        return handle_get(event, archive, access, _levels(event, "get"))

    def on_move(event: Any) -> Any:
        return handle_move(event, archive, access, _levels(event, "move"), remotes, tls)

    return [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [archive, access]),
        (evt.EVT_C_FIND, on_find),
        (evt.EVT_C_GET, on_get),
        (evt.EVT_C_MOVE, on_move),
    ]
