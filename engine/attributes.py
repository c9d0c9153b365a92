"""The attributes the archive reads out of every instance, in one place.

The scanner extracts exactly these (plus the Pixel Data span), the index
stores them at their level of the Patient/Study/Series/Instance hierarchy,
and C-FIND and QIDO-RS match and return them. Keywords and VRs are those of
PS3.6; the levels are those of PS3.4 C.6.1 (Patient Root) and C.6.2 (Study Root).
"""

from __future__ import annotations

from typing import NamedTuple


class Attribute(NamedTuple):
    tag: int
    keyword: str
    vr: str
    level: str  # PATIENT, STUDY, SERIES, IMAGE, or "" for scan-only attributes


LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")

# Ordered by tag: the scanner relies on it to stop early.
SCANNED: tuple[Attribute, ...] = (
    Attribute(0x00080005, "SpecificCharacterSet", "CS", ""),
    Attribute(0x00080016, "SOPClassUID", "UI", "IMAGE"),
    Attribute(0x00080018, "SOPInstanceUID", "UI", "IMAGE"),
    Attribute(0x00080020, "StudyDate", "DA", "STUDY"),
    Attribute(0x00080021, "SeriesDate", "DA", "SERIES"),
    Attribute(0x00080023, "ContentDate", "DA", "IMAGE"),
    Attribute(0x00080030, "StudyTime", "TM", "STUDY"),
    Attribute(0x00080031, "SeriesTime", "TM", "SERIES"),
    Attribute(0x00080033, "ContentTime", "TM", "IMAGE"),
    Attribute(0x00080050, "AccessionNumber", "SH", "STUDY"),
    Attribute(0x00080060, "Modality", "CS", "SERIES"),
    Attribute(0x00080090, "ReferringPhysicianName", "PN", "STUDY"),
    Attribute(0x00081030, "StudyDescription", "LO", "STUDY"),
    Attribute(0x0008103E, "SeriesDescription", "LO", "SERIES"),
    Attribute(0x00100010, "PatientName", "PN", "PATIENT"),
    Attribute(0x00100020, "PatientID", "LO", "PATIENT"),
    Attribute(0x00100021, "IssuerOfPatientID", "LO", "PATIENT"),
    Attribute(0x00100030, "PatientBirthDate", "DA", "PATIENT"),
    Attribute(0x00100040, "PatientSex", "CS", "PATIENT"),
    Attribute(0x00180015, "BodyPartExamined", "CS", "SERIES"),
    Attribute(0x0020000D, "StudyInstanceUID", "UI", "STUDY"),
    Attribute(0x0020000E, "SeriesInstanceUID", "UI", "SERIES"),
    Attribute(0x00200010, "StudyID", "SH", "STUDY"),
    Attribute(0x00200011, "SeriesNumber", "IS", "SERIES"),
    Attribute(0x00200013, "InstanceNumber", "IS", "IMAGE"),
    Attribute(0x00280002, "SamplesPerPixel", "US", ""),
    Attribute(0x00280004, "PhotometricInterpretation", "CS", ""),
    Attribute(0x00280006, "PlanarConfiguration", "US", ""),
    Attribute(0x00280008, "NumberOfFrames", "IS", "IMAGE"),
    Attribute(0x00280010, "Rows", "US", "IMAGE"),
    Attribute(0x00280011, "Columns", "US", "IMAGE"),
    Attribute(0x00280100, "BitsAllocated", "US", ""),
    Attribute(0x00280101, "BitsStored", "US", ""),
    Attribute(0x00280103, "PixelRepresentation", "US", ""),
)
assert list(SCANNED) == sorted(SCANNED, key=lambda a: a.tag)  # scan order

BY_TAG: dict[int, Attribute] = {a.tag: a for a in SCANNED}
BY_KEYWORD: dict[str, Attribute] = {a.keyword: a for a in SCANNED}

# Attributes the index computes rather than reads (PS3.4 C.3.4 "additional keys").
COMPUTED: dict[str, tuple[int, str, str]] = {
    "ModalitiesInStudy": (0x00080061, "CS", "STUDY"),
    "SOPClassesInStudy": (0x00080062, "UI", "STUDY"),
    "NumberOfPatientRelatedStudies": (0x00201200, "IS", "PATIENT"),
    "NumberOfPatientRelatedSeries": (0x00201202, "IS", "PATIENT"),
    "NumberOfPatientRelatedInstances": (0x00201204, "IS", "PATIENT"),
    "NumberOfStudyRelatedSeries": (0x00201206, "IS", "STUDY"),
    "NumberOfStudyRelatedInstances": (0x00201208, "IS", "STUDY"),
    "NumberOfSeriesRelatedInstances": (0x00201209, "IS", "SERIES"),
    "TransferSyntaxUID": (0x00020010, "UI", "IMAGE"),
}

# The unique key of each level (PS3.4 C.6.1.1 / C.6.2.1).
UNIQUE_KEY = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}


def keywords_at(level: str) -> list[str]:
    """Every keyword the index stores (read or computed) at `level`."""
    read = [a.keyword for a in SCANNED if a.level == level]
    computed = [k for k, (_, _, lvl) in COMPUTED.items() if lvl == level]
    return read + computed


def vr_of(keyword: str) -> str:
    """The VR of an indexed or computed keyword (KeyError if it is neither)."""
    if keyword in BY_KEYWORD:
        return BY_KEYWORD[keyword].vr
    return COMPUTED[keyword][1]


def level_of(keyword: str) -> str:
    """The hierarchy level an indexed or computed keyword belongs to ("" if none)."""
    if keyword in BY_KEYWORD:
        return BY_KEYWORD[keyword].level
    return COMPUTED[keyword][2]
