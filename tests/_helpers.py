"""Shared test helpers: small generated instances, dataset comparison, a crashing child writer.

The child writer (:func:`child_main`) runs in a real subprocess
(``python -c "from tests._helpers import child_main; child_main()" ...``):
it stores generated CT instances and prints one line per event, and it can
kill itself with SIGKILL at a named point of the write path. Those points are
installed here, in the child only, by wrapping the engine's own methods, so
that the engine needs no test hooks.
"""

from __future__ import annotations

import copy
import io
import os
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from engine.synthetic import ct_series, encode

ROOT = Path(__file__).resolve().parent.parent

# -- generated instances --------------------------------------------------------


def small_ct(seed: int, rows: int = 16, columns: int = 16) -> Dataset:
    """One generated CT instance; the same seed gives the same bytes."""
    return next(ct_series(seed, 1, rows=rows, columns=columns))


def small_ct_bytes(seed: int, rows: int = 16, columns: int = 16) -> bytes:
    return encode(small_ct(seed, rows, columns))


def series_datasets(seed: int, slices: int, **kw: Any) -> list[Dataset]:
    return list(ct_series(seed, slices, rows=kw.pop("rows", 4), columns=kw.pop("columns", 4), **kw))


def read(data: bytes, **kw: Any) -> Dataset:
    """pydicom's reading of Part 10 bytes, its warnings kept out of the test's way."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), **kw)


# -- comparison -----------------------------------------------------------------


def _values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, Sequence) or isinstance(b, Sequence):
        if len(a) != len(b):
            return False
        return all(dataset_diff(x, y) is None for x, y in zip(a, b, strict=True))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 -- pydicom values compare in odd ways
        return repr(a) == repr(b)


def dataset_diff(
    expected: Dataset, got: Dataset, *, skip: frozenset[int] = frozenset()
) -> str | None:
    """None when both hold the same elements, VRs and values; else the first difference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # a Dataset iterates its elements, not its tags: hence .keys()
        e_tags = {int(t) for t in expected.keys()} - skip  # noqa: SIM118
        g_tags = {int(t) for t in got.keys()} - skip  # noqa: SIM118
        if e_tags != g_tags:
            missing = sorted(f"{t:08X}" for t in e_tags - g_tags)
            extra = sorted(f"{t:08X}" for t in g_tags - e_tags)
            return f"tags differ: missing {missing}, extra {extra}"
        for tag in sorted(e_tags):
            a, b = expected[tag], got[tag]
            if a.VR != b.VR:
                return f"{tag:08X}: VR {a.VR} != {b.VR}"
            if not _values_equal(a.value, b.value):
                return f"{tag:08X} ({a.keyword}): {str(a.value)[:80]!r} != {str(b.value)[:80]!r}"
    return None


def assert_same_instance(expected: bytes, got: bytes) -> None:
    """Same File Meta, same elements and values, Pixel Data bit-exact, same transfer syntax."""
    src, out = read(expected), read(got)
    assert out.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
    assert dataset_diff(src.file_meta, out.file_meta) is None, dataset_diff(
        src.file_meta, out.file_meta
    )
    diff = dataset_diff(src, out)
    assert diff is None, diff
    for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):
        if tag in src:
            assert bytes(out[tag].value) == bytes(src[tag].value), f"{tag:08X} differs"


def deep_copy(ds: Dataset) -> Dataset:
    return copy.deepcopy(ds)


# -- segment files ----------------------------------------------------------------


def segment_files(archive_path: Path) -> list[Path]:
    return sorted((Path(archive_path) / "segments").glob("*.seg"))


def segment_sizes(archive_path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in segment_files(archive_path)}


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


# -- the crashing child -------------------------------------------------------------

# Where the child may kill itself, in write-path order.
CRASH_POINTS = (
    "segment_created",  # the segment file exists, its header is not written yet
    "torn_append",  # half of the record is written, then SIGKILL
    "after_append",  # the record is in the file, not yet synced nor indexed
    "after_fsync",  # the record is durable, the index does not know it yet
    "after_index",  # durable and indexed, store() has not returned yet
)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install_crash_point(point: str, at: int) -> None:
    """Kill this process the `at`-th time (1-based) the write path passes `point`."""
    from engine import writer
    from engine.storage import segment

    hits = [0]
    lock = threading.Lock()

    def due() -> bool:
        with lock:
            hits[0] += 1
            return hits[0] == at

    if point == "segment_created":
        original_pack = segment.pack_segment_header

        def pack(segment_id: int) -> bytes:
            if due():
                _die()
            return original_pack(segment_id)

        segment.pack_segment_header = pack  # type: ignore[assignment]
    elif point in ("torn_append", "after_append"):
        original_append = segment.SegmentWriter.append

        def append(self: Any, parts: Any) -> int:
            if point == "torn_append" and due():
                data = b"".join(bytes(p) for p in parts)
                os.pwrite(self._fd, data[: len(data) // 2], self.end)
                _die()
            offset = original_append(self, parts)
            if point == "after_append" and due():
                _die()
            return offset

        segment.SegmentWriter.append = append  # type: ignore[method-assign]
    elif point == "after_fsync":
        original_sync = segment.SegmentWriter.sync

        def sync(self: Any) -> int:
            end = original_sync(self)
            if due():
                _die()
            return end

        segment.SegmentWriter.sync = sync  # type: ignore[method-assign]
    elif point == "after_index":
        original_flush = writer.WritePath._flush

        def flush(self: Any, batch: Any) -> None:
            original_flush(self, batch)
            if batch and due():
                _die()

        writer.WritePath._flush = flush  # type: ignore[method-assign]
    else:
        raise ValueError(f"unknown crash point {point}")


def child_main(argv: list[str] | None = None) -> None:
    """Store generated instances in a loop, printing ``ack SEED UID`` once each store returned.

    argv: archive seed_base count threads rows point at durability
    (count 0: until killed; point "none": no crash point).
    """
    args = sys.argv[1:] if argv is None else argv
    path, seed_base, count, threads, rows, point, at, durability = args
    import engine
    import engine.archive

    out_lock = threading.Lock()

    def say(line: str) -> None:
        with out_lock:
            os.write(1, (line + "\n").encode())

    say("ready")
    if sys.stdin.readline().strip() != "go":
        return
    if point != "none":
        _install_crash_point(point, int(at))
    archive = engine.open_archive(path, durability=durability)
    say("open")
    counter = iter(range(int(seed_base), int(seed_base) + (int(count) or 1 << 40)))
    next_lock = threading.Lock()

    def work() -> None:
        while True:
            with next_lock:
                seed = next(counter, None)
            if seed is None:
                return
            data = small_ct_bytes(seed, int(rows), int(rows))
            uid = read(data, stop_before_pixels=True).SOPInstanceUID
            say(f"begin {seed} {uid}")
            archive.store(data)
            say(f"ack {seed} {uid}")

    workers = [threading.Thread(target=work) for _ in range(int(threads))]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    archive.close()
    say("done")


class Child:
    """A child writer process; start it, let it go, kill it, read what it said."""

    def __init__(
        self,
        archive: Path,
        seed_base: int,
        *,
        count: int = 0,
        threads: int = 1,
        rows: int = 16,
        point: str = "none",
        at: int = 1,
        durability: str = "fsync",
    ) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        code = "from tests._helpers import child_main; child_main()"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                code,
                str(archive),
                str(seed_base),
                str(count),
                str(threads),
                str(rows),
                point,
                str(at),
                durability,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        self._ready = False

    def _wait_ready(self) -> None:
        """The child has imported everything; started lazily so that imports overlap other work."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line != b"ready\n":
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise RuntimeError(f"child did not start: {line!r} {err}")
        self._ready = True

    def go(self) -> None:
        if not self._ready:
            self._wait_ready()
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)

    def finish(self, timeout: float = 60) -> tuple[int, list[str], str]:
        """Wait for the child; return (returncode, stdout lines, stderr)."""
        out, err = self.proc.communicate(timeout=timeout)
        lines = out.decode().splitlines()
        return self.proc.returncode, lines if self._ready else lines[1:], err.decode()


def parse_events(lines: list[str]) -> tuple[dict[int, str], dict[int, str]]:
    """({seed: uid} begun, {seed: uid} acknowledged) from a child's stdout."""
    begun: dict[int, str] = {}
    acked: dict[int, str] = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("begin", "ack"):
            (begun if parts[0] == "begin" else acked)[int(parts[1])] = parts[2]
    return begun, acked


def iter_find(archive: Any, level: str, query: dict[str, str]) -> Iterator[Dataset]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield from archive.find(level, query)
