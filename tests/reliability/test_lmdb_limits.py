"""LMDB's limits: a tiny map grows under load with no error reaching a peer; no leaked reader slot.

The index starts with a 64 KiB map (``archive.index_map_bytes``) under a
two-worker server while three DCMTK storescu store and three findscu query
at once: every store must be answered Success and every query complete,
and the map must have grown many times. A process killed inside a read
transaction leaves its slot in LMDB's reader table; opening
the archive clears it (``reader_check``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb

import engine
from tests._helpers import ROOT, read, small_ct_bytes
from tests.net._support import run_dcmtk, storescu
from tests.reliability._server import KillableServer
from tests.reliability.conftest import scaled
from tests.reliability.test_kill9 import dataset_part

TINY_MAP_BYTES = 1 << 16
SENDERS = 3
PER_SENDER = scaled(60, 400)


def test_a_tiny_index_map_grows_under_concurrent_readers_and_writers_without_a_peer_error(
    tmp_path: Path, figure: Callable[[str, Any], None]
) -> None:
    files = tmp_path / "in"
    files.mkdir()
    batches = []
    for n in range(SENDERS):
        batch = [files / f"{n}-{i}.dcm" for i in range(PER_SENDER)]
        for i, path in enumerate(batch):
            path.write_bytes(small_ct_bytes(n * 10_000 + i, 16, 16))
        batches.append(batch)
    srv = KillableServer(tmp_path, workers=2,
                         config=f"[archive]\nindex_map_bytes = {TINY_MAP_BYTES}\n")  # fmt: skip
    srv.start()
    done = threading.Event()
    queries: list[subprocess.CompletedProcess[str]] = []
    stores: list[subprocess.CompletedProcess[str]] = []

    def query() -> None:
        while not done.is_set():
            keys = ["-k", "QueryRetrieveLevel=IMAGE", "-k", "SOPInstanceUID", "-k", "Modality=CT"]
            queries.append(
                run_dcmtk("findscu", "-S", "-aec", "PACS", *keys, "127.0.0.1", str(srv.port))
            )

    def store(batch: list[Path]) -> None:
        stores.append(storescu(srv.port, batch))

    try:
        senders = [threading.Thread(target=store, args=(b,)) for b in batches]
        readers = [threading.Thread(target=query) for _ in range(SENDERS)]
        for t in [*senders, *readers]:
            t.start()
        for t in senders:
            t.join(600)
        done.set()
        for t in readers:
            t.join(300)
        assert srv.stop() == 0
    finally:
        srv.kill()
    for done_store in stores:  # storescu exits non-zero when a C-STORE is not Success
        assert done_store.returncode == 0, done_store.stdout + done_store.stderr
    assert queries and all(q.returncode == 0 for q in queries), [q.stderr for q in queries]
    assert "Error" not in srv.log() and "failed" not in srv.log(), srv.log()[-2000:]
    # opened small: LMDB then takes the size the workers grew the map to
    with engine.open_archive(srv.archive, index_map_bytes=TINY_MAP_BYTES) as archive:
        map_size = archive.env.env.info()["map_size"]
        for path in [p for b in batches for p in b]:
            uid = read(path.read_bytes(), stop_before_pixels=True).SOPInstanceUID
            assert dataset_part(archive.get(uid)) == dataset_part(path.read_bytes())
        assert archive.stats()["instances"] == SENDERS * PER_SENDER
        assert archive.verify().ok
    assert map_size > TINY_MAP_BYTES * 4, "the map never had to grow: the test proves nothing"
    figure("stores acked", SENDERS * PER_SENDER)
    figure("queries", len(queries))
    figure("map grew from KiB", TINY_MAP_BYTES >> 10)
    figure("map grew to KiB", map_size >> 10)


_READER = r"""
import os, sys, time
import engine
archive = engine.open_archive(sys.argv[1])
with archive.env.read() as txn:
    archive.catalog.location(txn, "1.2.3")
    os.write(1, b"reading\n")
    time.sleep(3600)
"""


def _reader_pids(env: lmdb.Environment) -> set[int]:
    """Pids in LMDB's reader table ("pid thread txnid" lines after a header)."""
    lines = env.readers().splitlines()[1:]
    return {int(line.split()[0]) for line in lines if line.split()}


def _run(code: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip


def test_a_reader_killed_mid_transaction_does_not_leak_its_reader_slot(
    tmp_path: Path, figure: Callable[[str, Any], None]
) -> None:
    """The slot outlives its process while others keep the environment open (a running server);
    the next process to open the archive clears it."""
    engine.open_archive(tmp_path).close()
    # another process of the server: keeps the lock file (and its reader table) alive
    server = lmdb.open(str(tmp_path / "index"), max_dbs=16)
    try:
        with _run(_READER, str(tmp_path)) as reader:
            assert reader.stdout is not None
            assert reader.stdout.readline() == b"reading\n"
            assert reader.pid in _reader_pids(server)
            reader.send_signal(signal.SIGKILL)
            reader.wait(30)
        assert reader.pid in _reader_pids(server), "nothing to clear: the test proves nothing"
        with _run("import engine, sys; engine.open_archive(sys.argv[1]).close()",
                  str(tmp_path)) as opener:  # fmt: skip
            assert opener.wait(60) == 0
        assert reader.pid not in _reader_pids(server), "the dead reader's slot leaked"
    finally:
        server.close()
    figure("stale reader slots left after open", 0)
