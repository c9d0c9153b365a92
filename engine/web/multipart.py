"""multipart/related (RFC 2387) both ways, and the Accept header (RFC 9110 12.5.1).

- :func:`parse_accept` splits an Accept header into :class:`MediaRange` items
  with their parameters (``type``, ``transfer-syntax``) and quality.
- :func:`multipart_body` frames an iterable of parts as a streamed body:
  each part is produced only when the server writes it, so a 2 GB study
  goes out holding one instance at a time.
- :class:`MultipartReader` parses a request body as it arrives, one part at
  a time (a part is held whole, never the body), for STOW-RS (PS3.18 10.5).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field

from engine.web.errors import BadRequestError, PayloadTooLargeError

CRLF = b"\r\n"
MAX_HEADER_BYTES = 16 * 1024
# RFC 2046 5.1.1 caps a boundary at 70 characters, but real senders go past it (Orthanc's
# DICOMweb client sends 73): take any a sane parser takes, and bound it only against abuse
MAX_BOUNDARY_CHARS = 1000


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One media range of an Accept header, or a Content-Type."""

    type: str  # "multipart/related", "application/dicom", "*/*" (lower case)
    params: dict[str, str] = field(default_factory=dict)  # names lower case, values unquoted
    q: float = 1.0

    def matches(self, media_type: str) -> bool:
        """Whether this range accepts the concrete `media_type`."""
        main, _, sub = self.type.partition("/")
        m_main, _, m_sub = media_type.lower().partition("/")
        return (main in ("*", m_main)) and (sub in ("*", m_sub))


def _split_quoted(text: str, sep: str) -> list[str]:
    out: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
    out.append("".join(current))
    return out


def parse_media_type(text: str) -> MediaRange:
    """One media type with parameters (``multipart/related; type="application/dicom"``)."""
    pieces = _split_quoted(text, ";")
    params: dict[str, str] = {}
    q = 1.0
    for piece in pieces[1:]:
        name, eq, value = piece.partition("=")
        if not eq:
            continue
        name, value = name.strip().lower(), value.strip().strip('"')
        if name == "q":
            try:
                q = float(value)
            except ValueError:
                raise BadRequestError(f"bad quality value q={value!r} in {text!r}") from None
        else:
            params[name] = value
    return MediaRange(pieces[0].strip().lower() or "*/*", params, q)


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, best first; ``*/*`` when absent or empty."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = [parse_media_type(p) for p in _split_quoted(header, ",") if p.strip()]
    ranges = [r for r in ranges if r.q > 0]
    return sorted(ranges, key=lambda r: -r.q)  # stable: header order among equals


def new_boundary() -> str:
    return "pacs-" + os.urandom(12).hex()


def multipart_body(
    parts: Iterable[tuple[str, bytes, dict[str, str] | None]], boundary: str
) -> Iterator[bytes]:
    """Frame (content type, body, extra headers) parts as multipart/related, lazily."""
    delim = b"--" + boundary.encode("ascii")
    for content_type, body, extra in parts:
        head = [b"Content-Type: " + content_type.encode("latin-1")]
        for name, value in (extra or {}).items():
            head.append(name.encode("latin-1") + b": " + value.encode("latin-1"))
        head.append(b"Content-Length: " + str(len(body)).encode("ascii"))
        yield delim + CRLF + CRLF.join(head) + CRLF + CRLF
        yield body
        yield CRLF
    yield delim + b"--" + CRLF


@dataclass(slots=True)
class Part:
    """One body part: its headers (names lower case) and its bytes."""

    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> MediaRange:
        return parse_media_type(self.headers.get("content-type", "application/octet-stream"))


class MultipartReader:
    """Parse a multipart body chunk by chunk, yielding each part once it is complete.

    Parameters
    ----------
    boundary
        The boundary parameter of the Content-Type.
    max_part_bytes
        A part larger than this raises :class:`PayloadTooLargeError` (413).
    """

    def __init__(self, boundary: str, max_part_bytes: int) -> None:
        if not boundary:
            raise BadRequestError("the multipart Content-Type has no boundary parameter")
        if len(boundary) > MAX_BOUNDARY_CHARS:
            raise BadRequestError(
                f"multipart boundary of {len(boundary)} characters: at most {MAX_BOUNDARY_CHARS}"
            )
        self.delim = CRLF + b"--" + boundary.encode("latin-1")
        self.max_part_bytes = max_part_bytes

    async def parts(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[Part]:
        """The parts of the body that `chunks` delivers, in order."""
        buf = bytearray(CRLF)  # the first delimiter has no CRLF before it
        state, scan_from = "preamble", 0
        headers: dict[str, str] = {}
        done = False
        async for chunk in chunks:
            buf += chunk
            while True:
                if state in ("preamble", "body"):
                    at = buf.find(self.delim, scan_from)
                    if at < 0:
                        scan_from = max(0, len(buf) - len(self.delim) + 1)
                        if state == "body" and len(buf) > self.max_part_bytes + len(self.delim):
                            raise PayloadTooLargeError(
                                f"a part exceeds {self.max_part_bytes} bytes (web.max_part_bytes)"
                            )
                        if state == "preamble" and len(buf) > MAX_HEADER_BYTES:
                            raise BadRequestError("no multipart boundary in the first 16 KiB")
                        break
                    if state == "body":
                        if at > self.max_part_bytes:
                            raise PayloadTooLargeError(
                                f"a part of {at} bytes exceeds {self.max_part_bytes} "
                                "(web.max_part_bytes)"
                            )
                        yield Part(headers, bytes(buf[:at]))
                    del buf[: at + len(self.delim)]
                    state, scan_from = "delimiter", 0
                if state == "delimiter":
                    if len(buf) < 2:
                        break
                    if buf[:2] == b"--":
                        done = True
                        break
                    eol = buf.find(CRLF, scan_from)
                    if eol < 0:
                        # only transport padding may precede the CRLF: never buffer more
                        if len(buf) > MAX_HEADER_BYTES:
                            raise BadRequestError("no CRLF in 16 KiB after a multipart boundary")
                        scan_from = max(0, len(buf) - 1)  # a CR may end this chunk
                        break
                    del buf[: eol + 2]  # transport padding, then CRLF (RFC 2046 5.1.1)
                    state, scan_from = "headers", 0
                if state == "headers":
                    if buf[:2] == CRLF:
                        headers, end = {}, 2
                    else:
                        eoh = buf.find(CRLF + CRLF)
                        if eoh < 0:
                            if len(buf) > MAX_HEADER_BYTES:
                                raise BadRequestError("part headers longer than 16 KiB")
                            break
                        headers, end = _parse_headers(bytes(buf[:eoh])), eoh + 4
                    del buf[:end]
                    state, scan_from = "body", 0
            if done:
                break
        if not done:
            raise BadRequestError("multipart body ends before its closing boundary")


def _parse_headers(block: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in block.split(CRLF):
        name, colon, value = line.partition(b":")
        if not colon:
            raise BadRequestError(f"malformed part header line {line[:80]!r}")
        out[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return out
