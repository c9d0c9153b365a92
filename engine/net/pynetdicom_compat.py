"""Every use of pynetdicom's private internals, in one place (pynetdicom 3.0.x).

pynetdicom keeps association negotiation and the associations the fast
path does not serve. Some of what we need from it has no public API: a
server started by hand registered with its AE, the accepted contexts'
IDs, pausing an association's reactor while we wait for our own C-STORE-RSP,
the DUL's polling delay, and the methods our subclasses override (the
limits and deadlines of :mod:`engine.net.transport`). They are all
reached through this module, and ``tests/net/test_pynetdicom_compat.py``
checks each on the installed pynetdicom: an upgrade that renames or
reshapes one fails there, by name, before anything subtler breaks.
``pyproject.toml`` pins pynetdicom to 3.0.x for the same reason.
"""

from __future__ import annotations

import threading
from collections.abc import Container
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket, RequestHandler

SUPPORTED_VERSIONS = ("3.0.",)  # pynetdicom.__version__ prefixes these internals match

# Private methods our subclasses override, with the parameters they are called with
# (engine.net.transport): a change of name or signature must fail a test, not an association.
OVERRIDDEN: dict[type, dict[str, tuple[str, ...]]] = {
    DULServiceProvider: {
        "_read_pdu_data": ("self",),
        "_decode_pdu": ("self", "bytestream"),
        "_send": ("self", "pdu"),
        "idle_timer_expired": ("self",),
        "receive_pdu": ("self", "wait", "timeout"),
    },
    ACSE: {"_negotiate_as_acceptor": ("self",), "_check_user_identity": ("self",)},
    RequestHandler: {"_create_association": ("self",)},
    AssociationSocket: {"recv": ("self", "nr_bytes")},
}


def swap_class(obj: Any, cls: type) -> None:
    """Make `obj` (a DUL, an ACSE socket pynetdicom built) an instance of our subclass `cls`.

    pynetdicom builds them inside its request handler with no factory to
    override; the subclass adds no state that needs a constructor.
    """
    assert isinstance(obj, cls.__mro__[1]), f"{type(obj).__name__} is not a {cls.__mro__[1]}"
    obj.__class__ = cls


def register_server(ae: Any, server: Any) -> None:
    """Let ``ae.shutdown()`` stop `server`, as ``AE.start_server`` does for its own."""
    ae._servers.append(server)


def accepted_context_ids(assoc: Association) -> Container[int]:
    """The IDs of the presentation contexts `assoc` accepted (PS3.8 9.3.3.2)."""
    ids: Container[int] = assoc._accepted_cx
    return ids


def socket_connected(sock: AssociationSocket) -> bool:
    """Whether pynetdicom still takes `sock` for connected."""
    return bool(sock._is_connected)


def restart_idle_timer(dul: DULServiceProvider) -> None:
    """Count the network timeout from now."""
    dul._idle_timer.restart()


def pause_reactor(assoc: Association) -> None:
    """Stop `assoc`'s reactor taking DIMSE messages: ours to read (as send_c_store does)."""
    assoc._reactor_checkpoint.clear()


def resume_reactor(assoc: Association) -> None:
    assoc._reactor_checkpoint.set()


def reactor_paused(assoc: Association) -> bool:
    """Whether `assoc`'s reactor has seen the pause (it may not be waiting yet)."""
    return bool(assoc._is_paused)


def reactor_blocked(assoc: Association) -> bool:
    """Whether `assoc`'s reactor thread is waiting at its checkpoint, not just about to.

    The paused flag alone is still set for a moment after the checkpoint
    opened; a reactor in that moment would take a fast C-STORE-RSP off the
    queue (it logs "unexpected C-STORE service message"). The waiters of
    the checkpoint's condition tell the two apart.
    """
    waiters = _waiters(assoc._reactor_checkpoint)
    return reactor_paused(assoc) and (waiters is None or len(waiters) > 0)


def _waiters(event: threading.Event) -> Any:
    return getattr(getattr(event, "_cond", None), "_waiters", None)


def no_response(assoc: Association) -> None:
    """What pynetdicom does when a DIMSE response never came: abort the association."""
    assoc._handle_no_response()


def received_status(assoc: Association, rsp: Any) -> Dataset:
    """The status Dataset of a C-STORE-RSP, checked and logged as pynetdicom does."""
    status: Dataset = assoc._check_received_status(rsp)
    return status


def run_loop_delay(dul: DULServiceProvider) -> float:
    """How long `dul`'s thread sleeps between two polls of its socket and queues."""
    return float(dul._run_loop_delay)


def set_run_loop_delay(dul: DULServiceProvider, seconds: float) -> None:
    dul._run_loop_delay = seconds
