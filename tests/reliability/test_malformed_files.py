"""A thousand malformed files through `pacs ingest`, C-STORE and STOW-RS: an error each.

The files (tests/reliability/_mutate.py) are mutated from real and generated
instances: cut anywhere, bits flipped, lengths past the end, undefined
lengths where PS3.5 forbids them, bogus VRs, sequences nested 20,000 deep or
never delimited, broken File Meta, invalid UIDs, 65535 x 65535 images,
deflate bombs. Each must be refused with an engine error that says why (or
stored, when the mutation left it valid), the process must stay within a
small multiple of its memory, and the good instances stored before must
still be there, bit-exact, with `pacs verify` clean.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import engine
from engine.errors import InvalidInstanceError
from tests._helpers import ROOT
from tests.net._support import Server, dcmtk, dcmtk_env, echo
from tests.reliability._intact import (
    assert_intact,
    env,
    good_files,
    store_good,
    worker_figures,
)
from tests.reliability._mutate import Malformed, fmi_end, malformed_files
from tests.reliability._raw import SYNTAX_CONTEXTS, RawPeer, command_for
from tests.reliability.conftest import scaled

Figure = Callable[[str, Any], None]
COUNT = scaled(1050, 5000)
CLI_TIMEOUT_S = 600.0
STOW_BATCH = 25
SUCCESS_OR_WARNING = re.compile(r"^(0000|B...)$")
PROCESSING_FAILURE = 0x0110  # the STOW-RS FailureReason of an unexpected error: a bug
# A 256 KiB deflate bomb may inflate to its 64x cap (16 MiB) before it is refused, held about
# twice, in each of the ingest threads at once: memory grows by that much, never by the bomb.
BOMB_ALLOWANCE_KIB = 192 << 10


@pytest.fixture(scope="module")
def files() -> list[Malformed]:
    return list(malformed_files(seed=2026, count=COUNT))


def _write(folder: Path, files: list[Malformed]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f"{f.name}.dcm").write_bytes(f.data)


# Linux carries a parent's peak RSS into a forked child's ru_maxrss; a small wrapper
# process forks the CLI so that the figure is the CLI's own, not pytest's.
_PEAK_WRAPPER = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "sys.stderr.write(f'\\nPEAK_RSS_KIB {usage.ru_maxrss}\\n')\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def _ingest(archive: Path, folder: Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """`pacs ingest` in a subprocess; its result and its peak RSS in KiB."""
    cmd = [sys.executable, "-c", _PEAK_WRAPPER, "-m", "engine.cli", "-A", str(archive), "ingest",
           str(folder)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"pacs ingest hung for {CLI_TIMEOUT_S:.0f} s") from None
    peak = re.search(r"PEAK_RSS_KIB (\d+)", err)
    assert peak, err[-2000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), int(peak[1])


def test_a_thousand_malformed_files_through_pacs_ingest(
    tmp_path: Path, files: list[Malformed], figure: Figure
) -> None:
    archive = tmp_path / "archive"
    good = good_files(tmp_path / "good", seed=2100)
    r, good_peak = _ingest(archive, tmp_path / "good")
    assert r.returncode == 0, r.stdout + r.stderr
    _write(tmp_path / "bad", files)
    started = time.monotonic()
    r, bad_peak = _ingest(archive, tmp_path / "bad")
    elapsed = time.monotonic() - started
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    assert r.returncode == 3, r.stdout + r.stderr  # partial: some stored, the rest listed
    summary = re.search(r"stored (\d+) instances .*?rejected (\d+)", r.stdout.replace("\n", " "))
    assert summary, r.stdout
    stored, rejected = int(summary[1]), int(summary[2])
    assert stored + rejected == len(files)
    reasons = re.findall(r"rejected (\d+): (\w+Error)", r.stdout)
    assert sum(int(n) for n, _ in reasons) == rejected, r.stdout
    # the library, file by file: the same split, and every refusal an engine error with a reason
    library = tmp_path / "library"
    accepted = 0
    kinds: Counter[str] = Counter()
    with engine.open_archive(library) as lib:
        for f in files:
            try:
                lib.store(f.data)
            except InvalidInstanceError as exc:
                assert str(exc), f.name
                kinds[type(exc).__name__] += 1
            else:
                accepted += 1
    assert accepted == stored
    assert bad_peak < good_peak + BOMB_ALLOWANCE_KIB, (good_peak, bad_peak)
    figure("malformed files", len(files))
    figure("stored (mutation left them valid) / rejected", (stored, rejected))
    figure("refusals", dict(kinds))
    figure("CLI peak RSS KiB (good run, malformed run)", (good_peak, bad_peak))
    figure("ingest seconds", round(elapsed, 1))
    assert_intact(archive, good)


def test_deflate_bombs_do_not_pile_up_in_ingest_memory(tmp_path: Path, files: list[Malformed],
                                                      figure: Figure) -> None:  # fmt: skip
    """Regression: each refused bomb's traceback kept its 16 MiB of inflated bytes alive
    until the CLI got to its result: 70 bombs took `pacs ingest` from 150 to 630 MiB."""
    good_files(tmp_path / "good", seed=2150, count=1)
    _, good_peak = _ingest(tmp_path / "archive", tmp_path / "good")
    bombs = [f for f in files if "deflate_bomb" in f.name]
    _write(tmp_path / "bombs", bombs)
    r, peak = _ingest(tmp_path / "archive", tmp_path / "bombs")
    assert r.returncode == 3, r.stdout + r.stderr
    assert peak < good_peak + BOMB_ALLOWANCE_KIB, (good_peak, peak)
    figure("bombs, peak RSS KiB (one good file, the bombs)", (len(bombs), good_peak, peak))


def _c_store_outcome(peer: RawPeer, f: Malformed, message_id: int) -> str:
    data = f.data
    if data[128:132] == b"DICM" and 144 <= fmi_end(data) <= len(data):
        data = data[fmi_end(data) :]  # a C-STORE carries the data set, not the File Meta
    rsp = peer.store_raw(command_for("1.2.3." + str(message_id), message_id), data,
                         SYNTAX_CONTEXTS[f.transfer_syntax])  # fmt: skip
    status = f"{int(rsp.Status):04X}"
    if SUCCESS_OR_WARNING.match(status):
        return "stored"
    comment = str(rsp.get("ErrorComment", ""))
    assert comment, f"{f.name}: status {status} without an Error Comment"
    return status


def test_a_thousand_malformed_data_sets_through_c_store(
    tmp_path: Path, files: list[Malformed], figure: Figure
) -> None:
    srv = Server(tmp_path, workers=2).start()
    try:
        good = store_good(srv.port, tmp_path / "good", seed=2200)
        pids = sorted(srv.worker_pids())
        before = worker_figures(pids)
        sendable = [f for f in files if f.transfer_syntax in SYNTAX_CONTEXTS]
        outcomes: Counter[str] = Counter()
        peers = {}
        for path in ("fast", "pynetdicom"):
            peers[path] = RawPeer(srv.port)
            peers[path].associate(via_pynetdicom=path == "pynetdicom", all_syntaxes=True)
        try:
            for i, f in enumerate(sendable):
                path = "pynetdicom" if i % 4 == 0 else "fast"
                outcomes[f"{path} {_c_store_outcome(peers[path], f, i + 1)}"] += 1
        finally:
            for peer in peers.values():
                peer.close()
        assert sorted(srv.worker_pids()) == pids, srv.log()[-3000:]
        after = worker_figures(pids)
        assert after["peak_rss_kib"] < 3 * before["peak_rss_kib"], (before, after)
        dcmtk_sent = _storescu_some(srv.port, tmp_path / "dcmtk", files[:60])
        assert echo(srv.port) == 0
        figure("malformed data sets sent", len(sendable))
        figure("outcomes (path status)", dict(outcomes))
        figure("also through DCMTK storescu", dcmtk_sent)
        figure("worker peak RSS KiB before/after", (before["peak_rss_kib"], after["peak_rss_kib"]))
    finally:
        assert srv.stop() == 0, srv.log()[-3000:]
    assert_intact(srv.archive, good)


def _storescu_some(port: int, folder: Path, files: list[Malformed]) -> int:
    """DCMTK storescu of a few files (it refuses many itself); the server must not mind."""
    _write(folder, files)
    cmd = [dcmtk("storescu"), "-aet", "STORESCU", "-aec", "PACS", "-nh", "127.0.0.1", str(port),
           *map(str, sorted(folder.glob("*.dcm")))]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, env=dcmtk_env(), timeout=300)
    stderr = r.stderr.decode(errors="replace")  # DCMTK quotes the broken bytes
    assert "Association Aborted" not in stderr, stderr[-2000:]
    return len(files)


def test_a_thousand_malformed_files_through_stow_rs(
    tmp_path: Path, files: list[Malformed], figure: Figure
) -> None:
    srv = Server(tmp_path, workers=2, http=True).start()
    try:
        good = store_good(srv.port, tmp_path / "good", seed=2300)
        pids = sorted(srv.worker_pids())
        before = worker_figures(pids)
        statuses: Counter[int] = Counter()
        referenced = failed = 0
        url = f"http://127.0.0.1:{srv.http_port}/dicom-web/studies"
        with httpx.Client(timeout=120) as client:
            for at in range(0, len(files), STOW_BATCH):
                batch = files[at : at + STOW_BATCH]
                body, ctype = _multipart([f.data for f in batch])
                rsp = client.post(url, content=body, headers={"content-type": ctype})
                statuses[rsp.status_code] += 1
                assert rsp.status_code in (200, 202, 409), rsp.text[:500]
                assert rsp.headers["content-type"].startswith("application/dicom+json")
                doc = rsp.json()
                ok = doc.get("00081199", {}).get("Value", [])
                bad = doc.get("00081198", {}).get("Value", [])
                assert len(ok) + len(bad) == len(batch), doc
                reasons = [item["00081197"]["Value"][0] for item in bad]
                assert PROCESSING_FAILURE not in reasons, srv.log()[-3000:]
                referenced += len(ok)
                failed += len(bad)
        assert sorted(srv.worker_pids()) == pids, srv.log()[-3000:]
        after = worker_figures(pids)
        assert after["peak_rss_kib"] < 3 * before["peak_rss_kib"], (before, after)
        figure("malformed files posted", len(files))
        figure("stored / failed", (referenced, failed))
        figure("HTTP statuses", dict(statuses))
        figure("worker peak RSS KiB before/after", (before["peak_rss_kib"], after["peak_rss_kib"]))
    finally:
        assert srv.stop() == 0, srv.log()[-3000:]
    assert_intact(srv.archive, good)


def _multipart(parts: list[bytes]) -> tuple[bytes, str]:
    boundary = secrets.token_hex(24)  # never inside a part by chance
    out = bytearray()
    for data in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_encapsulated_pixels_without_a_transfer_syntax_are_refused(tmp_path: Path) -> None:
    """Regression: a JPEG file whose File Meta lacks its Transfer Syntax UID was stored as
    Explicit VR Little Endian (the scanner's guess), and served so, compressed pixels and all."""
    from tests.reliability._mutate import _meta
    from tests.web._util import corpus_path

    data = corpus_path("SC_rgb_jpeg_dcmtk.dcm").read_bytes()
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "no-syntax.dcm").write_bytes(_meta(data[: fmi_end(data)], "") + data[fmi_end(data) :])
    r, _ = _ingest(tmp_path / "archive", folder)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "encapsulated Pixel Data" in r.stdout, r.stdout


def _scan_outcome(scan: Callable[[bytes], Any], data: bytes) -> Any:
    try:
        r = scan(data)
    except InvalidInstanceError as exc:
        return type(exc).__name__, str(exc)
    return r.transfer_syntax, r.dataset_start, r.attributes, r.pixel, r.deflated


def test_native_and_python_scanners_agree_on_every_malformed_file(
    files: list[Malformed], figure: Figure
) -> None:
    """The same result, or the same error with the same message, from both backends."""
    from engine._native import scan as native_scan
    from engine.scan._scan_py import scan as python_scan

    for f in files:
        assert _scan_outcome(native_scan, f.data) == _scan_outcome(python_scan, f.data), f.name
    figure("files scanned by both backends", len(files))
