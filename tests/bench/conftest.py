"""Peers for the `pacs bench` tests: our `pacs serve`, DCMTK's storescp and dcmqrscp, a corpus.

Each peer is a real process on free loopback ports, started once per
session. The corpus is small (two CT studies of six 512x512 slices and a
four-slice MR study) so that the whole module stays quick on a loaded
2-core machine; ENGINE_LONG_TESTS=1 makes it larger.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine import dimse
from engine.bench.corpus import CorpusSpec, write_corpus
from engine.bench.target import Target
from engine.cli import main
from tests.net._support import Server, dcmtk, dcmtk_env, free_port

LONG = bool(os.environ.get("ENGINE_LONG_TESTS"))
SLICES = 40 if LONG else 6
MOVE_DEST = "BENCHRECV"
START_TIMEOUT_S = 60.0
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


@dataclass(frozen=True, slots=True)
class Corpus:
    root: Path
    manifest: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Peer:
    """A running archive: the `--target` text, its DICOMweb root, its C-MOVE receiver port."""

    target: str
    http: str | None
    move_port: int
    store_dir: Path | None = None


def run_bench(tmp: Path, *argv: str) -> tuple[int, dict[str, Any]]:
    """`pacs bench ARGV --json OUT` in this process; (exit code, the result file)."""
    out = tmp / f"result-{time.monotonic_ns()}.json"
    code = main(["bench", *argv, "--json", str(out)])
    assert out.is_file(), f"pacs bench {argv} wrote no result (exit {code})"
    return code, orjson.loads(out.read_bytes())


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("bench-corpus")
    manifest = write_corpus(
        root, CorpusSpec(seed=7, studies=3, modality="MIXED", slices=SLICES), jobs=2
    )
    return Corpus(root, manifest)


@pytest.fixture(scope="session")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    """Our server with DICOMweb on, knowing the bench's C-MOVE receiver."""
    tmp = tmp_path_factory.mktemp("bench-pacs")
    move_port = free_port()
    config = f'[remotes.{MOVE_DEST}]\nhost = "127.0.0.1"\nport = {move_port}\n'
    server = Server(tmp, workers=2, config=config, http=True).start()
    yield Peer(
        f"PACS@127.0.0.1:{server.port}", f"http://127.0.0.1:{server.http_port}/dicom-web", move_port
    )
    assert server.stop() == 0, server.log()


def _answers(port: int, called: str) -> bool:
    """An association with `called` on `port` can be made (Verification proposed)."""
    try:
        assoc = dimse.Association.open(
            Target(called, "127.0.0.1", port, calling="BENCHTEST"),
            [(VERIFICATION, [EXPLICIT_VR_LE])],
        )
    except (OSError, dimse.DimseError):
        return False
    assoc.release()
    return True


def _start(cmd: list[str], port: int, called: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=dcmtk_env())
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")
        if _answers(port, called):
            return proc
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"{cmd[0]} took no association on {port}:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def dcmqrscp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    """DCMTK's dcmqrscp with a database in tmp and the bench's receiver in its host table."""
    tmp = tmp_path_factory.mktemp("bench-dcmqrscp")
    port, move_port = free_port(), free_port()
    (tmp / "db").mkdir()
    config = tmp / "dcmqrscp.cfg"
    config.write_text(f"""\
NetworkTCPPort  = {port}
MaxPDUSize      = 16384
MaxAssociations = 16
HostTable BEGIN
benchrecv = ({MOVE_DEST}, 127.0.0.1, {move_port})
HostTable END
VendorTable BEGIN
VendorTable END
AETable BEGIN
QRSCP   {tmp / "db"}   RW (2000, 4096mb)   ANY
AETable END
""")
    proc = _start([dcmtk("dcmqrscp"), "-c", str(config)], port, "QRSCP", tmp / "dcmqrscp.log")
    yield Peer(f"QRSCP@127.0.0.1:{port}", None, move_port)
    _stop(proc)


@pytest.fixture(scope="session")
def storescp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    """DCMTK's storescp writing one file per instance into tmp (+xa: every syntax it knows)."""
    tmp = tmp_path_factory.mktemp("bench-storescp")
    port = free_port()
    (tmp / "in").mkdir()
    proc = _start(
        [dcmtk("storescp"), "--fork", "+xa", "-od", str(tmp / "in"), str(port)],
        port,
        "STORESCP",
        tmp / "storescp.log",
    )
    yield Peer(f"STORESCP@127.0.0.1:{port}", None, 0, tmp / "in")
    _stop(proc)


@pytest.fixture(scope="session")
def loaded_pacs(pacs: Peer, corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Peer:
    code, result = run_bench(
        tmp_path_factory.mktemp("load"),
        "ingest",
        "--target",
        pacs.target,
        "--sender",
        "internal",
        str(corpus.root),
    )
    assert code == 0 and result["metrics"]["instances"]["value"] == corpus.manifest["instances"]
    return pacs


@pytest.fixture(scope="session")
def loaded_dcmqrscp(
    dcmqrscp: Peer, corpus: Corpus, tmp_path_factory: pytest.TempPathFactory
) -> Peer:
    # one association: dcmqrscp's forked children name files from the clock, and two storing
    # the same SOP class at the same moment collide (C000 "Index database error")
    code, result = run_bench(
        tmp_path_factory.mktemp("load"),
        "ingest",
        "--target",
        dcmqrscp.target,
        "--sender",
        "storescu",
        "--associations",
        "1",
        str(corpus.root),
    )
    assert code == 0 and result["metrics"]["instances"]["value"] == corpus.manifest["instances"]
    return dcmqrscp
