"""One shared `pacs serve` (2 workers) for the network tests; DCMTK storescp as C-MOVE destination.

The server is started once per session, filled once by DCMTK storescu with
generated CT slices and real files in ten transfer syntaxes, and stopped
with SIGTERM at the end, where its exit code must be 0.
"""

from __future__ import annotations

import gc
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.synthetic import ct_series, encode
from tests.corpus import real_files
from tests.net._support import Server, dcmtk, dcmtk_env, free_port, storescu

# A real file per transfer syntax, with the storescu option that proposes it
# (storescu proposes uncompressed syntaxes only unless told otherwise).
CORPUS = {  # each with a SOP Instance UID no other file sent here has
    "CT_small.dcm": "-xe",  # Explicit VR Little Endian
    "ExplVR_BigEnd.dcm": "-xb",  # Explicit VR Big Endian
    "image_dfl.dcm": "-xd",  # Deflated Explicit VR Little Endian
    "SC_rgb_small_odd_jpeg.dcm": "-xy",  # JPEG Baseline
    "JPEG-lossy.dcm": "-xx",  # JPEG Extended (12 bit)
    "JPEG-LL.dcm": "-xs",  # JPEG Lossless SV1
    "MR_small_jpeg_ls_lossless.dcm": "-xt",  # JPEG-LS Lossless
    "GDCMJ2K_TextGBR.dcm": "-xv",  # JPEG 2000 Lossless
    "SC_rgb_gdcm_KY.dcm": "-xw",  # JPEG 2000
    "SC_rgb_rle.dcm": "-xr",  # RLE Lossless
}
CT_SLICES = 12
SLAM_PORT = free_port()  # a C-MOVE destination that closes every connection it accepts
MULTI_PORT = free_port()  # a pynetdicom storage SCP taking several associations at once
ALLOWED = ("STORESCU", "FINDSCU", "GETSCU", "MOVESCU", "ECHOSCU", "PYNETDICOM", "NOSTORE",
           "NOQUERY")  # fmt: skip


@pytest.fixture(autouse=True)
def _collect_pynetdicom_sockets() -> Iterator[None]:
    """pynetdicom leaves the socket of a rejected or peer-aborted association unclosed;
    collect it inside the test, quietly, rather than as an error at session end."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def corpus_files() -> dict[str, Path]:
    by_name: dict[str, Path] = {}
    for path in real_files():
        if path.name in CORPUS and path.name not in by_name:
            by_name[path.name] = path
    missing = set(CORPUS) - set(by_name)
    assert not missing, f"corpus files missing: {missing}"
    return by_name


@dataclass
class Destination:
    """DCMTK storescp, the C-MOVE destination DEST."""

    port: int
    folder: Path
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="session")
def destination(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Destination]:
    folder = tmp_path_factory.mktemp("dest")
    port = free_port()
    proc = subprocess.Popen(
        [dcmtk("storescp"), "-aet", "DEST", "+xa", "-od", str(folder), str(port)],
        env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.3)
    assert proc.poll() is None, "storescp did not start"
    yield Destination(port, folder, proc)
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, destination: Destination) -> Iterator[Server]:
    """The shared server: an access list, a C-MOVE destination, two restricted AEs."""
    tmp = tmp_path_factory.mktemp("server")
    allowed = ", ".join(f'"{a}"' for a in ALLOWED) + ', "DEST@127.0.0.1"'
    config = f"""
[server]
ae_title = "PACS"
max_associations = 16

[remotes.DEST]
host = "127.0.0.1"
port = {destination.port}

[remotes.DOWN]  # nothing listens there: a C-MOVE to it cannot associate
host = "127.0.0.1"
port = {free_port()}

[remotes.SLAM]  # tests/net/test_send_path.py listens there and hangs up at once
host = "127.0.0.1"
port = {SLAM_PORT}

[remotes.MULTI]  # tests/net/test_send_path.py listens there: C-MOVE over 3 associations
host = "127.0.0.1"
port = {MULTI_PORT}
max_associations = 3

[remotes.NOSTORE]
store = false

[remotes.NOQUERY]
query = false
retrieve = false

[access]
allowed_calling = [{allowed}]
"""
    srv = Server(tmp, workers=2, config=config).start()
    yield srv
    code = srv.stop()
    assert code == 0, f"server exit code {code}:\n{srv.log()}"


@dataclass
class Stored:
    """What the session stored: the files sent, by SOP Instance UID."""

    ct: dict[str, Path]
    corpus: dict[str, Path]

    @property
    def all(self) -> dict[str, Path]:
        return {**self.ct, **self.corpus}


@pytest.fixture(scope="session")
def stored(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Stored:
    """Generated CT slices and the corpus, sent with DCMTK storescu (each in its own syntax)."""
    import pydicom

    folder = tmp_path_factory.mktemp("ct")
    ct: dict[str, Path] = {}
    for i, ds in enumerate(ct_series(7, CT_SLICES, rows=64, columns=64)):
        path = folder / f"{i:03d}.dcm"
        path.write_bytes(encode(ds))
        ct[str(ds.SOPInstanceUID)] = path
    for i, ds in enumerate(ct_series(8, 3, rows=32, columns=32, implicit=True)):
        path = folder / f"implicit{i:03d}.dcm"
        path.write_bytes(encode(ds))
        ct[str(ds.SOPInstanceUID)] = path
    r = storescu(server.port, list(ct.values()))
    assert r.returncode == 0, r.stdout + r.stderr
    corpus: dict[str, Path] = {}
    for name, path in corpus_files().items():
        r = storescu(server.port, [path], CORPUS[name])
        assert r.returncode == 0, f"{name}: {r.stdout}{r.stderr}"
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        corpus[uid] = path
    return Stored(ct, corpus)
