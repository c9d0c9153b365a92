"""``pacs promote`` and the replica rows of ``pacs stats``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import orjson
from rich.table import Table

from engine.index import replica as role
from engine.replica.follower import iso_ns

EXIT_OK, EXIT_FAILED = 0, 1
PROMOTE_WAIT_S = 60.0  # the follower finishes the chunk it is applying, then lets go


def add_parsers(sub: Any) -> None:
    s = sub.add_parser("promote", help="make a replica a primary: it stops following, takes stores")
    s.add_argument("data_dir", nargs="?", help="archive folder (default: -A / $PACS_ARCHIVE)")
    s.add_argument("--json", action="store_true", help="what it did, as JSON")
    s.set_defaults(fn=cmd_promote)


def replica_status(archive: Any) -> dict[str, Any] | None:
    """What `pacs stats` shows of a replica (:func:`engine.index.replica.summary`)."""
    with archive.env.read() as txn:
        return role.summary(txn, archive.env.db)


def status_table(status: dict[str, Any]) -> Table:
    table = Table("", "", title=f"replica of {status['primary']}", show_header=False)
    table.add_row("behind", f"{status['records']:,} changes, {status['bytes']:,} bytes, "
                            f"{status['seconds']:.2f} s")  # fmt: skip
    table.add_row("complete up to", f"{iso_ns(status['point_ns'])} (the primary's clock)")
    table.add_row("records applied", f"{status['records_applied']:,}")
    table.add_row("last contact", iso_ns(status["contact_ns"]))
    if status["error"]:
        table.add_row("last error", f"[red]{status['error']}[/]")
    return table


def cmd_promote(args: argparse.Namespace) -> int:
    from engine.cli import _open, err, out
    from engine.replica.process import lock_follower

    if args.data_dir:
        args.archive = args.data_dir
    t0 = time.monotonic()
    with _open(args) as archive:
        env = archive.env
        lock = lock_follower(archive.path, wait=False)
        if lock is not None:  # no follower runs: promote it here
            try:
                last = env.write(lambda txn: role.finish_promotion(txn, env.db, time.time_ns()))
            finally:
                os.close(lock)
        else:
            env.write(lambda txn: role.request_promotion(txn, env.db))
            with out.status("the follower is finishing what it is applying..."):
                while _still_replica(archive) and time.monotonic() - t0 < PROMOTE_WAIT_S:
                    time.sleep(0.02)
            if _still_replica(archive):
                err.print(f"[red]error:[/] the follower did not let go within "
                          f"{PROMOTE_WAIT_S:.0f} s; is `pacs serve` stuck? (the request "
                          "stays: it promotes when it can)")  # fmt: skip
                return EXIT_FAILED
            with env.read() as txn:
                last = (role.promoted(txn, env.db) or {}).get("last")  # as the follower left it
        instances = archive.catalog.counters().get("instances", 0)
    if last is None:
        err.print(f"[red]error:[/] {args.archive} is not a replica: there is nothing to promote")
        return EXIT_FAILED
    lag = role.lag(last)
    took = time.monotonic() - t0
    if args.json:
        doc = {"primary": last["primary"], "instances": instances, "seconds": took,
               "point_ns": lag["point_ns"], "unapplied_changes": lag["records"]}  # fmt: skip
        sys.stdout.buffer.write(orjson.dumps(doc) + b"\n")
        return EXIT_OK
    out.print(f"promoted {args.archive} in {took:.2f} s: it was a replica of "
              f"{last['primary']} and holds {instances:,} instances; every instance the primary "
              f"acknowledged before {iso_ns(lag['point_ns'])} (its clock) is here; "
              f"{lag['records']:,} changes it had heard of were not applied yet. It takes "
              "stores now.")  # fmt: skip
    return EXIT_OK


def _still_replica(archive: Any) -> bool:
    with archive.env.read() as txn:
        return role.state(txn, archive.env.db) is not None
