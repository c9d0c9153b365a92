"""`pacs serve --http-port`: what a modality stores over DIMSE, a viewer reads over DICOMweb."""

from __future__ import annotations

from pathlib import Path

import pydicom
from dicomweb_client.api import DICOMwebClient

from engine.synthetic import ct_series, encode
from tests.net._support import Server, run_dcmtk


def test_instances_stored_with_storescu_come_back_over_dicomweb(tmp_path: Path) -> None:
    files = []
    for i, ds in enumerate(ct_series(4242, 3, rows=64, columns=64)):
        path = tmp_path / f"{i}.dcm"
        path.write_bytes(encode(ds))
        files.append(path)
    server = Server(tmp_path, workers=2, http=True).start()
    try:
        done = run_dcmtk("storescu", "-aec", "PACS", "127.0.0.1", str(server.port),
                         *map(str, files))  # fmt: skip
        assert done.returncode == 0, done.stderr
        client = DICOMwebClient(f"http://127.0.0.1:{server.http_port}/dicom-web")
        source = pydicom.dcmread(files[0])
        studies = client.search_for_studies(search_filters={"PatientID": source.PatientID})
        assert [s["0020000D"]["Value"][0] for s in studies] == [source.StudyInstanceUID]
        got = client.retrieve_instance(
            source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID
        )
        assert got.PixelData == source.PixelData
        assert got.PatientName == source.PatientName
    finally:
        assert server.stop() == 0
