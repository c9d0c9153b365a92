"""The Application Entity of a worker: presentation contexts, limits and handlers.

What we accept (PS3.7 Annex D.3.3.2, PS3.8 9.3.2.2):

- Verification, with the uncompressed transfer syntaxes;
- every Storage SOP Class of the standard, retired ones included, and any
  abstract syntax the standard does not name (private SOP classes) unless
  ``[dicom] accept_unknown_sop_classes = false``, with every transfer
  syntax pynetdicom knows, stored as received; of several offered in one
  context, a lossless compression first, then Explicit VR, then Implicit
  (:mod:`engine.net.contexts`); the SCP/SCU role selection of a C-GET
  requestor (PS3.7 D.3.3.4) is accepted on the same contexts;
- Find, Get and Move of the Patient Root and Study Root Query/Retrieve
  information models (PS3.4 C.6.1, C.6.2);
- Storage Commitment Push Model as SCP (PS3.4 Annex J, :mod:`engine.net.commitment`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pynetdicom import AE, _config, evt
from pynetdicom._globals import DEFAULT_TRANSFER_SYNTAXES
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from engine.net.commitment import PUSH_MODEL, handle_n_action, handle_n_event_report
from engine.net.contexts import ACCEPTED_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES
from engine.net.find import PATIENT_ROOT_LEVELS, STUDY_ROOT_LEVELS, handle_find
from engine.net.retrieve import handle_get, handle_move
from engine.net.settings import ServerSettings
from engine.net.store import handle_echo, handle_store
from engine.net.tls import client_context
from engine.net.transport import access_of

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
    # both roles: a destination reporting on a new association proposes the SCP role
    ae.add_supported_context(PUSH_MODEL, DEFAULT_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    return ae


def _by_model(kind: str) -> dict[str, tuple[str, ...]]:
    return {str(uid): levels for uid, levels in _MODELS[kind]}


def _levels(event: Any, kind: str) -> tuple[str, ...]:
    return _by_model(kind).get(str(event.context.abstract_syntax), PATIENT_ROOT_LEVELS)


def handlers(archive: Archive, settings: ServerSettings) -> list[tuple[Any, ...]]:
    """The pynetdicom event handlers of a worker, bound to its archive and settings."""
    access, remotes = settings.access, dict(settings.remotes)
    tls = client_context(settings.tls) if any(r.tls for r in remotes.values()) else None

    def on_store(event: Any) -> Any:
        return handle_store(event, archive, access_of(event.assoc, access))

    def on_find(event: Any) -> Any:
        return handle_find(event, archive, access_of(event.assoc, access),
                           _levels(event, "find"), settings.ae_title)  # fmt: skip

    def on_get(event: Any) -> Any:
        return handle_get(event, archive, access_of(event.assoc, access), _levels(event, "get"))

    def on_move(event: Any) -> Any:
        return handle_move(event, archive, access_of(event.assoc, access),
                           _levels(event, "move"), remotes, tls)  # fmt: skip

    def on_n_action(event: Any) -> Any:
        return handle_n_action(event, archive, access_of(event.assoc, access), remotes,
                               settings.ae_title, tls)  # fmt: skip

    def on_n_event_report(event: Any) -> Any:
        return handle_n_event_report(event, archive)

    return [
        (evt.EVT_N_ACTION, on_n_action),
        (evt.EVT_N_EVENT_REPORT, on_n_event_report),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, on_store),
        (evt.EVT_C_FIND, on_find),
        (evt.EVT_C_GET, on_get),
        (evt.EVT_C_MOVE, on_move),
    ]
