"""The archive a benchmark talks to: ``AET@HOST:PORT``, plus an optional DICOMweb base URL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

AE_TITLE_MAX_CHARS = 16  # PS3.5 6.2
DEFAULT_CALLING_AE = "PACSBENCH"


@dataclass(frozen=True, slots=True)
class Target:
    """A DICOM peer: called AE title, host, port; `http` is its DICOMweb root, if any.

    `calling` is our own AE title: archives that only talk to known peers
    (Orthanc's ``DicomModalities``, dcm4chee's AE list) must list it.
    """

    ae_title: str
    host: str
    port: int
    http: str | None = None
    calling: str = DEFAULT_CALLING_AE

    @classmethod
    def parse(cls, text: str, http: str | None = None, calling: str = DEFAULT_CALLING_AE) -> Target:
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
        for title in (ae, calling):
            if not 0 < len(title) <= AE_TITLE_MAX_CHARS:
                raise ValueError(f"AE title {title!r}: write 1 to {AE_TITLE_MAX_CHARS} characters")
        return cls(ae, host.strip("[]"), int(port), http.rstrip("/") if http else None, calling)

    def as_json(self) -> dict[str, Any]:
        return {
            "ae_title": self.ae_title,
            "host": self.host,
            "port": self.port,
            "http": self.http,
            "calling_ae_title": self.calling,
        }
