"""``pacs backup`` and ``pacs restore`` (:mod:`engine.backup`): progress bars, then a summary."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_parsers(sub: Any) -> None:
    s = sub.add_parser("backup", help="copy the archive as of now into DEST, while it serves "
                       "(incremental into an earlier backup)")  # fmt: skip
    s.add_argument("dest", help="backup folder (created if absent)")
    s.set_defaults(fn=cmd_backup)
    s = sub.add_parser("restore", help="copy the backup in SRC into DATA_DIR (empty) and verify")
    s.add_argument("src", help="a folder `pacs backup` wrote")
    s.add_argument("data_dir", help="the new archive folder (absent or empty)")
    s.set_defaults(fn=cmd_restore)


@contextmanager
def _bytes_bar(what: str) -> Iterator[Any]:
    """A progress bar in bytes; yields the (done, total) callback that drives it."""
    from engine.cli import err

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def cmd_backup(args: argparse.Namespace) -> int:
    from engine.backup import BackupError, backup, check_backup_dest
    from engine.cli import _open, err, out

    try:
        check_backup_dest(Path(args.archive), Path(args.dest))
        with _open(args) as archive, _bytes_bar("backup") as bar:
            r = backup(archive, Path(args.dest), bar)
    except BackupError as exc:
        err.print(f"[red]error:[/] {exc}")
        return EXIT_FAILED
    rate = int(r.bytes_copied / r.seconds) if r.seconds else 0
    removed = f", {len(r.segments_removed)} compacted away removed" if r.segments_removed else ""
    out.print(f"backup of {r.instances:,} instances as of {r.point} (change {r.change}) in "
              f"{args.dest}: {r.segments} segments, {r.segments_copied} new or grown "
              f"({decimal(r.bytes_copied)} copied, {decimal(rate)}/s), "
              f"{decimal(r.bytes_unchanged)} already there{removed}; "
              f"{r.seconds:.1f} s")  # fmt: skip
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from engine.archive import open_archive
    from engine.backup import BackupError, check_restore, restore
    from engine.cli import _progress, _segments, err, out

    try:
        check_restore(Path(args.src), Path(args.data_dir))
        with _bytes_bar("restore") as bar:
            r = restore(Path(args.src), Path(args.data_dir), bar)
    except BackupError as exc:
        err.print(f"[red]error:[/] {exc}")
        return EXIT_FAILED
    with open_archive(args.data_dir, args.config) as archive, _progress() as progress:
        report = archive.verify(_segments(progress, "verify"))
        instances = archive.stats().get("instances", 0)
    for problem in report.problems:
        out.print(f"[red]problem:[/] {problem}")
    verdict = "verify clean" if report.ok else f"verify found {len(report.problems)} problems"
    out.print(f"restored the backup of {r.point} (change {r.change}, {r.instances:,} instances) "
              f"into {args.data_dir}: {instances:,} instances, {report.records:,} records; "
              f"{verdict}")  # fmt: skip
    return EXIT_OK if report.ok else EXIT_FAILED
