"""What the forward tests share: waiting, ``pacs queue``, series written to files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pydicom

from engine.synthetic import ct_series, encode
from tests._helpers import ROOT
from tests.net._support import Server, dcmtk, dcmtk_env, free_port, run_dcmtk

WAIT_S = 90.0


def wait_for(what: str, done: Any, server: Server | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n" + (
            server.log()[-4000:] if server else ""
        )
        time.sleep(0.2)


def pacs(*args: str) -> subprocess.CompletedProcess[str]:
    """The `pacs` command of this checkout (never one that happens to be on PATH)."""
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip


def queue_state(server: Server, *args: str) -> Any:
    out = pacs("--config", str(server.config_path), "-A", str(server.archive), "queue", *args,
                "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def write_series(folder: Path, seed: int, n: int, *, implicit: bool = False) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, ds in enumerate(ct_series(seed, n, rows=32, columns=32, implicit=implicit)):
        files.append(folder / f"{seed}-{i}.dcm")
        files[-1].write_bytes(encode(ds))
    return files


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def storescp(folder: Path, port: int, aet: str = "DEST") -> subprocess.Popen[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([dcmtk("storescp"), "-aet", aet, "+xa", "-od", str(folder), str(port)],
                            env=dcmtk_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 10
    while run_dcmtk("echoscu", "-aec", aet, "127.0.0.1", str(port)).returncode != 0:
        assert proc.poll() is None and time.monotonic() < deadline, "storescp did not start"
        time.sleep(0.1)
    return proc


def received(folder: Path) -> dict[str, Path]:
    """SOP Instance UID -> file storescp wrote (named MODALITY.UID), whole files only."""
    out = {}
    for f in folder.iterdir():
        m = re.fullmatch(r"[A-Z]{2}\.(?P<uid>[0-9.]+)", f.name)
        if m:
            out[m["uid"]] = f
    return out


def same(sent: Path, got: Path) -> None:
    a, b = pydicom.dcmread(sent), pydicom.dcmread(got)
    assert b.file_meta.TransferSyntaxUID == a.file_meta.TransferSyntaxUID, got.name
    assert b.PixelData == a.PixelData
    padding = 0xFFFCFFFC  # Data Set Trailing Padding: DCMTK-based peers drop it (PS3.5 7.8.3)
    assert [e.tag for e in b] == [e.tag for e in a if e.tag != padding]


class Picky:
    """A pynetdicom Storage SCP (AE PICKY) that refuses every store (0xA700) while `refuse`
    is set, and notes the SOP Instance UIDs it takes once it is cleared."""

    def __init__(self) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.presentation import AllStoragePresentationContexts

        self.refuse = threading.Event()
        self.refuse.set()
        self.taken: list[str] = []
        ae = AE(ae_title="PICKY")
        ae.supported_contexts = AllStoragePresentationContexts
        self.port = free_port()
        self.scp = ae.start_server(("127.0.0.1", self.port), block=False,
                                   evt_handlers=[(evt.EVT_C_STORE, self._on_store)])  # fmt: skip

    def _on_store(self, event: Any) -> int:
        if self.refuse.is_set():
            return 0xA700  # Refused: Out of Resources
        self.taken.append(str(event.request.AffectedSOPInstanceUID))
        return 0
