"""The archive a benchmark talks to: ``AET@HOST:PORT``, plus an optional DICOMweb base URL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

AE_TITLE_MAX_CHARS = 16  # PS3.5 6.2


@dataclass(frozen=True, slots=True)
class Target:
    """A DICOM peer: called AE title, host, port; `http` is its DICOMweb root, if any."""

    ae_title: str
    host: str
    port: int
    http: str | None = None

    @classmethod
    def parse(cls, text: str, http: str | None = None) -> Target:
        """Read ``AET@HOST:PORT`` (the AE title and host are required, the port too).

        Raises
        ------
        ValueError
            The text is not of that form; the message shows the form.
        """
        ae, at, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        if not (at and colon and ae and host and port.isdigit()):
            raise ValueError(f"bad target {text!r}: write AET@HOST:PORT, e.g. PACS@127.0.0.1:11112")
        if len(ae) > AE_TITLE_MAX_CHARS:
            raise ValueError(f"AE title {ae!r} is longer than {AE_TITLE_MAX_CHARS} characters")
        return cls(ae, host.strip("[]"), int(port), http.rstrip("/") if http else None)

    def as_json(self) -> dict[str, Any]:
        return {"ae_title": self.ae_title, "host": self.host, "port": self.port, "http": self.http}
