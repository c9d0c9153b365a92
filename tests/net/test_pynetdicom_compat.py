"""The pynetdicom internals we lean on exist, and behave, on the installed pynetdicom.

Each accessor of :mod:`engine.net.pynetdicom_compat` is used here on a real
association between two pynetdicom AEs over loopback; each method our
subclasses override is looked up with its parameters. A pynetdicom upgrade
that moves any of them fails here, naming it.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Iterator
from typing import Any

import pynetdicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from engine.net import pynetdicom_compat as C
from engine.net.transport import _BoundedDUL, _DeadlineSocket
from tests.net._support import free_port


def test_the_installed_pynetdicom_is_one_these_internals_match() -> None:
    assert pynetdicom.__version__.startswith(C.SUPPORTED_VERSIONS), pynetdicom.__version__


@pytest.mark.parametrize("cls, name", [(c, n) for c, names in C.OVERRIDDEN.items() for n in names])
def test_each_overridden_method_is_there_with_its_parameters(cls: type, name: str) -> None:
    method = getattr(cls, name, None)
    assert callable(method), f"pynetdicom's {cls.__name__}.{name} is gone"
    params = tuple(inspect.signature(method).parameters)
    assert params == C.OVERRIDDEN[cls][name], f"{cls.__name__}.{name}{params}"


@pytest.fixture
def peer() -> Iterator[tuple[AE, Any, int]]:
    """A pynetdicom storage SCP on loopback, started by hand as the worker starts its own."""
    ae = AE(ae_title="COMPAT")
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage)
    port = free_port()
    server = ae.make_server(("127.0.0.1", port), evt_handlers=[])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    C.register_server(ae, server)
    yield ae, server, port
    ae.shutdown()  # stops the registered server: serve_forever returns
    thread.join(10)
    assert not thread.is_alive(), "AE.shutdown() did not stop a registered server"


def test_accessors_on_a_real_association(peer: tuple[AE, Any, int]) -> None:
    _, _, port = peer
    requestor = AE(ae_title="REQUESTOR")
    requestor.add_requested_context(Verification)
    requestor.add_requested_context(CTImageStorage)
    assoc = requestor.associate("127.0.0.1", port, ae_title="COMPAT")
    assert assoc.is_established
    try:
        ids = {int(cx.context_id) for cx in assoc.accepted_contexts}
        assert ids and all(cid in C.accepted_context_ids(assoc) for cid in ids)
        assert 255 not in C.accepted_context_ids(assoc)
        assert C.socket_connected(assoc.dul.socket)
        delay = C.run_loop_delay(assoc.dul)
        assert 0 < delay < 1
        C.set_run_loop_delay(assoc.dul, delay / 2)
        assert C.run_loop_delay(assoc.dul) == delay / 2
        C.restart_idle_timer(assoc.dul)
        # pause the reactor as send_c_store does: it must block at its checkpoint
        C.pause_reactor(assoc)
        deadline = time.monotonic() + 10
        while not C.reactor_blocked(assoc):
            assert time.monotonic() < deadline, "the reactor never paused"
            time.sleep(0.005)
        assert C.reactor_paused(assoc)
        C.resume_reactor(assoc)
        assert assoc.send_c_echo().Status == 0  # the reactor runs again
    finally:
        assoc.release()
    assert not C.socket_connected(assoc.dul.socket)


def test_the_class_swaps_keep_pynetdicom_working(peer: tuple[AE, Any, int]) -> None:
    """Our DUL and socket subclasses, swapped onto an acceptor's, serve a C-ECHO."""
    _, server, port = peer
    swapped: list[Any] = []

    def on_open(event: Any) -> None:  # on the acceptor side, before any PDU is read
        if event.assoc.is_acceptor:
            dul = event.assoc.dul
            C.swap_class(dul.socket, _DeadlineSocket)
            dul.socket.deadline = None
            swapped.append(dul.socket)

    server.bind(evt.EVT_CONN_OPEN, on_open)
    requestor = AE(ae_title="REQUESTOR")
    requestor.add_requested_context(Verification)
    assoc = requestor.associate("127.0.0.1", port, ae_title="COMPAT")
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()
    assert swapped and isinstance(swapped[0], _DeadlineSocket)
    with pytest.raises(AssertionError):
        C.swap_class(object(), _BoundedDUL)  # only a DUL may become our DUL
