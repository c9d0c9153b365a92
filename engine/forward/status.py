"""What the forward queues say, as data: ``pacs queue --json``, ``pacs stats`` and the admin API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.forward.queue import QueueState, Waiting
    from engine.forward.rules import Rule


def forward_states(archive: Any) -> list[tuple[Rule, QueueState]]:
    """Every rule of the archive's config with its queue's state (``pacs stats``, the API)."""
    from engine.forward.queue import ForwardQueue
    from engine.forward.rules import forward_rules
    from engine.net.settings import server_settings

    config = archive.config
    if not config.extra.get("forward"):
        return []
    rules = forward_rules(config.extra, server_settings(config).remotes)
    return [(r, ForwardQueue(archive.env, r.name).state(start=False)) for r in rules]


def queue_rows(states: list[tuple[Rule, QueueState]]) -> list[dict[str, Any]]:
    """Each rule's queue as ``pacs queue --json``, ``pacs stats --json`` and the API give it."""
    return [{"rule": r.name, "to": str(r.target), "cursor": s.cursor, "behind": s.behind,
             "retrying": s.retries, "dead": s.dead, "sent": s.sent, "refused": s.refused,
             "awaiting_commitment": s.awaiting, "lag_s": round(s.lag_s, 3),
             "rate_per_s": round(s.rate_per_s, 2), "last_sent_ns": s.last_sent_ns,
             "last_error": s.last_error} for r, s in states]  # fmt: skip


def dead_rows(letters: list[Waiting]) -> list[dict[str, Any]]:
    """A rule's dead letters as ``pacs queue RULE --dead --json`` and the API give them."""
    return [{"sop_instance_uid": w.sop_uid, "attempts": w.attempts, "error": w.error,
             "first_ns": w.first_ns} for w in letters]  # fmt: skip
