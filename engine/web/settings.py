"""The ``[web]`` table of the config: one typed, frozen settings object.

Example ``pacs.toml``::

    [web]
    public_base_url = "https://pacs.example.org/dicom-web"   # behind a reverse proxy
    trust_forwarded = false       # honour X-Forwarded-Proto/Host/Prefix (only behind your proxy)
    cors_origins = ["https://viewer.example.org"]          # or ["*"]
    gzip_min_bytes = 1024         # JSON responses at least this big are gzipped on request
    qido_max_limit = 10000        # a page larger than this is cut (clients page with offset)
    max_part_bytes = 2147483648   # one STOW-RS part; 413 above
    max_concurrent_requests = 256 # per worker; more get 503 with Retry-After
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

BASE_PATH = "/dicom-web"


@dataclass(frozen=True, slots=True)
class WebSettings:
    """Settings of the DICOMweb application.

    Parameters
    ----------
    public_base_url
        Absolute URL of the DICOMweb root as clients reach it (for example
        ``https://pacs.example.org/dicom-web``). When set, every URL handed out
        (RetrieveURL, BulkDataURI, Content-Location) starts with it, whatever
        the request says. When empty, see `trust_forwarded`.
    trust_forwarded
        Build URLs from ``X-Forwarded-Proto``, ``X-Forwarded-Host`` and
        ``X-Forwarded-Prefix`` when present. Only safe behind a proxy that sets
        them: otherwise any client could make us hand out URLs to elsewhere.
        Off by default; then the request's own scheme and Host are used, and a
        Host without a port gets the port the server listens on.
    cors_origins
        Origins allowed to call from a browser (``["*"]`` for any); empty: CORS off.
    gzip_min_bytes
        JSON bodies at least this big are gzipped for clients that accept it.
    qido_max_limit
        Largest page QIDO-RS returns; a larger ``limit`` is cut to it and the
        response carries a Warning header (PS3.18 8.3.4.4). 0: no cap.
    max_part_bytes
        Largest STOW-RS part accepted (413 above).
    max_concurrent_requests
        HTTP requests one worker serves at once; the excess gets 503 with
        Retry-After (:mod:`engine.web.limits`).
    """

    public_base_url: str = ""
    trust_forwarded: bool = False
    cors_origins: tuple[str, ...] = ()
    gzip_min_bytes: int = 1024
    qido_max_limit: int = 10000
    max_part_bytes: int = 2 << 30
    max_concurrent_requests: int = 256
    base_path: str = BASE_PATH
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any] | None) -> WebSettings:
        """Settings from a ``[web]`` TOML table; unknown keys are an error that names them."""
        table = dict(table or {})
        known = {f.name for f in fields(cls)} - {"extra"}
        unknown = sorted(set(table) - known - {"http_port", "host"})
        if unknown:
            raise ValueError(f"unknown setting(s) web.{', web.'.join(unknown)}")
        values = {k: v for k, v in table.items() if k in known}
        if "cors_origins" in values:
            origins = values["cors_origins"]
            values["cors_origins"] = (origins,) if isinstance(origins, str) else tuple(origins)
        if values.get("public_base_url"):
            values["public_base_url"] = str(values["public_base_url"]).rstrip("/")
        return cls(**values, extra={k: table[k] for k in ("http_port", "host") if k in table})
