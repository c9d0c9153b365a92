"""The audit trail: one JSON line per security-relevant event, to a file and optionally syslog.

Each record carries the semantics of a DICOM audit message (PS3.15 A.5, the
RFC 3881 lineage): the event (its DCM code and name), the action (C, R, U, D
or E), the outcome (0 success, 4 minor, 8 serious, 12 major failure), who
(AE title or user), from where (network address), which patient and study,
and when (UTC). Configured by the ``[audit]`` table::

    [audit]
    file = "/var/log/pacs/audit.jsonl"   # default for `pacs serve`: <archive>/audit.jsonl
    syslog = true                        # also to the local syslog (/dev/log, LOG_AUTHPRIV)
    # syslog = "/run/rsyslog.sock"       # ... or to this Unix datagram socket
    # syslog = "audit.example.org:514"   # ... or to a collector over UDP (an ATNA repository)

Cost: one ``write(2)`` of a few hundred bytes per event on an ``O_APPEND``
descriptor (atomic between the worker processes, no lock, nothing held back in
a buffer to lose when a worker is killed); no fsync.

Never lost silently: when the write fails (disk full, file removed read-only,
the syslog socket gone) :func:`emit` logs at ERROR and raises
:class:`~engine.errors.AuditError`, which
the network and web layers turn into a refusal (A700, 503) of the request it
would have recorded.

This module imports nothing from ``engine.net``, ``engine.web`` or
``engine.cli``: all three call into it.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import logging.handlers
import os
import socket
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from engine.errors import AuditError

log = logging.getLogger("engine.audit")
AUDIT_KEYS = ("file", "syslog")
DEFAULT_FILE_NAME = "audit.jsonl"
LOCAL_SYSLOG = "/dev/log"
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12  # RFC 3881 5.1.4


class Event(Enum):
    """PS3.15 A.5.3: (EventID code in DCM, its meaning, the EventActionCode)."""

    INSTANCES_TRANSFERRED = ("110104", "DICOM Instances Transferred", "C")  # stored
    QUERY = ("110112", "Query", "E")
    BEGIN_TRANSFERRING = ("110102", "Begin Transferring DICOM Instances", "E")  # retrieve
    INSTANCES_ACCESSED = ("110103", "DICOM Instances Accessed", "R")
    INSTANCES_DELETED = ("110103", "DICOM Instances Accessed", "D")
    DATA_EXPORT = ("110106", "Export", "R")
    SECURITY_ALERT = ("110113", "Security Alert", "E")  # refused association/request, TLS
    USER_AUTHENTICATION = ("110114", "User Authentication", "E")  # HTTP login refused


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """Where the trail goes: a JSON-lines file (None: no file) and/or syslog.

    `syslog` is None (off), a Unix datagram socket's path, or ``host:port`` (UDP).
    """

    file: str | None = None
    syslog: str | None = None


def audit_settings(table: Mapping[str, Any] | None, default_file: str | None) -> AuditSettings:
    """The ``[audit]`` table; ``file = ""`` turns the file off.

    Raises
    ------
    ValueError
        An unknown key or a value of the wrong type.
    """
    values = dict(table or {})
    unknown = set(values) - set(AUDIT_KEYS)
    if unknown:
        raise ValueError(f"[audit]: unknown keys {sorted(unknown)}")
    file = values.get("file", default_file)
    if file is not None and not isinstance(file, str):
        raise ValueError("audit.file must be a path")
    target = values.get("syslog", False)
    if target is True:
        target = LOCAL_SYSLOG
    if target is not False and (not isinstance(target, str) or not target):
        raise ValueError('audit.syslog must be true, false, a socket path or "host:port"')
    return AuditSettings(file or None, target or None)


class _SyslogSink(logging.handlers.SysLogHandler):
    """The stdlib's syslog client (RFC 3164 framing, LOG_AUTHPRIV) that raises, not prints.

    ``SysLogHandler.emit`` hands a failed send to ``handleError``, which only
    prints to stderr; a refused record must reach :meth:`AuditTrail.write`.
    """

    def __init__(self, target: str) -> None:
        host, sep, port = target.rpartition(":")
        address: str | tuple[str, int] = target
        if sep and not target.startswith("/") and port.isdigit():
            address = (host.strip("[]"), int(port))  # "[::1]:514" too
        super().__init__(address, facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV)
        self.ident = "pacs-audit: "
        if isinstance(address, str):  # the stdlib lets a missing socket pass at start: we refuse
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
                probe.connect(address)

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]  # called from emit's except clause: what the send raised
        raise exc if exc is not None else OSError("syslog send failed")

    def mapPriority(self, levelName: str) -> str:
        return "notice"  # every record, as the audit trail always sent them

    def send_line(self, text: str) -> None:
        """Send one record as one syslog message; raises OSError when it cannot be."""
        self.emit(logging.makeLogRecord({"msg": text}))


class AuditTrail:
    """An open audit sink; :meth:`write` one record at a time, from any thread."""

    def __init__(self, settings: AuditSettings) -> None:
        self.settings = settings
        self.host = socket.gethostname()
        self.failures = 0
        self._lock = threading.Lock()  # only to count failures and log the first of a streak
        self._fd: int | None = None
        if settings.file is not None:
            os.makedirs(os.path.dirname(os.path.abspath(settings.file)), exist_ok=True)
            try:
                self._fd = os.open(settings.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as exc:
                raise AuditError(f"cannot open the audit trail {settings.file}: {exc}") from exc
        self._syslog: _SyslogSink | None = None
        if settings.syslog is not None:
            try:
                self._syslog = _SyslogSink(settings.syslog)
            except OSError as exc:
                raise AuditError(f"cannot open syslog {settings.syslog}: {exc}") from exc

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record; raise :class:`AuditError` (after logging it) if it cannot be."""
        line = orjson.dumps(record) + b"\n"
        if self._fd is not None:
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as exc:
                self._failed(exc)
        if self._syslog is not None:
            try:
                self._syslog.send_line(line[:-1].decode())
            except OSError as exc:
                self._failed(exc, f"syslog {self.settings.syslog}")

    def _failed(self, exc: OSError, where: str | None = None) -> None:
        with self._lock:
            self.failures += 1
            n = self.failures
        log.error("AUDIT TRAIL FAILED (%d records refused so far): cannot write %s: %s",
                  n, where or self.settings.file, exc)  # fmt: skip
        raise AuditError(f"the audit trail cannot be written: {exc.strerror or exc}") from exc

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._syslog is not None:
            self._syslog.close()
            self._syslog = None


_trail: AuditTrail | None = None


def configure(settings: AuditSettings | None) -> AuditTrail | None:
    """Open this process's audit trail (None: close it; events are then not recorded)."""
    global _trail
    if _trail is not None:
        _trail.close()
    _trail = AuditTrail(settings) if settings and (settings.file or settings.syslog) else None
    return _trail


def enabled() -> bool:
    return _trail is not None


def emit(
    event: Event,
    outcome: int = SUCCESS,
    *,
    user: str | None,
    address: str | None,
    patient: str | None = None,
    study: str | None = None,
    description: str = "",
    **detail: Any,
) -> None:
    """Record one event, if an audit trail is configured in this process.

    Parameters
    ----------
    event
        What happened (PS3.15 A.5.3).
    outcome
        :data:`SUCCESS`, :data:`MINOR_FAILURE`, :data:`SERIOUS_FAILURE` or :data:`MAJOR_FAILURE`.
    user, address
        Who (calling AE title, HTTP user, or the local OS user) and from where.
    patient, study
        The Patient ID and Study Instance UID concerned, when known.
    description
        The outcome in words (why a request was refused).
    **detail
        More about the event (SOP Instance UID, query keys, counts); never secrets.

    Raises
    ------
    AuditError
        The record could not be written.
    """
    trail = _trail
    if trail is None:
        return
    code, name, action = event.value
    record = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "event": name, "event_id": code, "action": action, "outcome": outcome,
        "user": user, "address": address, "patient": patient, "study": study,
        "node": trail.host, "pid": os.getpid(),
    }  # fmt: skip
    if description:
        record["description"] = description
    if detail:
        record["detail"] = detail
    trail.write(record)


def emit_refusal(event: Event, *, user: str | None, address: str | None, description: str,
                 **detail: Any) -> None:  # fmt: skip
    """Record a refused association or request; the refusal stands even if the record cannot
    be written (the trail has logged that at ERROR)."""
    with contextlib.suppress(AuditError):
        emit(event, MINOR_FAILURE, user=user, address=address, description=description, **detail)
