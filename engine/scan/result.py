"""What a scan of encoded DICOM returns; shared by the native and Python backends."""

from __future__ import annotations

from dataclasses import dataclass, field

# A scanned value: text VRs decode to str (the whole value, backslashes kept,
# trailing spaces and NULs stripped); US/SS/UL/SL to int, FL/FD to float, or a
# tuple of them when VM > 1.
Value = str | int | float | tuple[int, ...] | tuple[float, ...]


@dataclass(slots=True)
class PixelSpan:
    """Where Pixel Data (7FE0,0010) lies in the scanned buffer, as absolute offsets."""

    element_start: int  # first byte of the element's tag
    value_start: int  # first byte after the element header
    end: int  # one past the last byte (after the Sequence Delimitation Item if encapsulated)
    encapsulated: bool
    # Encapsulated only (PS3.5 A.4): (offset, length) of each fragment's value,
    # the Basic Offset Table item excluded.
    fragments: list[tuple[int, int]] = field(default_factory=list)
    # Encapsulated only: for each frame, (index of its first fragment, number of
    # fragments). From the Extended Offset Table, else the Basic Offset Table,
    # else one frame per fragment when NumberOfFrames equals the fragment
    # count, else all fragments in one frame.
    frames: list[tuple[int, int]] = field(default_factory=list)


@dataclass(slots=True)
class ScanResult:
    """The File Meta Information, the indexed attributes and the Pixel Data span."""

    transfer_syntax: str  # UID the dataset is encoded in
    dataset_start: int  # offset of the first dataset element (after any preamble and group 0002)
    fmi_start: int  # offset of the first group 0002 element; == dataset_start when there is no FMI
    fmi: dict[str, str]  # group 0002 text values by keyword (MediaStorageSOPInstanceUID, ...)
    attributes: dict[str, Value]  # engine.attributes.SCANNED values by keyword, absent when absent
    pixel: PixelSpan | None  # None when there is no Pixel Data, or when the dataset is deflated
    deflated: bool = False  # Deflated Explicit VR Little Endian: offsets above are meaningless
