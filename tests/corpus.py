"""Real DICOM files nobody here wrote: pydicom's test files and the pydicom-data package.

Read straight from the installed packages (never downloaded at test time).
A missing pydicom-data fails loudly: it is part of the test install.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import pydicom
import pydicom.data


def _candidates() -> list[Path]:
    import data_store  # the pydicom-data package; installed by the README's test command

    roots = [
        Path(pydicom.data.__file__).parent / "test_files",
        Path(data_store.__file__).parent / "data",
    ]
    skip_suffixes = {".dump", ".txt", ".json", ".gz", ".icc", ".py", ".pyc"}
    found = []
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix not in skip_suffixes and path.name != "README":
                found.append(path)
    return found


@functools.cache
def _classified() -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    readable, unreadable = [], []
    for path in _candidates():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pydicom.dcmread(path)
        except Exception:  # noqa: BLE001 -- anything pydicom refuses is "not valid DICOM"
            unreadable.append(path)
        else:
            readable.append(path)
    return tuple(readable), tuple(unreadable)


def real_files() -> tuple[Path, ...]:
    """Every file of the corpus that pydicom.dcmread reads without force."""
    return _classified()[0]


def unreadable_files() -> tuple[Path, ...]:
    """Files of the corpus that pydicom itself refuses (no header, truncated...)."""
    return _classified()[1]


def corpus_id(path: Path) -> str:
    return os.path.basename(path)
