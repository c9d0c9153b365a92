"""Fill an archive fast with many small instances, or one big CT series, over C-STORE.

``web_compare.py`` and ``scale.py`` need the same instances in every target:
they are written once as Part 10 files (small ones: 8x8 CT slices in studies
of varied patients, dates and accession numbers from
:func:`engine.synthetic.plan_study`), then sent to each target by several
DCMTK ``storescu`` processes at once (``+sd`` folder scans, ``TCP_NODELAY=1``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from peers import CALLING_AE, Peer, dcmtk_env

if TYPE_CHECKING:
    from engine.synthetic import StudyPlan

STORESCU = "/usr/bin/storescu"
SMALL_ROWS = 8  # pixels per side of a "small" instance
SEND_TIMEOUT_S = 6 * 3600.0
SMALL_STREAM = 1  # the middle word of a small study's seed


def small_study_plan(seed: int, k: int) -> StudyPlan:
    """Patient, dates and UIDs of small study `k`.

    The seed is ``[seed, SMALL_STREAM, k]``: numpy ignores trailing zeros in
    a seed sequence, so ``(seed, 0)`` would give study 0 the same UIDs as the
    CT series that ``ct_series(seed, ...)`` draws from ``default_rng(seed)``.
    """
    import numpy as np

    from engine.synthetic import plan_study

    return plan_study(np.random.default_rng([seed, SMALL_STREAM, k]))


def _write_studies(folder: str, seed: int, first: int, count: int, per_study: int) -> int:
    """Write `count` small studies (`per_study` slices each); return the bytes written."""
    from engine.synthetic import ct_series, encode

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    nbytes = 0
    for k in range(first, first + count):
        study = small_study_plan(seed, k)
        for i, ds in enumerate(ct_series(seed + k, per_study, rows=SMALL_ROWS,
                                         columns=SMALL_ROWS, study=study)):  # fmt: skip
            data = encode(ds)
            (path / f"{k:07d}-{i:03d}.dcm").write_bytes(data)
            nbytes += len(data)
    return nbytes


def write_small(root: Path, *, seed: int, first_study: int, studies: int, per_study: int,
                folders: int) -> tuple[list[Path], int]:  # fmt: skip
    """Write studies ``first_study .. first_study + studies - 1`` into `folders` folders.

    Returns the folders and the bytes written. Study ``k`` is the same bytes for
    the same `seed` whatever the chunking, so a resumed run sends what a
    single run would have.
    """
    folders = max(1, min(folders, studies))
    bounds = [first_study + studies * j // folders for j in range(folders + 1)]
    jobs = [(str(root / f"part{j:02d}"), seed, bounds[j], bounds[j + 1] - bounds[j], per_study)
            for j in range(folders)]  # fmt: skip
    if studies * per_study >= 500 and folders > 1:
        with ProcessPoolExecutor(max_workers=min(folders, os.cpu_count() or 1)) as pool:
            sizes = list(pool.map(_write_studies, *zip(*jobs, strict=True)))
    else:
        sizes = [_write_studies(*job) for job in jobs]
    return [Path(job[0]) for job in jobs], sum(sizes)


def write_ct_series(folder: Path, *, seed: int, slices: int, rows: int = 512) -> int:
    """Write one CT series of `slices` slices of `rows` x `rows`; return the bytes written."""
    from engine.synthetic import ct_series, encode

    folder.mkdir(parents=True, exist_ok=True)
    nbytes = 0
    for i, ds in enumerate(ct_series(seed, slices, rows=rows, columns=rows)):
        data = encode(ds)
        (folder / f"{i:05d}.dcm").write_bytes(data)
        nbytes += len(data)
    return nbytes


def send(peer: Peer, folders: Sequence[Path], *, processes: int = 4,
         log_dir: Path) -> tuple[float, list[str]]:  # fmt: skip
    """C-STORE every file under `folders` to `peer` from `processes` storescu at once.

    Returns the wall seconds and the failures (a non-zero storescu exit, with
    the end of its output).
    """
    assert os.access(STORESCU, os.X_OK), f"{STORESCU} missing: apt-get install dcmtk"
    groups = [list(folders[i::processes]) for i in range(processes)]
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    t0 = time.perf_counter()
    for i, group in enumerate(g for g in groups if g):
        log = log_dir / f"storescu-{peer.name}-{i}.log"
        cmd = [STORESCU, "-aet", CALLING_AE, "-aec", peer.ae_title, "+sd", "127.0.0.1",
               str(peer.dicom_port), *map(str, group)]  # fmt: skip
        with log.open("wb") as f:
            procs.append((subprocess.Popen(cmd, env=dcmtk_env(), stdin=subprocess.DEVNULL,
                                           stdout=f, stderr=subprocess.STDOUT), log))  # fmt: skip

    def kill_all() -> None:
        for p, _ in procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()

    timer = threading.Timer(SEND_TIMEOUT_S, kill_all)
    timer.start()
    failures = []
    try:
        for proc, log in procs:
            if proc.wait() != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                failures.append(f"storescu exited with {proc.returncode}: " + " | ".join(tail))
    finally:
        timer.cancel()
    return time.perf_counter() - t0, failures
