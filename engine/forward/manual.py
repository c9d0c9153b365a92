"""A send asked for by hand: ``pacs send`` and ``POST /admin/v1/send`` share it.

The UID names a patient (its PatientID), a study, a series or one instance;
every instance under it goes, each in its stored transfer syntax, a study on
one association, over the same senders as the forward rules (a [remotes]
entry with TLS when it says so, or STOW-RS to a DICOMweb URL).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.errors import EngineError, NotFoundError
from engine.forward.runner import client_tls, stored_match
from engine.forward.senders import Delivery, DicomSender, StowSender
from engine.net.settings import Remote, ServerSettings

if TYPE_CHECKING:
    from engine.archive import Archive
    from engine.net.retrieve import Match

SEND_CHUNK = 100  # instances per step of the progress (one association throughout)
_AD_HOC = re.compile(r"(?P<aet>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})")
_LEVELS = ("sop_instance_uid", "series_instance_uid", "study_instance_uid", "patient_id")


class SendTargetError(EngineError):
    """The destination of a send is not one we can reach."""


def resolve(archive: Archive, uid: str) -> list[str]:
    """The SOP Instance UIDs under `uid`: an instance, a series, a study or a PatientID."""
    for key in _LEVELS:
        found = archive.instances_of(**{key: uid})
        if found:
            return found
    return []


def sender(archive: Archive, settings: ServerSettings, to: str, parallel: int, *,
           ad_hoc: bool) -> Any:  # fmt: skip
    """The sender for `to`: a [remotes] AE title, ``stow:URL``, or (`ad_hoc`) AET@host:port.

    Raises
    ------
    SendTargetError
        `to` is none of these (or an ad hoc one where those are not allowed).
    """
    if to.startswith("stow:"):
        if not ad_hoc:
            raise SendTargetError("a STOW-RS URL is taken from the command line only; "
                                  "name a [remotes] entry")  # fmt: skip
        return StowSender(archive, to[5:], parallel)
    match = _AD_HOC.fullmatch(to)
    if match and ad_hoc:
        given = Remote(match["aet"], match["host"], int(match["port"]))
        settings, to = settings.with_remote(given), given.ae_title
    remote = settings.remotes.get(to)
    if remote is None or remote.host is None or remote.port is None:
        hint = "; or give AET@host:port" if ad_hoc else ""
        raise SendTargetError(f"{to!r} is not a [remotes] entry with host and port{hint}")
    return DicomSender(archive, settings, to, parallel, client_tls(settings, to))


@dataclass(slots=True)
class Plan:
    """What a send is about to send: each instance as stored, and its study."""

    matches: list[Match]
    study_of: dict[str, str]


def plan(archive: Archive, uid: str) -> Plan:
    """The instances under `uid`, as stored.

    Raises
    ------
    NotFoundError
        Nothing is stored under `uid`.
    """
    uids = resolve(archive, uid)
    matches, study_of = [], {}
    with archive.env.read() as txn:
        for sop in uids:
            found = stored_match(txn, archive.catalog, sop)
            if found is not None:
                matches.append(found[0])
                study_of[sop] = found[1]["study"]
    if not matches:
        raise NotFoundError(f"no patient, study, series or instance {uid!r} is stored here")
    return Plan(matches, study_of)


def send(sender: Any, plan: Plan, advance: Callable[[int], None] = lambda n: None) -> Delivery:
    """Send `plan` in chunks of SEND_CHUNK, calling `advance` after each; stop at the first
    chunk the destination could not be reached for (the rest is `unsent`)."""
    total = Delivery()
    matches = plan.matches
    for i in range(0, len(matches), SEND_CHUNK):
        d = sender.send(matches[i : i + SEND_CHUNK], lambda m: plan.study_of[m.sop_instance])
        total.add(d)
        advance(len(d.sent) + len(d.refused))
        if d.unsent:
            total.unsent += [m.sop_instance for m in matches[i + SEND_CHUNK :]]
            break
    return total
