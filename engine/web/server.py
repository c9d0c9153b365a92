"""Serve the DICOMweb app with uvicorn in a thread of a ``pacs serve`` worker process.

Each worker already owns an :class:`~engine.archive.Archive`; the HTTP
server runs beside the DICOM acceptor, over that same archive, on its own
event loop in a daemon thread. Every worker binds the HTTP port with
SO_REUSEPORT, as it does the DICOM port, so the kernel spreads connections
over the workers.

Wiring into ``engine.net.server.run_worker`` (after the archive is opened,
``settings.http_port`` being the ``--http-port`` flag, 0 to turn HTTP off)::

    port = settings.http_port
    http = run_http(archive, settings.host, port, stop) if port else None
    ...  # the existing `while not stop.wait(1.0)` loop and drain
    if http is not None:
        http.join(SHUTDOWN_GRACE_S)
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

from engine.archive import Archive
from engine.net.tls import TlsSettings, server_context
from engine.web.settings import WebSettings

log = logging.getLogger("engine.web")
START_TIMEOUT_S = 30.0
SHUTDOWN_GRACE_S = 30.0  # open HTTP requests get this long to finish once stop is set
HTTP_MAX_CONNECTIONS = 1000  # per worker; uvicorn answers 503 past it


class HttpServer:
    """A uvicorn server in a thread; :attr:`port` is the port it listens on."""

    def __init__(self, server: Any, thread: threading.Thread, sock: socket.socket) -> None:
        self.server, self.thread, self.socket = server, thread, sock
        self.port: int = sock.getsockname()[1]

    def stop(self) -> None:
        """Stop accepting, let open requests finish (at most SHUTDOWN_GRACE_S), return."""
        self.server.should_exit = True
        self.thread.join(SHUTDOWN_GRACE_S)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the server thread to end (it ends once the stop event is set)."""
        self.thread.join(timeout)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when
    # sock.proto says TCP; without it every response waits ~40 ms for a delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):  # every worker binds the same port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Linux hands TCP_NODELAY on to accepted connections, and uvicorn does not set it on
        # a socket it is given: without it a response written in two pieces (head, body)
        # waits for the client's delayed ACK, ~40 ms a request.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def run_http(
    archive: Archive,
    host: str,
    port: int,
    stop_event: threading.Event,
    settings: WebSettings | None = None,
    tls: TlsSettings | None = None,
) -> HttpServer:
    """Start serving DICOMweb on `host`:`port` in a daemon thread; return once it listens.

    Parameters
    ----------
    archive
        The worker's archive.
    host, port
        Where to listen (port 0: any free port, see :attr:`HttpServer.port`).
    stop_event
        When set, the server stops accepting and finishes open requests.
    settings
        Web settings; default: ``[web]`` of ``archive.config.extra``.
    tls
        Serve HTTPS with this certificate (the DICOM port's: BCP 195, see
        :mod:`engine.net.tls`); None: plain HTTP.

    Raises
    ------
    OSError
        If the port cannot be bound.
    RuntimeError
        If uvicorn does not start within START_TIMEOUT_S.
    """
    import uvicorn

    from engine.credentials import auth_settings
    from engine.web.app import create_app

    app = create_app(archive, settings, auth_settings(archive.config.extra.get("auth"), host))
    sock = _listen(host, port)
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                            timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S),
                            limit_concurrency=HTTP_MAX_CONNECTIONS)  # fmt: skip
    config.load()
    if tls is not None:  # our own context, not uvicorn's: TLS 1.2+, BCP 195 ciphers
        config.ssl = server_context(tls)
    server = uvicorn.Server(config)

    def serve() -> None:
        asyncio.run(server.serve(sockets=[sock]))
        sock.close()

    def watch() -> None:
        stop_event.wait()
        server.should_exit = True

    thread = threading.Thread(target=serve, name="dicomweb", daemon=True)
    thread.start()
    threading.Thread(target=watch, name="dicomweb-stop", daemon=True).start()
    waited = 0.0
    while not server.started and thread.is_alive() and waited < START_TIMEOUT_S:
        stop_event.wait(0.01)
        waited += 0.01
    if not server.started:
        server.should_exit = True
        raise RuntimeError(f"the DICOMweb server did not start on {host}:{port}")
    handle = HttpServer(server, thread, sock)
    log.info("DICOMweb on %s://%s:%d%s", "https" if tls else "http", host, handle.port,
             (settings or WebSettings()).base_path)  # fmt: skip
    return handle
