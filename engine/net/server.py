"""``pacs serve``: a supervisor and N worker processes sharing one DICOM port.

The supervisor serves nothing. It opens the archive once, alone, so that
recovery sees every segment, closes it, checks once that the
port is free, starts the workers (multiprocessing "spawn": a fresh
interpreter, so no LMDB environment, lock or thread crosses a fork), waits
until each listens, and restarts a worker that dies. Each worker opens its
own :class:`~engine.archive.Archive` (its own active segment; LMDB opened in
the process that uses it, as lmdb.h requires), binds the port with
SO_REUSEPORT, and runs a pynetdicom AE.

Stopping (SIGTERM or SIGINT to the supervisor, which passes SIGTERM on):
each worker closes its listening socket, lets its open associations finish
(at most ``SHUTDOWN_GRACE_S``), closes the archive, and exits 0. Everything
acknowledged was durable before its response left, so a worker killed
outright (SIGKILL) loses nothing it acknowledged either; the supervisor
restarts it and the new worker's archive recovers the segment tail.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from dataclasses import replace
from multiprocessing.connection import wait as wait_for
from pathlib import Path
from typing import Any

from engine.audit import AuditSettings
from engine.config import Config, is_loopback
from engine.errors import ReplicaRoleError
from engine.forward.process import FORWARDER
from engine.net.settings import ServerSettings
from engine.replica.process import PROMOTED_EXIT, REPLICA

log = logging.getLogger("engine.net")

SHUTDOWN_GRACE_S = 30.0  # open associations get this long to finish on SIGTERM
# A store allocates a few hundred small objects and frees them all; with the collector's
# default threshold (700) gen-0 passes ran every few stores (about 4% of a worker's CPU)
GC_GEN0_THRESHOLD = 20_000
WORKER_START_TIMEOUT_S = 120.0
RESTART_BACKOFF_MAX_S = 10.0
RESTART_STABLE_S = 1.0  # one that ran this long restarts at once (a crash loop: at most 1/s)
SERVE_IDLE_RECOMPRESS_S = 60.0  # served archives recompress sealed segments when idle
LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


# -- the worker -------------------------------------------------------------------


def stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def run_worker(
    index: int, path: str, config: Config, settings: ServerSettings, ready: Any, level: int
) -> None:
    """Body of one worker process: open the archive, serve until SIGTERM, close.

    Parameters
    ----------
    index
        Worker number, for the log.
    path
        The archive folder.
    config
        The archive's config.
    settings
        AE title, address, limits and access rules.
    ready
        A multiprocessing queue; ``(index, pid)`` is put on it once listening.
    level
        The logging level.
    """
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    logging.getLogger("engine.net").setLevel(level)
    stop = stop_on_signals()

    from engine import audit
    from engine.archive import Archive
    from engine.credentials import auth_settings
    from engine.net.fastpath import FastPath
    from engine.net.identity import UserCheck
    from engine.net.pynetdicom_compat import register_server
    from engine.net.scp import build_ae, handlers
    from engine.net.tls import server_context
    from engine.net.transport import AssociationServer

    audit.configure(_audit_in(path, settings))
    archive = Archive(path, config)
    try:
        ae = build_ae(settings)
        # the anonymous rule of [auth] is DICOMweb's: DIMSE has its AE rules (hence loopback)
        users = UserCheck(auth_settings(config.extra.get("auth"), "127.0.0.1"),
                          settings.require_user_identity)  # fmt: skip
        fast = FastPath(archive, settings, ae, users)
        server = ae.make_server(
            (settings.host, settings.dicom_port),
            evt_handlers=handlers(archive, settings),
            server_class=AssociationServer,
            settings=settings,
            users=users,
            fast=fast,
            tls=server_context(settings.tls) if settings.tls else None,
        )
        register_server(ae, server)  # as AE.start_server does: shutdown() removes it
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                  name="acceptor", daemon=True)  # fmt: skip
        thread.start()
        http = None
        if settings.http_port:
            from engine.web.server import run_http
            from engine.web.settings import WebSettings

            web = WebSettings.from_mapping(config.extra.get("web", {}))
            http = run_http(archive, settings.host, settings.http_port, stop, web, settings.tls)
        # what setup made lives as long as the worker: out of every collection's way
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
        ready.put((index, os.getpid()))
        while not stop.wait(1.0):
            pass
        log.info("worker %d stopping: no new associations", index)
        server.shutdown()  # stops accepting and closes the listening socket
        _drain([*server.active_associations, *fast.active])
        if http is not None:
            http.join(SHUTDOWN_GRACE_S)
        log.info("worker %d served %d associations on the fast path, %d through pynetdicom; "
                 "sent %d instances by C-GET/C-MOVE, %d of them converted",
                 index, fast.served, fast.handed_over, fast.sent, fast.converted)  # fmt: skip
    finally:
        archive.close()  # seals the active segment; everything acknowledged is durable already
    log.info("worker %d stopped", index)


def _audit_in(path: str, settings: ServerSettings) -> AuditSettings:
    """The audit settings with a relative file placed in the archive folder."""
    a = settings.audit
    return replace(a, file=os.path.join(path, a.file)) if a.file else a


def _drain(associations: list[Any]) -> None:
    """Let open associations finish; abort those still open after the grace period."""
    deadline = time.monotonic() + SHUTDOWN_GRACE_S
    for assoc in associations:
        assoc.join(max(0.0, deadline - time.monotonic()))
    for assoc in associations:
        if assoc.is_alive():
            log.warning("aborting an association still open after %.0f s", SHUTDOWN_GRACE_S)
            assoc.abort()
            assoc.join(5.0)


# -- the supervisor ---------------------------------------------------------------


def _unsafe(config: Config, s: ServerSettings) -> str | None:
    """Why these settings must not serve: anonymous DICOMweb off loopback, a bad [auth],
    or user identity required with no user or token key to check it against."""
    from engine.credentials import auth_settings

    try:
        auth = auth_settings(config.extra.get("auth"), s.host if s.http_port else "127.0.0.1")
    except ValueError as exc:
        return str(exc)
    if s.require_user_identity and not auth.users and auth.keys is None:
        return ("[dicom] require_user_identity needs [auth.users.*] or an [auth] jwt_key/jwks "
                "to check identities against")  # fmt: skip
    return None


class Supervisor:
    """Starts, watches, restarts and stops the worker processes.

    Parameters
    ----------
    path
        The archive folder.
    config
        The archive's config (``idle_recompress_s`` is turned on if it is off).
    settings
        What the workers serve and where.
    """

    def __init__(self, path: str | os.PathLike[str], config: Config, settings: ServerSettings):
        self.path = str(Path(path))
        if config.idle_recompress_s <= 0:
            config = config.updated(idle_recompress_s=SERVE_IDLE_RECOMPRESS_S)
        self.config = config
        self.settings = settings
        self._mp = multiprocessing.get_context("spawn")
        self._ready = self._mp.Queue()
        self._procs: dict[int, Any] = {}
        self._restarts: dict[int, int] = {}
        self._started: dict[int, float] = {}  # monotonic time each process was started
        self._stop = threading.Event()

    def _start(self, index: int) -> None:
        from engine.forward.process import run_forwarder
        from engine.replica.process import run_replica

        level = logging.getLogger("engine.net").getEffectiveLevel()
        special = {FORWARDER: (run_forwarder, "forwarder"), REPLICA: (run_replica, "replica")}
        target, name = special.get(index, (run_worker, f"worker-{index}"))
        p = self._mp.Process(
            target=target, name=name, daemon=False,
            args=(index, self.path, self.config, self.settings, self._ready, level),
        )  # fmt: skip
        p.start()
        self._procs[index] = p
        self._started[index] = time.monotonic()

    def _wait_ready(self, indexes: set[int]) -> bool:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        waiting = set(indexes)
        while waiting and time.monotonic() < deadline and not self._stop.is_set():
            try:
                index, _pid = self._ready.get(timeout=0.5)
            except queue.Empty:
                dead = [i for i in waiting if not self._procs[i].is_alive()]
                if dead:
                    p = self._procs[dead[0]]
                    log.error("%s exited with %s before it was ready", p.name, p.exitcode)
                    return False
                continue
            waiting.discard(index)
        return not waiting

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; return the exit code (0 after a clean stop)."""
        from engine.net.transport import port_is_free

        s = self.settings
        for port in (s.dicom_port, s.http_port):
            problem = port_is_free(s.host, port) if port else None
            if problem is not None:
                log.error("cannot listen on %s:%d: %s", s.host, port, problem)
                return 1
        problem = _unsafe(self.config, s)
        if problem is not None:
            log.error("refusing to start: %s", problem)
            return 1
        if s.access.allowed_calling is None and not is_loopback(s.host):
            log.warning("any calling AE title may associate on %s: name them in [access] "
                        "allowed_calling", s.host)  # fmt: skip
        if s.tls is None and not is_loopback(s.host):
            log.warning("DICOM and DICOMweb in clear text on %s: configure [tls]", s.host)
        self._stop = stop_on_signals()
        first = REPLICA if (self.config.extra.get("replica") or {}).get("primary") else FORWARDER
        if first == REPLICA or self.config.extra.get("forward"):
            # a replica's follower, or the forwarder (off the store path, in a process of
            # its own), ready before any worker listens: a rule's queue then covers every store
            self._start(first)
            if not self._wait_ready({first}):
                self._shutdown()
                return 1
        for i in range(s.workers):
            self._start(i)
        if not self._wait_ready(set(range(s.workers))):
            self._shutdown()
            return 1
        log.warning("listening on %s:%d%s as %s with %d worker processes (pids %s), archive %s",
                    s.host, s.dicom_port, " (TLS)" if s.tls else "", s.ae_title, s.workers,
                    " ".join(str(p.pid) for p in self._procs.values()), self.path)  # fmt: skip

        if s.http_port:
            log.warning("DICOMweb on %s://%s:%d/dicom-web", "https" if s.tls else "http",
                        s.host, s.http_port)  # fmt: skip
        while not self._stop.is_set():
            wait_for([p.sentinel for p in self._procs.values()], timeout=0.5)
            for index, p in list(self._procs.items()):
                if index == REPLICA and p.exitcode == PROMOTED_EXIT:
                    self._promoted(p)
                elif not p.is_alive() and not self._stop.is_set():
                    self._restart(index, p)
        return self._shutdown()

    def _promoted(self, p: Any) -> None:
        """The follower let go (`pacs promote`): the workers take stores now, and forward."""
        p.join()
        del self._procs[REPLICA]
        log.warning("promoted: this archive is a primary now, the workers take stores")
        if self.config.extra.get("forward"):
            self._start(FORWARDER)
            self._wait_ready({FORWARDER})

    def _restart(self, index: int, p: Any) -> None:
        if time.monotonic() - self._started.get(index, 0.0) >= RESTART_STABLE_S:
            self._restarts[index] = 0  # it had run: a new crash, not a crash loop
        n = self._restarts.get(index, 0)
        self._restarts[index] = n + 1
        log.error("%s (pid %d) died with exit code %s; restarting it",
                  p.name, p.pid, p.exitcode)  # fmt: skip
        p.join()
        if n:  # a worker that keeps dying must not spin the supervisor
            time.sleep(min(RESTART_BACKOFF_MAX_S, 0.1 * 2**n))
        self._start(index)
        if self._wait_ready({index}):
            log.warning("%s restarted (pid %d)", p.name, self._procs[index].pid)

    def _shutdown(self) -> int:
        log.warning("stopping: open associations finish, then the workers exit")
        for p in self._procs.values():
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker's graceful stop
        code = 0
        for p in self._procs.values():
            p.join(SHUTDOWN_GRACE_S + 30.0)
            if p.is_alive():
                log.error("%s did not stop; killing it", p.name)
                p.kill()
                p.join()
            if p.exitcode not in (0, -signal.SIGTERM):  # SIGTERM before its handler: stopped
                log.error("%s exited with %s", p.name, p.exitcode)
                code = 1
        self._ready.close()
        log.warning("stopped")
        return code


def follow_primary(archive: Any) -> None:
    """With ``[replica] primary`` set, make `archive` a replica of it (or check it is one).

    Raises
    ------
    engine.errors.ReplicaRoleError
        It was promoted, follows another primary, or holds instances of its own.
    """
    from engine.index import replica as role
    from engine.replica.follower import ReplicaSettings

    try:
        replica = ReplicaSettings.from_mapping(archive.config.extra.get("replica"))
    except ValueError as exc:
        raise ReplicaRoleError(str(exc)) from exc
    if replica is None:
        return
    instances = archive.catalog.counters().get("instances", 0)
    archive.env.write(lambda txn: role.begin(txn, archive.env.db, replica.primary, instances))


def serve(path: str | os.PathLike[str], config: Config, settings: ServerSettings) -> int:
    """Run the DICOM server in the foreground until SIGTERM/SIGINT.

    Parameters
    ----------
    path
        The archive folder (created if missing).
    config
        The archive's config.
    settings
        AE title, host, port, worker count, limits and access rules.

    Returns
    -------
    int
        0 after a clean stop; 1 if the port is taken or a worker failed to start or stop.
    """
    Path(path).mkdir(parents=True, exist_ok=True)
    # numpy (imported by pydicom and the renderer) starts an OpenBLAS thread per core in
    # every worker, which spin after work; nothing here multiplies matrices
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        _recover_before_workers(path, config)
    except ReplicaRoleError as exc:
        log.error("refusing to start: %s", exc)
        return 1
    return Supervisor(path, config, settings).run()


def _recover_before_workers(path: str | os.PathLike[str], config: Config) -> None:
    """Open and close the archive once, alone: recovery (and, after a power loss,
    the rebuild of the index) needs every segment, which running workers would hold."""
    from engine.archive import Archive

    archive = Archive(path, config)
    try:
        follow_primary(archive)
        report = archive.recovery
        if report.records_replayed or report.truncated or report.rebuilt:
            log.info("recovered %s: %d records replayed, %d torn tails cut%s", path,
                     report.records_replayed, len(report.truncated),
                     ", index rebuilt" if report.rebuilt else "")  # fmt: skip
    finally:
        archive.close()
