"""One typed configuration object, from defaults, a TOML file and flags."""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DURABILITY_POLICIES = ("fsync", "none")
DUPLICATE_POLICIES = ("newest", "reject")
INGEST_CODECS = ("raw", "zstd")


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting of the archive; each field says its default and why.

    Parameters
    ----------
    durability
        ``fsync``: a store returns only once its record is on disk (group
        commit shares one fdatasync between concurrent stores). ``none``:
        nothing is synced, for throw-away benchmarks that say so.
    segment_max_bytes
        A segment is sealed once it passes this size.
    ingest_codec
        ``raw`` writes pixels as received (zstd costs more than the whole
        ingest budget on 2 cores); ``zstd`` compresses at level 1 on ingest.
    cold_zstd_level
        Level used when sealed segments are recompressed (compact, idle).
    duplicate_policy
        ``newest``: a second store of a SOP Instance UID replaces the first
        and is counted as a duplicate. ``reject``: it is refused.
    case_sensitive_pn
        PatientName matching; PS3.4 leaves it to the SCP, viewers expect
        case-insensitive.
    index_map_bytes
        Initial LMDB map size; it doubles by itself when full.
    idle_recompress_s
        When above zero, a background thread recompresses (and compacts)
        sealed segments once no store has come for this many seconds: the
        hot tier stays fast, the cold tier small. Off in the library by
        default (no surprise threads for embedders); ``pacs serve`` turns it on.
    idle_seal_min_bytes
        With ``idle_recompress_s`` on, an idle archive also seals its active
        segment once that holds at least this many bytes, so that a burst of
        stores is compressed at rest minutes later rather than once a whole
        segment fills; a trickle of small stores does not make a segment each.
    """

    durability: str = "fsync"
    segment_max_bytes: int = 1 << 30
    ingest_codec: str = "raw"
    cold_zstd_level: int = 3
    duplicate_policy: str = "newest"
    case_sensitive_pn: bool = False
    index_map_bytes: int = 1 << 30
    idle_recompress_s: float = 0.0
    idle_seal_min_bytes: int = 64 << 20
    # network and web settings live here too, under their own tables in TOML
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check("durability", self.durability, DURABILITY_POLICIES)
        _check("duplicate_policy", self.duplicate_policy, DUPLICATE_POLICIES)
        _check("ingest_codec", self.ingest_codec, INGEST_CODECS)
        if self.segment_max_bytes < 1 << 16:
            raise ValueError("segment_max_bytes must be at least 65536")
        if not 1 <= self.cold_zstd_level <= 22:
            raise ValueError("cold_zstd_level must be 1..22")
        if self.idle_seal_min_bytes < 0:
            raise ValueError("idle_seal_min_bytes must be at least 0")

    def updated(self, **changes: Any) -> Config:
        """A copy with `changes` applied (None values ignored, as unset flags)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")


def load_config(path: str | Path | None = None, **overrides: Any) -> Config:
    """Defaults, then the ``[archive]`` table of a TOML file, then `overrides`."""
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if path is not None:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
        known = {f.name for f in fields(Config)} - {"extra"}
        for key, value in doc.get("archive", {}).items():
            if key not in known:
                raise ValueError(f"{path}: unknown setting archive.{key}")
            values[key] = value
        extra = {k: v for k, v in doc.items() if k != "archive"}
    return Config(**values, extra=extra).updated(**overrides)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine only: the DIMSE server and the
    ``[auth]`` table both allow more to a loopback-only listener."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
