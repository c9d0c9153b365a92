"""Hypothesis: generated and mutated inputs; the backends agree and raise only engine errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence

from engine.attributes import SCANNED
from tests.conftest import native_module
from tests.scan._support import (
    ScanFn,
    corpus,
    outcome,
    pydicom_attributes,
    scan_function,
    scanned_as_pydicom,
    write,
)

SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"]
DEFLATED = "1.2.840.10008.1.2.1.99"
SMALL_FILES = [p for p in corpus() if p.stat().st_size <= 48_000]
TEXT = st.text(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcxyz0123456789 -_.éüßÅ"), max_size=24)
SETTINGS = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _value(draw: st.DrawFn, vr: str) -> object:
    if vr == "US":
        return draw(st.integers(0, 0xFFFF))
    if vr == "UI":
        return ".".join(map(str, draw(st.lists(st.integers(1, 99999), min_size=1, max_size=6))))
    if vr == "IS":
        return str(draw(st.integers(-(2**31), 2**31 - 1)))
    if vr == "DA":
        return draw(st.sampled_from(["", "20240229", "19000101"]))
    if vr == "TM":
        return draw(st.sampled_from(["", "101010", "235959.123456", "07"]))
    if vr == "CS":
        return draw(st.text(st.sampled_from("ABCXYZ019_ "), max_size=16)).strip()
    if vr == "PN":
        return "^".join(draw(st.lists(TEXT.map(str.strip), min_size=1, max_size=3)))
    return draw(TEXT)


def _add(ds: Dataset, tag: int, vr: str, value: object) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom validates values as they are set
        ds.add_new(tag, vr, value)


@st.composite
def datasets(draw: st.DrawFn, depth: int = 0) -> Dataset:
    """Random SCANNED attributes, private elements and nested sequences."""
    ds = Dataset()
    if depth == 0:
        ds.SpecificCharacterSet = "ISO_IR 100"
    chosen = draw(st.lists(st.sampled_from(SCANNED[1:]), unique=True, max_size=12))
    for attr in sorted(chosen):
        _add(ds, attr.tag, attr.vr, _value(draw, attr.vr))
    for elem in draw(st.lists(st.integers(0x10, 0x30), unique=True, max_size=3)):
        vr = draw(st.sampled_from(["LO", "OB", "UN", "UT", "FD"]))
        raw = draw(st.binary(max_size=40))
        value: object = raw if vr in ("OB", "UN") else 1.5 if vr == "FD" else raw.hex()
        _add(ds, 0x00090000 | elem, vr, value)
    if depth < 3 and draw(st.booleans()):
        items = draw(st.lists(datasets(depth + 1), max_size=3))
        _add(ds, 0x00081140, "SQ", Sequence(items))
        ds[0x00081140].is_undefined_length = draw(st.booleans())
    if depth == 0:
        kind = draw(st.sampled_from(["none", "native", "encapsulated"]))
        if kind == "native":
            _add(
                ds,
                0x7FE00010,
                "OW",
                draw(st.binary(max_size=64).map(lambda b: b + b"\0" * (len(b) % 2))),
            )
        elif kind == "encapsulated":
            frames = draw(st.lists(st.binary(min_size=2, max_size=30), min_size=1, max_size=4))
            _add(ds, 0x00280008, "IS", str(len(frames)))
            _add(ds, 0x7FE00010, "OB", encapsulate([f + b"\0" * (len(f) % 2) for f in frames]))
            ds[0x7FE00010].is_undefined_length = True
    return ds


@st.composite
def encoded(draw: st.DrawFn) -> tuple[Dataset, bytes, str, bool]:
    ds = draw(datasets())
    syntax = draw(st.sampled_from([*SYNTAXES, DEFLATED]))
    with_fmi = syntax == DEFLATED or draw(st.booleans())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            buffer = write(ds, syntax, with_fmi=with_fmi)
        except (ValueError, TypeError, NotImplementedError):
            assume(False)
            raise
    return ds, buffer, syntax, with_fmi


def _backend(name: str) -> ScanFn:
    if name == "native" and native_module() is None:
        pytest.skip("engine._native is not built (or ENGINE_PURE_PYTHON is set)")
    return scan_function(name)


@SETTINGS
@given(case=encoded())
def test_generated_datasets_round_trip_and_backends_agree(
    case: tuple[Dataset, bytes, str, bool],
) -> None:
    ds, buffer, syntax, with_fmi = case
    argument = None if with_fmi else syntax
    result = scan_function("python")(buffer, argument)
    encapsulated = ds.get((0x7FE0, 0x0010)) is not None and ds[0x7FE00010].VR == "OB"
    if not (encapsulated and syntax == "1.2.840.10008.1.2"):  # no undefined length in implicit OB
        assert scanned_as_pydicom(result) == pydicom_attributes(ds)
    if native_module() is not None:
        assert outcome(scan_function("native"), buffer, argument) == ("ok", repr(result))


@st.composite
def mutations(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A small real file, or a generated one, truncated, with bytes flipped or lengths faked."""
    if draw(st.booleans()):
        path: Path = draw(st.sampled_from(SMALL_FILES))
        data, argument = bytearray(path.read_bytes()), None
    else:
        _, buffer, syntax, with_fmi = draw(encoded())
        data, argument = bytearray(buffer), None if with_fmi else syntax
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "length"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if op == "truncate":
            del data[at:]
        elif op == "flip":
            data[at] ^= draw(st.integers(1, 255))
        else:
            value = draw(st.sampled_from([0, 1, 3, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
            data[at : at + 4] = value.to_bytes(4, "little")
    return bytes(data), argument


@SETTINGS
@given(case=mutations())
def test_mutated_inputs_give_the_same_outcome_in_both_backends(
    case: tuple[bytes, str | None],
) -> None:
    buffer, argument = case
    expected = outcome(scan_function("python"), buffer, argument)  # raises if not an engine error
    if native_module() is not None:
        assert outcome(scan_function("native"), buffer, argument) == expected


@pytest.mark.parametrize("name", ["native", "python"])
@SETTINGS
@given(data=st.binary(max_size=600), syntax=st.sampled_from([None, *SYNTAXES, DEFLATED]))
def test_random_bytes_raise_only_engine_errors(name: str, data: bytes, syntax: str | None) -> None:
    outcome(_backend(name), data, syntax)
    outcome(_backend(name), b"\0" * 128 + b"DICM" + data, syntax)
