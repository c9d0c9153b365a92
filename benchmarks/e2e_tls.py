"""What TLS costs an ingest: DCMTK ``storescu`` sending a CT series to ``pacs serve``, in clear
and over TLS (client certificate, BCP 195), alternately, in the same run.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/e2e_tls.py --instances 200 --repeats 3

Both runs use one worker, ``durability = "none"`` (the disk would drown the
difference) and the storage fast path; the certificates come from
tests/security/_pki.py. Each line is one run: wall time of ``storescu``,
instances/s, MB/s, and the worker's CPU time per instance (from /proc: the
figure that a loaded machine disturbs least); the checks are storescu's exit code and the archive's
instance count.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import open_archive  # noqa: E402
from engine.synthetic import ct_series, encode  # noqa: E402
from tests.net._support import Server  # noqa: E402
from tests.security._pki import Pki, make_pki  # noqa: E402
from tests.security.conftest import TlsServer  # noqa: E402


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of `pids` so far (/proc/PID/stat fields 14 and 15)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def one_run(work: Path, files: list[str], pki: Pki, tls: bool) -> tuple[float, float]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config = '[archive]\ndurability = "none"\n'
    if tls:
        config += (f'[tls]\ncert = "{pki.server.cert}"\nkey = "{pki.server.key}"\n'
                   f'ca = "{pki.ca.path}"\n')  # fmt: skip
    server = TlsServer(work, pki, workers=1, config=config) if tls else Server(
        work, workers=1, config=config)  # fmt: skip
    server.start()
    try:
        extra = ["+tls", pki.client.key, pki.client.cert, "+cf", pki.ca.path] if tls else []
        workers = server.worker_pids()
        cpu = _cpu_s(workers)
        start = time.perf_counter()
        r = subprocess.run(["/usr/bin/storescu", "-aet", "STORESCU", "-aec", "PACS", *extra,
                            "127.0.0.1", str(server.port), *files], capture_output=True,
                           text=True, env=dict(os.environ, TCP_NODELAY="1"))  # fmt: skip
        seconds = time.perf_counter() - start
        cpu = _cpu_s(workers) - cpu
        assert r.returncode == 0, r.stderr[-2000:]
    finally:
        assert server.stop() == 0, server.log()[-2000:]
    with open_archive(server.archive) as archive:
        assert archive.stats()["instances"] == len(files)
    return seconds, cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--instances", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="e2e-tls-") as tmp:
        root = Path(tmp)
        corpus = root / "corpus"
        corpus.mkdir()
        for i, ds in enumerate(ct_series(7, args.instances)):
            (corpus / f"{i:05d}.dcm").write_bytes(encode(ds))
        files = sorted(map(str, corpus.iterdir()))
        mb = sum(os.path.getsize(f) for f in files) / 1e6
        pki = make_pki(root / "pki")
        for rep in range(args.repeats):
            for tls in (False, True):
                s, cpu = one_run(root / f"run-{rep}-{tls}", files, pki, tls)
                print(f"{'TLS  ' if tls else 'clear'} {rep}: {len(files)} instances in {s:.2f} s,"
                      f" {len(files) / s:.0f} instances/s, {mb / s:.0f} MB/s, server CPU "
                      f"{cpu / len(files) * 1e3:.2f} ms/instance", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
