"""Backup and restore speed (issue 18) against the disk's own sequential write rate.

Usage (from the repository root)::

    python benchmarks/backup_bench.py                 # 1,000 CT slices of 512x512 (~0.5 GB)
    python benchmarks/backup_bench.py --slices 4000 --json backup.json

An archive of ``--slices`` CT slices is built in a temporary folder (on the
same file system as the copies; ``--work-dir`` chooses it). Then, in one run:

- **disk**: the same number of bytes written to one new file in 64 MB
  chunks and fsynced, as ``dd conv=fsync`` would (best of two): the ceiling
  of a copy on this disk (everything is ``sync``-ed before each step);
- **backup (full)**: ``engine.backup.backup`` into an empty folder;
- **backup (incremental)**: after ``--more`` percent more slices, into the
  same folder: only the new bytes are copied;
- **restore**: ``engine.backup.restore`` into an empty folder (the verify
  ``pacs restore`` runs after it is not counted).

MB/s are of the bytes each step wrote; the ratio is to the disk's rate.
Put ``--work-dir`` on an ext4 (or another file system without reflinks):
XFS and btrfs may clone extents on ``copy_file_range`` instead of copying,
and the figure then says nothing about the disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine
from engine.backup import backup, restore
from engine.synthetic import ct_series

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import rich_table

CHUNK_BYTES = 64 << 20

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


def disk_write_rate(path: Path, nbytes: int) -> float:
    """Bytes/s of writing `nbytes` sequentially to a new file and fsyncing it."""
    chunk = os.urandom(min(CHUNK_BYTES, max(nbytes, 1)))
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        left = nbytes
        while left > 0:
            left -= os.write(fd, chunk[: min(left, len(chunk))])
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - t0
    path.unlink()
    return nbytes / seconds


def fill(archive: engine.Archive, seed: int, slices: int, rows: int) -> None:
    for ds in ct_series(seed, slices, rows=rows, columns=rows):
        archive.store(ds)


def measure(work: Path, slices: int, more: int, rows: int) -> dict[str, Any]:
    src = work / "archive"
    err.print(f"building an archive of {slices} slices of {rows}x{rows} ...")
    with engine.open_archive(src, durability="none") as archive:
        fill(archive, 1, slices, rows)
    size = sum(p.stat().st_size for p in (src / "segments").iterdir())
    rows_out: dict[str, dict[str, float]] = {}
    os.sync()  # the archive's own writeback must not compete with what is measured
    err.print("disk: sequential write + fsync ...")
    disk = max(disk_write_rate(work / "dd.bin", size) for _ in range(2))
    rows_out["disk (write + fsync)"] = {"MB": size / 1e6, "MB/s": disk / 1e6}
    with engine.open_archive(src) as archive:
        os.sync()
        err.print("backup (full) ...")
        full = backup(archive, work / "backup")
        rows_out["backup (full)"] = {"MB": full.bytes_copied / 1e6,
                                     "MB/s": full.bytes_copied / full.seconds / 1e6}  # fmt: skip
        fill(archive, 2, max(1, slices * more // 100), rows)
        os.sync()
        err.print("backup (incremental) ...")
        inc = backup(archive, work / "backup")
        rows_out["backup (incremental)"] = {"MB": inc.bytes_copied / 1e6,
                                            "MB/s": inc.bytes_copied / inc.seconds / 1e6,
                                            "seconds": inc.seconds}  # fmt: skip
    os.sync()
    err.print("restore ...")
    restored = work / "restored"
    t0 = time.perf_counter()
    restore(work / "backup", restored)
    seconds = time.perf_counter() - t0
    written = sum(p.stat().st_size for p in restored.rglob("*") if p.is_file())
    rows_out["restore"] = {"MB": written / 1e6, "MB/s": written / seconds / 1e6}
    for figures in rows_out.values():
        figures["of disk"] = figures["MB/s"] / (disk / 1e6)
    return {"archive_bytes": size, "instances": inc.instances, "rows": rows_out}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="backup_bench.py", description=__doc__.split("\n")[0])
    p.add_argument("--slices", type=int, default=1000, help="CT slices in the archive")
    p.add_argument("--rows", type=int, default=512, help="rows and columns of a slice")
    p.add_argument("--more", type=int, default=10, help="percent more slices before the "
                   "incremental backup")  # fmt: skip
    p.add_argument("--work-dir", type=Path, help="where the archive and copies go (a temp dir)")
    p.add_argument("--json", type=Path, help="write the results here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    parent = args.work_dir or Path(os.environ.get("TMPDIR", "/tmp"))
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(os.path.realpath(parent)) / f"pacs-backup-bench-{os.getpid()}"
    work.mkdir()
    try:
        result = measure(work, args.slices, args.more, args.rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    title = (f"Backup and restore of {result['instances']:,} CT slices "
             f"({result['archive_bytes'] / 1e6:,.0f} MB)")  # fmt: skip
    cells = [[step, f"{f['MB']:,.1f}", f"{f['MB/s']:,.0f}", f"{f['of disk']:.2f}x"]
             for step, f in result["rows"].items()]  # fmt: skip
    out.print(rich_table(["step", "MB", "MB/s", "of disk"], cells, title))
    if args.json:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
