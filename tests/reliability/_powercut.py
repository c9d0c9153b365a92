"""A recording I/O layer and the crash states a power cut could leave, for the power-loss tests.

:class:`Recorder` swaps the functions of :mod:`engine.storage._io` for ones
that do the real call and log it: writes and truncations of segment files,
their fsyncs, file creations and removals, directory fsyncs. LMDB cannot be
intercepted, so every index commit that returns is logged with a copy of the
environment taken right then ("the index is at its last committed
transaction whose commit returned before the cut").

:func:`crash_state` replays the log up to a cut and builds what a disk could
hold after losing power there: every write since its file's last fsync is
kept, dropped, or torn at 512 B or 4 KiB sectors (any subset: the disk may
reorder them); a file created or removed since its directory's last fsync
may or may not have its directory entry; the index is the last snapshot, or
the one before it (``metasync`` is off: the last commit's meta page may be
lost).
"""

from __future__ import annotations

import os
import random
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.index.env import IndexEnv
from engine.storage import _io

SECTORS = (512, 4096)


@dataclass
class Op:
    kind: str  # create write truncate sync dirsync unlink index indexsync ack deleting deleted
    path: str = ""
    offset: int = 0
    data: bytes = b""
    uid: str = ""


class Recorder:
    """Logs every storage call and index commit of this process while installed."""

    def __init__(self, index_dir: Path, snapshots: Path) -> None:
        self.ops: list[Op] = []
        self.index_dir = str(index_dir)
        self.snapshots = snapshots
        self._paths: dict[int, str] = {}
        self._lock = threading.RLock()

    def log(self, op: Op) -> None:
        with self._lock:
            self.ops.append(op)

    @contextmanager
    def installed(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
        real = {n: getattr(_io, n) for n in ("create", "open_rw", "pwritev", "pwrite",
                                              "ftruncate", "fdatasync", "fsync", "unlink",
                                              "fsync_dir")}  # fmt: skip
        rec = self

        def create(path: Any) -> int:
            with rec._lock:
                fd = real["create"](path)
                rec._paths[fd] = str(path)
                rec.ops.append(Op("create", str(path)))
            return fd

        def open_rw(path: Any) -> int:
            fd = real["open_rw"](path)
            rec._paths[fd] = str(path)
            return fd

        def pwritev(fd: int, parts: Any, offset: int) -> int:
            with rec._lock:
                n = real["pwritev"](fd, parts, offset)
                data = b"".join(bytes(p) for p in parts)[:n]
                rec.ops.append(Op("write", rec._paths[fd], offset, data))
            return n

        def pwrite(fd: int, data: Any, offset: int) -> int:
            with rec._lock:
                n = real["pwrite"](fd, data, offset)
                rec.ops.append(Op("write", rec._paths[fd], offset, bytes(data)[:n]))
            return n

        def ftruncate(fd: int, length: int) -> None:
            with rec._lock:
                real["ftruncate"](fd, length)
                rec.ops.append(Op("truncate", rec._paths[fd], length))

        def sync(name: str) -> Any:
            def do(fd: int) -> None:
                start = len(rec.ops)  # only what was written before the call is covered
                real[name](fd)
                rec.log(Op("sync", rec._paths[fd], start))

            return do

        def unlink(path: Any) -> None:
            with rec._lock:
                real["unlink"](path)
                rec.ops.append(Op("unlink", str(path)))

        def fsync_dir(path: Any) -> None:
            start = len(rec.ops)
            real["fsync_dir"](path)
            rec.log(Op("dirsync", str(path), start))

        real_write = IndexEnv.write

        def write(env: IndexEnv, fn: Any) -> Any:
            result = real_write(env, fn)
            if str(env.path) == rec.index_dir:
                with rec._lock:
                    snap = rec.snapshots / str(len(rec.ops))
                    snap.mkdir(parents=True)
                    env.env.copy(str(snap))
                    rec.ops.append(Op("index", str(snap)))
            return result

        for name, fn in (("create", create), ("open_rw", open_rw), ("pwritev", pwritev),
                         ("pwrite", pwrite), ("ftruncate", ftruncate),
                         ("fdatasync", sync("fdatasync")), ("fsync", sync("fsync")),
                         ("unlink", unlink), ("fsync_dir", fsync_dir)):  # fmt: skip
            monkeypatch.setattr(_io, name, fn)
        real_sync = IndexEnv.sync

        def index_sync(env: IndexEnv) -> None:
            real_sync(env)
            if str(env.path) == rec.index_dir:
                rec.log(Op("indexsync"))

        monkeypatch.setattr(IndexEnv, "write", write)
        monkeypatch.setattr(IndexEnv, "sync", index_sync)
        try:
            yield self
        finally:
            monkeypatch.undo()


@dataclass
class _File:
    created_at: int
    durable: bytearray = field(default_factory=bytearray)
    pending: list[tuple[int, Op]] = field(default_factory=list)
    entry_durable: bool = False  # its creation reached the directory on disk
    removed_at: int | None = None
    removal_durable: bool = False


@dataclass
class CrashState:
    files: dict[str, bytes | None]  # path -> content (None: absent)
    index: str | None  # snapshot folder, or None: no index commit had returned
    acked: set[str]
    deleted: set[str]
    deleting: set[str]  # a deletion begun and not yet acknowledged: either outcome is right


def _apply(buf: bytearray, op: Op, keep: list[tuple[int, int]] | None = None) -> None:
    if op.kind == "truncate":
        del buf[op.offset :]
        return
    spans = keep if keep is not None else [(0, len(op.data))]
    for lo, hi in spans:
        at = op.offset + lo
        if len(buf) < at:
            buf.extend(bytes(at - len(buf)))  # a hole reads as zeros
        buf[at : at + hi - lo] = op.data[lo:hi]


def _sectors_kept(op: Op, rng: random.Random) -> list[tuple[int, int]]:
    """A torn write: a random subset of its sectors (aligned on the file), in any order."""
    size = rng.choice(SECTORS)
    spans, lo = [], 0
    while lo < len(op.data):
        hi = min(len(op.data), ((op.offset + lo) // size + 1) * size - op.offset)
        if rng.random() < 0.5:
            spans.append((lo, hi))
        lo = hi
    return spans


def crash_state(ops: list[Op], cut: int, mode: str, rng: random.Random | None = None,
                drop: frozenset[int] = frozenset()) -> CrashState:  # fmt: skip
    """What the disk may hold after a power cut right after ``ops[cut - 1]``.

    `mode`: ``"synced"`` keeps only what was fsynced, ``"all"`` keeps every
    write (a process crash), ``"random"`` drops, tears and reorders (with
    `rng`), ``"drop"`` keeps every write but those whose op index is in `drop`.
    """
    rng = rng or random.Random(0)
    files: dict[str, _File] = {}
    snaps: list[str] = []
    acked: set[str] = set()
    deleted: set[str] = set()
    deleting: set[str] = set()
    pinned = 0  # snapshots made durable by an explicit index sync
    for i, op in enumerate(ops[:cut]):
        if op.kind == "create":
            files[op.path] = _File(i)
        elif op.kind in ("write", "truncate"):
            files[op.path].pending.append((i, op))
        elif op.kind == "sync":  # covers what was written before the call began
            f = files[op.path]
            for _, p in (done := [q for q in f.pending if q[0] < op.offset]):
                _apply(f.durable, p)
            f.pending = f.pending[len(done) :]
        elif op.kind == "dirsync":
            for path, f in files.items():
                if os.path.dirname(path) == op.path.rstrip("/"):
                    f.entry_durable |= f.created_at < op.offset
                    f.removal_durable |= f.removed_at is not None and f.removed_at < op.offset
        elif op.kind == "unlink":
            files[op.path].removed_at = i
        elif op.kind == "index":
            snaps.append(op.path)
        elif op.kind == "indexsync":
            pinned = len(snaps)
        elif op.kind == "ack":
            acked.add(op.uid)
            deleted.discard(op.uid)
        elif op.kind == "deleting":
            deleting.add(op.uid)
        elif op.kind == "deleted":
            deleting.discard(op.uid)
            deleted.add(op.uid)
    out: dict[str, bytes | None] = {}
    for path, f in files.items():
        buf = bytearray(f.durable)
        for i, p in f.pending:
            if mode == "all" or (mode == "drop" and i not in drop):
                _apply(buf, p)
            elif mode == "random":
                choice = rng.random()
                if p.kind == "truncate":
                    if choice < 0.5:
                        _apply(buf, p)
                elif choice < 0.35:
                    _apply(buf, p)
                elif choice < 0.7:
                    _apply(buf, p, _sectors_kept(p, rng))
        keep_all = mode in ("all", "drop")
        if f.removed_at is not None:
            gone = f.removal_durable or keep_all or (mode == "random" and rng.random() < 0.5)
        else:
            gone = not (f.entry_durable or keep_all or (mode == "random" and rng.random() < 0.5))
        out[path] = None if gone else bytes(buf)
    index = snaps[-1] if snaps else None
    if mode == "random" and len(snaps) > max(1, pinned) and rng.random() < 0.3:
        index = snaps[-2]  # metasync off: the last commit's meta page did not reach the disk
    return CrashState(out, index, acked, deleted, deleting)


def materialise(state: CrashState, source_root: Path, target_root: Path) -> None:
    """Write a crash state as an archive folder at `target_root`."""
    shutil.rmtree(target_root, ignore_errors=True)
    (target_root / "segments").mkdir(parents=True)
    for path, content in state.files.items():
        if content is not None:
            rel = Path(path).relative_to(source_root)
            (target_root / rel).write_bytes(content)
    if state.index is not None:
        shutil.copytree(state.index, target_root / "index")
