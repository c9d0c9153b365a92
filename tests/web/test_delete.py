"""DELETE of a study, series or instance, with dicomweb-client against a real server."""

from __future__ import annotations

import warnings

import pytest
from dicomweb_client.api import DICOMwebClient
from requests import HTTPError

from engine.archive import Archive
from engine.web.server import HttpServer
from tests.web._util import read
from tests.web.conftest import ct_study


@pytest.fixture
def dw(live: tuple[Archive, HttpServer]) -> DICOMwebClient:
    return DICOMwebClient(f"http://127.0.0.1:{live[1].port}/dicom-web")


def _stow(dw: DICOMwebClient, seed: int) -> list:
    ct = [read(b) for b in ct_study(seed, 2, 3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dw.store_instances(ct)
    return ct


def test_delete_instance_then_series_then_study(live: tuple[Archive, HttpServer],
                                                dw: DICOMwebClient) -> None:  # fmt: skip
    archive, _ = live
    ct = _stow(dw, 71)
    study, first = ct[0].StudyInstanceUID, ct[0].SeriesInstanceUID
    other = next(ds.SeriesInstanceUID for ds in ct if ds.SeriesInstanceUID != first)
    dw.delete_instance(study, first, ct[0].SOPInstanceUID)
    assert {x["00080018"]["Value"][0] for x in dw.search_for_instances(study)} == {
        ds.SOPInstanceUID for ds in ct[1:]
    }
    dw.delete_series(study, first)
    assert [x["0020000E"]["Value"][0] for x in dw.search_for_series(study)] == [other]
    dw.delete_study(study)
    assert dw.search_for_studies(search_filters={"StudyInstanceUID": study}) == []
    assert all(not archive.instances_of(sop_instance_uid=ds.SOPInstanceUID) for ds in ct)


def test_delete_of_a_series_under_another_study_is_404_and_deletes_nothing(
    live: tuple[Archive, HttpServer], dw: DICOMwebClient
) -> None:
    a, b = _stow(dw, 72), _stow(dw, 73)
    with pytest.raises(HTTPError) as refused:
        dw.delete_series(a[0].StudyInstanceUID, b[0].SeriesInstanceUID)
    assert refused.value.response.status_code == 404
    assert len(dw.search_for_instances(b[0].StudyInstanceUID)) == len(b)


def test_delete_with_a_bad_uid_is_400(live: tuple[Archive, HttpServer]) -> None:
    import httpx

    r = httpx.delete(f"http://127.0.0.1:{live[1].port}/dicom-web/studies/1.2.x")
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
