"""Which transfer syntax we accept when a peer proposes several in one context (issue 16).

pynetdicom's acceptor takes the first of its own list that the peer offered,
and that list began with Implicit VR: a modality offering JPEG-LS and
Explicit VR was told to send Implicit (decompressed, private VRs lost).
Now: lossless compression, then Explicit VR LE, then Implicit, lossy last;
and getscu, which offers Explicit first, gets an Explicit instance as stored.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    ModalityWorklistInformationFind,
)

from tests._helpers import dataset_diff, read, small_ct
from tests.net._support import Server, identifier_args, run_dcmtk

PROPOSALS = [  # what the peer offers in one context -> what we must accept
    ([ImplicitVRLittleEndian, ExplicitVRLittleEndian], ExplicitVRLittleEndian),
    ([ExplicitVRBigEndian, ImplicitVRLittleEndian], ImplicitVRLittleEndian),
    ([JPEGBaseline8Bit, JPEGLSLossless, ExplicitVRLittleEndian, ImplicitVRLittleEndian],
     JPEGLSLossless),
    ([ImplicitVRLittleEndian, RLELossless], RLELossless),
    ([JPEGBaseline8Bit, ImplicitVRLittleEndian], ImplicitVRLittleEndian),
    ([JPEGBaseline8Bit], JPEGBaseline8Bit),
]  # fmt: skip


@pytest.mark.parametrize("path", ["fast", "pynetdicom"])
def test_the_accepted_syntax_is_ours_to_choose(server: Server, path: str) -> None:
    ae = AE(ae_title="PYNETDICOM")
    for offered, _ in PROPOSALS:
        ae.add_requested_context(CTImageStorage, offered)
    if path == "pynetdicom":  # a class the fast path does not serve sends it to pynetdicom
        ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS")
    assert assoc.is_established
    try:
        accepted = [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts
                    if cx.abstract_syntax == CTImageStorage]  # fmt: skip
    finally:
        assoc.release()
    assert accepted == [str(want) for _, want in PROPOSALS]


def test_getscu_receives_an_explicit_vr_instance_as_stored(server: Server, tmp_path: Path) -> None:
    ds = small_ct(16016)
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == 0
    finally:
        assoc.release()
    r = run_dcmtk("getscu", "-S", "-aet", "GETSCU", "-aec", "PACS", "-od", str(tmp_path),
                  *identifier_args({"QueryRetrieveLevel": "IMAGE",
                                    "StudyInstanceUID": ds.StudyInstanceUID,
                                    "SeriesInstanceUID": ds.SeriesInstanceUID,
                                    "SOPInstanceUID": ds.SOPInstanceUID}),
                  "127.0.0.1", str(server.port))  # fmt: skip
    files = list(tmp_path.iterdir())
    assert r.returncode == 0 and len(files) == 1, r.stdout + r.stderr
    got = read(files[0].read_bytes())
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # not converted to Implicit
    assert dataset_diff(ds, got) is None, dataset_diff(ds, got)
