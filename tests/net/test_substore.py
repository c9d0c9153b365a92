"""Retrieve sub-operations send the stored data set bytes when the peer accepts their syntax."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom.dsutils import decode

from engine import dimse
from engine.archive import Archive
from engine.errors import InvalidInstanceError, MalformedDicomError
from engine.net.retrieve import Match, prepare
from engine.net.substore import EncodedInstance
from engine.part10 import PREAMBLE, dataset_offset
from tests.corpus import real_files


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    a = Archive(tmp_path_factory.mktemp("substore") / "archive")
    for path in real_files():
        try:
            a.store(Path(path).read_bytes())
        except InvalidInstanceError:
            continue  # no SOP Instance UID and the like: not an archive's instance
    yield a
    a.close()


def _matches(archive: Archive) -> list[Match]:
    query = {"SOPInstanceUID": "", "SOPClassUID": "", "TransferSyntaxUID": ""}
    return [Match(str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.TransferSyntaxUID))
            for ds in archive.find("IMAGE", query)]  # fmt: skip


def _pydicom_offset(part10: bytes) -> int:
    fp = DicomBytesIO(part10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_preamble(fp, False)
        _read_file_meta_info(fp)
    return fp.tell()


def test_dataset_starts_where_pydicom_finds_it(archive: Archive) -> None:
    matches = _matches(archive)
    assert len(matches) > 50
    for m in matches:
        part10 = archive.get(m.sop_instance)
        assert dataset_offset(part10) == _pydicom_offset(part10), m.sop_instance


def test_dataset_offset_without_preamble_and_without_meta() -> None:
    meta = bytes.fromhex("02000100") + b"OB\0\0" + (2).to_bytes(4, "little") + b"\0\1"
    body = bytes.fromhex("08001800") + b"UI" + (4).to_bytes(2, "little") + b"1.2\0"
    assert dataset_offset(meta + body) == len(meta)
    assert dataset_offset(PREAMBLE + meta + body) == len(PREAMBLE) + len(meta)
    assert dataset_offset(body) == 0


def test_truncated_file_meta_is_malformed() -> None:
    meta = bytes.fromhex("02001000") + b"UI" + (40).to_bytes(2, "little") + b"1.2.840"
    with pytest.raises(MalformedDicomError):
        dataset_offset(PREAMBLE + meta)


def test_accepted_stored_syntax_is_sent_as_stored_bytes(archive: Archive) -> None:
    for m in _matches(archive):
        item = prepare(archive, m, {m.transfer_syntax: 5})
        assert isinstance(item, EncodedInstance)
        part10 = archive.get(m.sop_instance)
        assert item.encoded == part10[_pydicom_offset(part10) :]
        assert (item.sop_class, item.context_id) == (m.sop_class, 5)
        assert str(item.SOPInstanceUID) == m.sop_instance  # listed if the sub-operation fails


def test_other_syntaxes_take_the_conversion_path(archive: Archive) -> None:
    compressed = [m for m in _matches(archive) if m.transfer_syntax == JPEGBaseline8Bit]
    assert compressed, "the corpus has JPEG Baseline files"
    ds = prepare(archive, compressed[0], {ExplicitVRLittleEndian: 3})
    assert not isinstance(ds, EncodedInstance)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_store_request_command_parses_back() -> None:
    command = dimse.request(dimse.C_STORE_RQ, 7, "1.2.840.10008.5.1.4.1.1.2",
                            sop_instance_uid="1.2.3", priority=2, originator=("MOVESCU", 41))
    parsed = dimse.parse_command(command)
    assert (parsed.command_field, parsed.message_id, parsed.priority) == (dimse.C_STORE_RQ, 7, 2)
    assert (parsed.sop_class_uid, parsed.sop_instance_uid) == ("1.2.840.10008.5.1.4.1.1.2", "1.2.3")
    assert parsed.has_data_set
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = decode(io.BytesIO(command), True, True)
    assert (ds.MoveOriginatorApplicationEntityTitle, ds.MoveOriginatorMessageID) == ("MOVESCU", 41)
    assert ds.CommandGroupLength == len(command) - 12


