"""``pacs queue`` (the forward queues: list, retry, purge) and ``pacs send`` (a study, now)."""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from typing import TYPE_CHECKING, Any

import orjson
from rich.table import Table

from engine.config import load_config
from engine.forward.status import dead_rows, queue_rows

if TYPE_CHECKING:
    from engine.forward.queue import QueueState
    from engine.forward.rules import Rule

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_parsers(sub: Any) -> None:
    s = sub.add_parser("queue", help="forward queues: depth, retries, dead letters")
    s.add_argument("rule", nargs="?", help="one [[forward]] rule by name (default: all)")
    s.add_argument("--dead", action="store_true", help="list the rule's dead letters")
    s.add_argument("--retry", action="store_true", help="send the rule's dead letters again")
    s.add_argument("--purge", action="store_true", help="forget the rule's dead letters")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_queue)

    s = sub.add_parser("send", help="send a patient, study, series or instance to a peer now")
    s.add_argument("uid", help="Study, Series or SOP Instance UID, or a PatientID")
    s.add_argument(
        "--to",
        required=True,
        help="a [remotes] AE title, AET@host:port, or stow:http(s)://host/dicom-web",
    )
    s.add_argument("--parallel", type=int, default=1, help="associations at once")
    s.set_defaults(fn=cmd_send)


def _rules(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    from engine.forward.rules import forward_rules
    from engine.net.settings import server_settings

    config = load_config(args.config)
    settings = server_settings(config)
    return settings, forward_rules(config.extra, settings.remotes)


def cmd_queue(args: argparse.Namespace) -> int:
    from engine.cli import _open, err, out
    from engine.forward.queue import ForwardQueue

    _, rules = _rules(args)
    if args.rule is not None:
        rules = [r for r in rules if r.name == args.rule]
        if not rules:
            err.print(f"[red]error:[/] no [[forward]] rule named {args.rule!r} in the config")
            return EXIT_USAGE
    elif args.retry or args.purge or args.dead:
        err.print("[red]error:[/] name the rule whose dead letters to list, retry or purge")
        return EXIT_USAGE
    if not rules:
        err.print("no [[forward]] rules in the config (give it with --config)")
        return EXIT_USAGE
    with _open(args) as archive:
        queues = {r.name: ForwardQueue(archive.env, r.name) for r in rules}
        if args.retry or args.purge:
            q = queues[rules[0].name]
            n = q.retry_dead() if args.retry else q.purge_dead()
            done = "queued again" if args.retry else "purged"
            out.print(f"{rules[0].name}: {n} dead letters {done}")
            return EXIT_OK
        if args.dead:
            return _print_dead(queues[rules[0].name], args.json)
        states = [(r, queues[r.name].state()) for r in rules]
    if args.json:
        rows = queue_rows(states)
        sys.stdout.buffer.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n")
        return EXIT_OK
    out.print(queue_table(states))
    return EXIT_OK


def queue_table(states: list[tuple[Rule, QueueState]]) -> Table:
    table = Table("rule", "to", "behind", "lag", "rate/s", "retrying", "dead", "sent", "refused",
                  "awaiting commit", "last sent", "last error", title="forward queues")  # fmt: skip
    for r, s in states:
        table.add_row(
            r.name,
            str(r.target),
            f"{s.behind:,}",
            f"{s.lag_s:.1f} s" if s.behind else "",
            f"{s.rate_per_s:,.1f}",
            f"{s.retries:,}",
            f"{s.dead:,}",
            f"{s.sent:,}",
            f"{s.refused:,}",
            f"{s.awaiting:,}" if r.commit else "",
            _when(s.last_sent_ns),
            s.last_error[:80],
        )
    return table


def _print_dead(queue: Any, as_json: bool) -> int:
    from engine.cli import out

    letters = queue.dead_letters()
    if as_json:
        rows = dead_rows(letters)
        sys.stdout.buffer.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n")
        return EXIT_OK
    table = Table("SOP Instance UID", "attempts", "since", "why", title=f"dead letters of "
                  f"{queue.name}")  # fmt: skip
    for w in letters:
        table.add_row(w.sop_uid, str(w.attempts), _when(w.first_ns), w.error)
    out.print(table)
    out.print(f"{len(letters)} dead letters")
    return EXIT_OK


def _when(ns: int) -> str:
    if not ns:
        return "-"
    return datetime.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def cmd_send(args: argparse.Namespace) -> int:
    from engine import audit
    from engine.cli import _audit_locally, _local_user, _open, _progress, err, out
    from engine.errors import NotFoundError
    from engine.forward import manual
    from engine.net.settings import server_settings

    settings = server_settings(load_config(args.config))
    _audit_locally(args)
    with _open(args) as archive:
        try:
            plan = manual.plan(archive, args.uid)
            sender = manual.sender(archive, settings, args.to, args.parallel, ad_hoc=True)
        except (NotFoundError, manual.SendTargetError) as exc:
            err.print(f"[red]error:[/] {exc}")
            return EXIT_USAGE
        t0 = time.perf_counter()
        try:
            with _progress() as progress:
                task = progress.add_task(f"send to {args.to}", total=len(plan.matches))
                total = manual.send(sender, plan, lambda n: progress.advance(task, n))
        finally:
            sender.close()
    elapsed = time.perf_counter() - t0
    outcome = audit.SUCCESS if len(total.sent) == len(plan.matches) else audit.MINOR_FAILURE
    audit.emit(audit.Event.INSTANCES_TRANSFERRED, outcome, user=_local_user(), address=None,
               description=f"sent to {args.to}", selector=args.uid,
               instances=len(total.sent))  # fmt: skip
    out.print(
        f"sent {len(total.sent)} of {len(plan.matches)} instances to {args.to} in "
        f"{elapsed:.1f} s; {len(total.refused)} refused, {len(total.unsent)} not sent"
    )
    for uid, why in total.refused[:10]:
        out.print(f"[red]refused:[/] {uid}: {why}")
    if total.error:
        out.print(f"[red]error:[/] {total.error}")
    return EXIT_OK if len(total.sent) == len(plan.matches) else EXIT_FAILED
