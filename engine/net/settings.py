"""The network settings: the ``[server]``, ``[remotes.AET]`` and ``[access]`` TOML tables.

They live in :attr:`engine.config.Config.extra` (the archive's typed config
keeps only what the storage core needs); this module turns them into typed,
checked objects once, at start-up, so that a typo in the file is an error
before anything listens::

    [server]
    ae_title = "PACS"
    dicom_port = 11112
    host = "127.0.0.1"
    workers = 4
    max_associations = 32
    network_timeout_s = 120    # an idle association is aborted after this
    max_instance_bytes = 4294967296  # a data set growing past this is aborted

    [remotes.VIEWER1]          # a C-MOVE destination, and what it may do
    host = "10.0.0.7"
    port = 11112
    store = true
    query = true
    retrieve = true
    move_destination = true    # may receive C-MOVE results (false: A801 for it)
    move_to = ["VIEWER1"]      # where its own C-MOVEs may send (absent: any known remote)
    tls = false                # C-MOVE connections to it use TLS (see engine.net.tls)
    max_associations = 1       # C-MOVE sub-operations to it over this many associations at once

    [access]
    allowed_calling = ["MODALITY1@10.0.0.12", "VIEWER1"]

    [dicom]                    # how the DICOM port negotiates (PS3.7 Annex D, PS3.8 9)
    check_called_ae = true     # refuse a called AE title that is not ours (reason 7)
    ae_titles = ["PACS2"]      # more titles we answer to, besides [server] ae_title
    accept_unknown_sop_classes = true  # C-STORE of private SOP classes (false: context refused)
    pdu_timeout_s = 30         # a PDU begun must be whole within this
    idle_timeout_s = 120       # [server] network_timeout_s under its DICOM name
    require_user_identity = false  # refuse associations without a verified user (PS3.7 D.3.3.7)

The ``[tls]`` table (:mod:`engine.net.tls`) makes the DICOM port a TLS port;
the ``[audit]`` table (:mod:`engine.audit`) says where the audit trail goes.
Flags of ``pacs serve`` override the ``[server]`` and ``[tls]`` tables.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from engine.audit import DEFAULT_FILE_NAME, AuditSettings, audit_settings
from engine.config import Config
from engine.forward.rules import forward_rules
from engine.net.tls import TlsSettings, tls_settings

DEFAULT_AE_TITLE = "PACS"
DEFAULT_DICOM_PORT = 11112
DEFAULT_HTTP_PORT = 8042
DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_ASSOCIATIONS = 64
DEFAULT_NETWORK_TIMEOUT_S = 120.0
DEFAULT_MAX_INSTANCE_BYTES = 4 << 30  # one data set received over DIMSE, at most
AE_TITLE_MAX_CHARS = 16  # PS3.5 6.2: AE is at most 16 characters
SERVER_KEYS = ("ae_title", "dicom_port", "host", "workers", "max_associations", "http_port",
               "network_timeout_s", "max_instance_bytes")  # fmt: skip
REMOTE_KEYS = ("host", "port", "store", "query", "retrieve", "move_destination", "move_to", "tls",
               "max_associations")  # fmt: skip
MAX_MOVE_ASSOCIATIONS = 16  # to one C-MOVE destination, at most
DICOM_KEYS = ("check_called_ae", "ae_titles", "accept_unknown_sop_classes", "pdu_timeout_s",
              "idle_timeout_s", "require_user_identity")  # fmt: skip
ROLE_FOR = {"store": "write", "query": "read", "retrieve": "read"}  # [auth] roles per service
DEFAULT_PDU_TIMEOUT_S = 30.0
FLAGS = ("store", "query", "retrieve", "move_destination", "tls")  # booleans of [remotes.X]


@dataclass(frozen=True, slots=True)
class Remote:
    """A peer known by its AE title: where to send C-MOVE results, and what it may do."""

    ae_title: str
    host: str | None = None
    port: int | None = None
    store: bool = True
    query: bool = True
    retrieve: bool = True
    move_destination: bool = True
    tls: bool = False
    move_to: frozenset[str] | None = None  # None: any configured remote
    max_associations: int = 1  # a C-MOVE to it sends over this many associations at once


@dataclass(frozen=True, slots=True)
class Access:
    """Who may associate, and who may do what.

    Parameters
    ----------
    allowed_calling
        ``None``: every calling AE title may associate. Otherwise the
        ``(ae_title, addresses)`` pairs allowed; ``addresses`` is ``None``
        when any host may use that title.
    remotes
        Per-AE-title permissions; an AE title not listed may do everything
        (once it is allowed to associate).
    """

    allowed_calling: tuple[tuple[str, frozenset[str] | None], ...] | None = None
    remotes: Mapping[str, Remote] = field(default_factory=dict)
    roles: frozenset[str] | None = None  # a verified user's (PS3.7 D.3.3.7); None: no user

    def for_user(self, roles: frozenset[str] | None) -> Access:
        """These rules for an association whose user has `roles` (None: no verified user)."""
        return self if roles is None else replace(self, roles=roles)

    def may_associate(self, calling_ae: str, address: str) -> bool:
        """Whether `calling_ae`, connecting from `address`, may open an association."""
        if self.allowed_calling is None:
            return True
        title = calling_ae.strip()
        for allowed, hosts in self.allowed_calling:
            if allowed == title and (hosts is None or address in hosts):
                return True
        return False

    def may(self, calling_ae: str, permission: str) -> bool:
        """Whether `calling_ae` may use the service `permission` (store, query, retrieve),
        and the association's user too: store needs the role ``write``, the others ``read``."""
        if self.roles is not None and ROLE_FOR[permission] not in self.roles:
            return False
        remote = self.remotes.get(calling_ae.strip())
        return remote is None or bool(getattr(remote, permission))

    def may_move_to(self, calling_ae: str, destination: str) -> str | None:
        """None if `calling_ae` may send C-MOVE results to `destination`, else why not."""
        remote = self.remotes.get(destination)
        if remote is None or remote.host is None or remote.port is None:
            return f"unknown move destination {destination!r} (add [remotes.{destination}])"
        if not remote.move_destination:
            return f"{destination} is not allowed as a move destination"
        caller = self.remotes.get(calling_ae.strip())
        if caller is not None and caller.move_to is not None and destination not in caller.move_to:
            return f"{calling_ae.strip()} may not move to {destination}"
        return None


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Everything ``pacs serve`` needs besides the archive's own :class:`Config`."""

    ae_title: str = DEFAULT_AE_TITLE
    dicom_port: int = DEFAULT_DICOM_PORT
    host: str = DEFAULT_HOST
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_associations: int = DEFAULT_MAX_ASSOCIATIONS
    network_timeout_s: float = DEFAULT_NETWORK_TIMEOUT_S
    http_port: int = DEFAULT_HTTP_PORT  # DICOMweb; 0 turns it off
    max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES
    access: Access = field(default_factory=Access)
    tls: TlsSettings | None = None  # the DICOM port speaks TLS, the HTTP port HTTPS
    audit: AuditSettings = field(default_factory=AuditSettings)  # a relative file: in the archive
    check_called_ae: bool = True
    ae_titles: tuple[str, ...] = ()  # called AE titles we answer to besides ae_title
    accept_unknown_sop_classes: bool = True
    pdu_timeout_s: float = DEFAULT_PDU_TIMEOUT_S
    require_user_identity: bool = False  # refuse associations without a verified user

    def __post_init__(self) -> None:
        for title in (self.ae_title, *self.ae_titles):
            if not 0 < len(title.strip()) <= AE_TITLE_MAX_CHARS:
                raise ValueError(f"an AE title must be 1..16 characters, not {title!r}")
        if not 0 < self.dicom_port < 65536:
            raise ValueError(f"dicom_port must be 1..65535, not {self.dicom_port}")
        if not 0 <= self.http_port < 65536:
            raise ValueError(f"http_port must be 0 (off) or 1..65535, not {self.http_port}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, not {self.workers}")
        if self.max_associations < 1:
            raise ValueError(f"max_associations must be at least 1, not {self.max_associations}")
        if not (isinstance(self.network_timeout_s, int | float) and self.network_timeout_s > 0):
            raise ValueError(
                f"network_timeout_s must be a positive number, not {self.network_timeout_s!r}"
            )
        if not (isinstance(self.pdu_timeout_s, int | float) and self.pdu_timeout_s > 0):
            raise ValueError(f"pdu_timeout_s must be a positive number, not {self.pdu_timeout_s!r}")
        for name in ("check_called_ae", "accept_unknown_sop_classes", "require_user_identity"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false")
        limit = self.max_instance_bytes
        if isinstance(limit, bool) or not (isinstance(limit, int) and limit > 0):
            raise ValueError(
                f"max_instance_bytes must be a positive integer, not {self.max_instance_bytes!r}"
            )

    @property
    def remotes(self) -> Mapping[str, Remote]:
        return self.access.remotes

    def with_remote(self, remote: Remote) -> ServerSettings:
        """These settings knowing one more remote (``pacs send --to AET@host:port``)."""
        remotes = {**self.access.remotes, remote.ae_title: remote}
        return replace(self, access=replace(self.access, remotes=remotes))

    def answers_to(self, called_ae: str) -> bool:
        """Whether an association calling `called_ae` is for us (PS3.8 9.3.4, reason 7)."""
        if not self.check_called_ae:
            return True
        title = called_ae.strip()
        return title == self.ae_title.strip() or title in (t.strip() for t in self.ae_titles)


def _resolve(host: str) -> frozenset[str]:
    """Every address `host` names (an address names itself)."""
    try:
        ipaddress.ip_address(host)
        return frozenset({host})
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise ValueError(f"access.allowed_calling: cannot resolve host {host!r}: {exc}") from exc
    return frozenset(str(info[4][0]) for info in infos)


def _table(extra: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = extra.get(name, {})
    if not isinstance(value, dict):
        raise ValueError(f"[{name}] must be a table")
    return value


def _remotes(extra: Mapping[str, Any]) -> dict[str, Remote]:
    remotes: dict[str, Remote] = {}
    for title, table in _table(extra, "remotes").items():
        if not isinstance(table, dict):
            raise ValueError(f"[remotes.{title}] must be a table")
        unknown = set(table) - set(REMOTE_KEYS)
        if unknown:
            raise ValueError(f"[remotes.{title}]: unknown keys {sorted(unknown)}")
        if not 0 < len(title) <= AE_TITLE_MAX_CHARS:
            raise ValueError(f"[remotes.{title}]: an AE title is 1..16 characters")
        port = table.get("port")
        if port is not None and not (isinstance(port, int) and 0 < port < 65536):
            raise ValueError(f"[remotes.{title}]: port must be 1..65535")
        perms = {p: table.get(p, p != "tls") for p in FLAGS}  # all true but tls by default
        for p, v in perms.items():
            if not isinstance(v, bool):
                raise ValueError(f"[remotes.{title}]: {p} must be true or false")
        move_to = table.get("move_to")
        if move_to is not None and not (
            isinstance(move_to, list) and all(isinstance(t, str) for t in move_to)
        ):
            raise ValueError(f'[remotes.{title}]: move_to must be a list like ["VIEWER1"]')
        targets = None if move_to is None else frozenset(move_to)
        most = table.get("max_associations", 1)
        if isinstance(most, bool) or not (isinstance(most, int) and
                                          1 <= most <= MAX_MOVE_ASSOCIATIONS):  # fmt: skip
            raise ValueError(f"[remotes.{title}]: max_associations must be 1.."
                             f"{MAX_MOVE_ASSOCIATIONS}")  # fmt: skip
        remotes[title] = Remote(title, table.get("host"), port, **perms, move_to=targets,
                                max_associations=most)  # fmt: skip
    return remotes


def _allowed(extra: Mapping[str, Any]) -> tuple[tuple[str, frozenset[str] | None], ...] | None:
    access = _table(extra, "access")
    unknown = set(access) - {"allowed_calling"}
    if unknown:
        raise ValueError(f"[access]: unknown keys {sorted(unknown)}")
    entries = access.get("allowed_calling")
    if entries is None:
        return None
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise ValueError('access.allowed_calling must be a list like ["AET", "AET@host"]')
    out: list[tuple[str, frozenset[str] | None]] = []
    for entry in entries:
        title, _, host = entry.partition("@")
        out.append((title.strip(), _resolve(host) if host else None))
    return tuple(out)


def _dicom(extra: Mapping[str, Any], server: Mapping[str, Any]) -> dict[str, Any]:
    """The ``[dicom]`` table as ServerSettings fields (idle_timeout_s is network_timeout_s)."""
    table = _table(extra, "dicom")
    unknown = set(table) - set(DICOM_KEYS)
    if unknown:
        raise ValueError(f"[dicom]: unknown keys {sorted(unknown)}")
    values = dict(table)
    if "idle_timeout_s" in values:
        if "network_timeout_s" in server:
            raise ValueError("give [dicom] idle_timeout_s or [server] network_timeout_s, not both")
        values["network_timeout_s"] = values.pop("idle_timeout_s")
    if "ae_titles" in values:
        titles = values["ae_titles"]
        if not isinstance(titles, list) or not all(isinstance(t, str) for t in titles):
            raise ValueError('[dicom] ae_titles must be a list like ["PACS2"]')
        values["ae_titles"] = tuple(titles)
    return values


def server_settings(config: Config, **flags: Any) -> ServerSettings:
    """The settings of ``pacs serve``: defaults, then ``config.extra``, then `flags`.

    Parameters
    ----------
    config
        The archive's config; its ``extra`` holds the ``[server]``,
        ``[remotes.*]``, ``[access]`` and ``[dicom]`` tables of the TOML file.
    **flags
        Command-line values (``None`` means the flag was not given).

    Raises
    ------
    ValueError
        A key is unknown or a value is out of range; the message names it.
    """
    server = _table(config.extra, "server")
    unknown = set(server) - set(SERVER_KEYS)
    if unknown:
        raise ValueError(f"[server]: unknown keys {sorted(unknown)}")
    values = {k: v for k, v in server.items() if k in SERVER_KEYS}
    values.update(_dicom(config.extra, server))
    tls_flags = {k[4:]: flags.pop(k) for k in list(flags) if k.startswith("tls_")}
    values.update({k: v for k, v in flags.items() if v is not None})
    access = Access(_allowed(config.extra), _remotes(config.extra))
    tls = tls_settings(_table(config.extra, "tls"), **tls_flags)
    audit = audit_settings(_table(config.extra, "audit"), DEFAULT_FILE_NAME)
    forward_rules(config.extra, access.remotes)  # checked now; the forwarder parses them again
    return replace(ServerSettings(), **values, access=access, tls=tls, audit=audit)
