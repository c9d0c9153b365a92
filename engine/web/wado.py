"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data.

- ``/studies/{study}[/series/{series}[/instances/{instance}]]``: the
  instances as ``multipart/related; type="application/dicom"``, one part per
  instance, streamed (one instance in memory at a time). The
  ``transfer-syntax`` parameter of the Accept header (PS3.18 8.7.3.5.2):
  ``*`` or absent sends each instance as stored; the stored syntax itself
  likewise; Explicit or Implicit VR Little Endian is produced from any
  stored syntax (compressed ones are decoded with pydicom and pylibjpeg);
  anything else is a 406.
- ``.../metadata``: DICOM JSON (PS3.18 F.2) of every instance, read from
  the metadata part alone; Pixel Data and binary values over 1 KiB are
  given as BulkDataURI (``.../instances/{instance}/bulkdata/{tag path}``).
- ``.../instances/{instance}/frames/{list}``: the frames (1-based, comma
  separated) as multipart/related: ``application/octet-stream`` for native
  pixels, the syntax's own type (``image/jpeg``, ``image/jp2``,
  ``image/jls``, ``image/dicom-rle``...) for encapsulated ones, each part's
  Content-Type naming its transfer syntax. An encapsulated frame asked for
  as plain ``application/octet-stream`` is decoded to native pixels.
- ``.../instances/{instance}/bulkdata/{tag path}``: one bulk value as
  ``application/octet-stream``; Pixel Data gives its frames.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from typing import Any

import orjson
import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from engine.archive import Archive
from engine.codec import check_decoded_size
from engine.errors import NotFoundError, UnsupportedTransferSyntaxError
from engine.frames import FrameSource
from engine.web.context import WebContext, instance_url, path_uid
from engine.web.errors import BadRequestError, NotAcceptableError
from engine.web.metajson import bulk_value, metadata_to_json
from engine.web.multipart import MediaRange, multipart_body, new_boundary, parse_accept

DICOM = "application/dicom"
OCTET = "application/octet-stream"
UNCOMPRESSED_TARGETS = frozenset({str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)})
# PS3.18 Table 8.7.3-5 (8.7.3.3.2): the media type of an encapsulated frame.
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx", "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc", "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc", "1.2.840.10008.1.2.5": "image/dicom-rle",
}  # fmt: skip


# -- which instances --------------------------------------------------------------


def resolve(archive: Archive, study: str, series: str | None = None,
            sop: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """The instances under a WADO-RS target, with their UIDs and transfer syntax; 404 if none."""
    query = {
        "StudyInstanceUID": study,
        "SeriesInstanceUID": series or "",
        "SOPInstanceUID": sop or "",
        "TransferSyntaxUID": "",
        "InstanceNumber": "",
    }
    found = list(archive.find_attrs("IMAGE", query))
    if not found:
        what = f"instance {sop}" if sop else f"series {series}" if series else f"study {study}"
        raise NotFoundError(f"no {what} in study {study}" if sop or series else f"no {what}")
    return found


def _target_syntax(accept: list[MediaRange], stored: set[str], *, single: bool) -> tuple[str, bool]:
    """(target transfer syntax or "*", single-part?) for a retrieve; 406 if none fits."""
    for r in accept:
        if r.type in ("*/*", "multipart/*", "multipart/related"):
            inner = r.params.get("type", DICOM).lower()
            if inner not in (DICOM, "application/*", "*/*"):
                continue
            multipart = True
        elif r.type == DICOM and single:
            multipart = False
        else:
            continue
        ts = r.params.get("transfer-syntax", "*")
        if ts == "*" or stored == {ts} or ts in UNCOMPRESSED_TARGETS:
            return ts, not multipart
    raise NotAcceptableError(
        'no acceptable representation: ask for multipart/related; type="application/dicom" '
        f"with transfer-syntax=* or one of {', '.join(sorted(UNCOMPRESSED_TARGETS))} "
        f"(stored as {', '.join(sorted(stored))})"
    )


def transcode(data: bytes, target: str) -> bytes:
    """Part 10 `data` re-encoded in an uncompressed `target` syntax (pydicom + pylibjpeg)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
        stored = UID(ds.file_meta.TransferSyntaxUID)
        if stored == target:
            return data
        try:
            if stored.is_compressed:
                check_decoded_size(ds)  # before pylibjpeg allocates what the header claims
                ds.decompress(generate_instance_uid=False)
            ds.file_meta.TransferSyntaxUID = UID(target)
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True, implicit_vr=target == ImplicitVRLittleEndian,
                       little_endian=True)  # fmt: skip
        except (ValueError, RuntimeError, NotImplementedError, AttributeError) as exc:
            raise UnsupportedTransferSyntaxError(
                stored, f"cannot convert to {target}: {exc}"
            ) from exc
    return buf.getvalue()


def _instances_body(archive: Archive, found: list[dict[str, Any]], target: str,
                    base: str) -> Iterator[tuple[str, bytes, dict[str, str] | None]]:  # fmt: skip
    for attrs in found:
        sop = str(attrs["SOPInstanceUID"])
        data = archive.get(sop)
        ts = str(attrs.get("TransferSyntaxUID", ""))
        if target != "*" and target != ts:
            data = transcode(data, target)
            ts = target
        location = instance_url(base, str(attrs["StudyInstanceUID"]),
                                str(attrs["SeriesInstanceUID"]), sop)  # fmt: skip
        yield f"{DICOM}; transfer-syntax={ts}", data, {"Content-Location": location}


async def retrieve(request: Request) -> Response:
    """Study, series or instance: multipart/related of application/dicom parts (10.4.1)."""
    ctx: WebContext = request.app.state.ctx
    study, series, sop = _target(request)
    found = await ctx.call(resolve, ctx.archive, study, series, sop)
    stored = {str(a.get("TransferSyntaxUID", "")) for a in found}
    target, single = _target_syntax(parse_accept(request.headers.get("accept")), stored,
                                    single=sop is not None)  # fmt: skip
    decoded = [str(a["SOPInstanceUID"]) for a in found
               if target not in ("*", a.get("TransferSyntaxUID"))
               and UID(str(a.get("TransferSyntaxUID", ""))).is_compressed]  # fmt: skip
    if decoded:  # before the 200 goes out: a header claiming too many pixels is a 406
        await ctx.call(_check_decoded_sizes, ctx.archive, decoded)
    base = ctx.base_url(request)
    if single:
        _, data, _ = next(_instances_body(ctx.archive, found, target, base))
        return Response(data, media_type=DICOM)
    boundary = new_boundary()
    body = multipart_body(_instances_body(ctx.archive, found, target, base), boundary)
    media = f'multipart/related; type="{DICOM}"; boundary={boundary}'
    return StreamingResponse(body, media_type=media)


def _check_decoded_sizes(archive: Archive, sops: list[str]) -> None:
    for sop in sops:  # metadata reads only: the pixels stay on disk
        check_decoded_size(archive.get_metadata(sop))


def _target(request: Request) -> tuple[str, str | None, str | None]:
    p = request.path_params
    study = path_uid(request, "study")
    series = path_uid(request, "series") if "series" in p else None
    sop = path_uid(request, "instance") if "instance" in p else None
    return study, series, sop


# -- metadata -----------------------------------------------------------------------


def _metadata_json(archive: Archive, attrs: dict[str, Any], base: str) -> bytes:
    sop = str(attrs["SOPInstanceUID"])
    data, has_pixel = archive.read_metadata(sop)
    url = instance_url(base, str(attrs["StudyInstanceUID"]), str(attrs["SeriesInstanceUID"]), sop)

    def uri_for(path: list[str]) -> str:
        return f"{url}/bulkdata/{'/'.join(path)}"

    return orjson.dumps(metadata_to_json(data, has_pixel, uri_for))


METADATA_CHUNK = 32  # instances per chunk of a streamed metadata body: one thread hop each


def _metadata_body(archive: Archive, found: list[dict[str, Any]], base: str) -> Iterator[bytes]:
    for start in range(0, len(found), METADATA_CHUNK):
        docs = [_metadata_json(archive, a, base) for a in found[start : start + METADATA_CHUNK]]
        yield (b"[" if start == 0 else b",") + b",".join(docs)
    yield b"]" if found else b"[]"


async def metadata(request: Request) -> Response:
    """DICOM JSON of every instance under the target, from metadata parts only (10.4.1.1.2)."""
    ctx: WebContext = request.app.state.ctx
    study, series, sop = _target(request)
    _require_json(request)
    found = await ctx.call(resolve, ctx.archive, study, series, sop)
    base = ctx.base_url(request)
    if len(found) <= 16:  # small: one thread hop, and gzip sees the whole body
        body = await ctx.call(lambda: b"".join(_metadata_body(ctx.archive, found, base)))
        return Response(body, media_type="application/dicom+json")
    return StreamingResponse(_metadata_body(ctx.archive, found, base),
                             media_type="application/dicom+json")  # fmt: skip


def _require_json(request: Request) -> None:
    for r in parse_accept(request.headers.get("accept")):
        if r.matches("application/dicom+json") or r.type == "application/json":
            return
    raise NotAcceptableError("metadata is served as application/dicom+json only")


# -- frames -------------------------------------------------------------------------


def parse_frame_list(text: str) -> list[int]:
    """PS3.18 8.3.3.1.2: a comma-separated list of 1-based frame numbers; 400 otherwise."""
    out = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece.isdigit() or int(piece) < 1:
            raise BadRequestError(f"frame list {text!r}: frame numbers are integers from 1")
        out.append(int(piece))
    if not out or len(out) > 100_000:
        raise BadRequestError(f"frame list {text!r}: give between 1 and 100000 frames")
    return out


def frame_representation(
    accept: list[MediaRange], stored: str, encapsulated: bool
) -> tuple[str, bool]:
    """(part media type, decode to native?) for frames stored in `stored`; 406 if none fits."""
    own = FRAME_MEDIA_TYPES.get(stored, OCTET) if encapsulated else OCTET
    for r in accept:
        inner = parse_inner(r) if r.type in ("*/*", "multipart/*", "multipart/related") else r
        ts = inner.params.get("transfer-syntax", r.params.get("transfer-syntax"))
        if inner.matches(own) and (ts in (None, "*", stored) or not encapsulated):
            return own, False
        if inner.matches(OCTET) and encapsulated:
            if ts == "*":
                return OCTET, False
            if ts in (None, str(ExplicitVRLittleEndian)):
                return OCTET, True
    raise NotAcceptableError(f"frames are stored as {stored} ({own}): ask for {own} or "
                             f"{OCTET}; the Accept header offers neither")  # fmt: skip


def parse_inner(r: MediaRange) -> MediaRange:
    """The ``type`` of a multipart range as a range of its own (``*/*`` when absent)."""
    inner = r.params.get("type", "*/*")
    return MediaRange(inner.lower(), {k: v for k, v in r.params.items() if k != "type"})


def _decoded_frames(archive: Archive, sop: str, numbers: list[int]) -> Iterator[bytes]:
    from pydicom.pixels import iter_pixels  # type: ignore[attr-defined]

    data = archive.get(sop)
    wanted = set(n - 1 for n in numbers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_index = {
            i: a.tobytes()
            for i, a in enumerate(iter_pixels(io.BytesIO(data), indices=sorted(wanted)))
        }
    order = sorted(wanted)
    for n in numbers:
        yield by_index[order.index(n - 1)]


def _frame_parts(archive: Archive, source: Any, numbers: list[int], media: str,
                 decode: bool) -> Iterator[tuple[str, bytes, dict[str, str] | None]]:  # fmt: skip
    if decode:
        ct = f"{OCTET}; transfer-syntax={ExplicitVRLittleEndian}"
        for body in _decoded_frames(archive, source.sop_instance_uid, numbers):
            yield ct, body, None
        return
    ct = f"{media}; transfer-syntax={source.transfer_syntax}"
    for n in numbers:
        yield ct, source.read(n), None


FRAMES_IN_ONE_HOP = 8  # up to this many frames: read and framed in one thread call, not streamed


def _open_frames(archive: Archive, study: str, series: str | None, sop: str,
                 numbers: list[int]) -> FrameSource:  # fmt: skip
    resolve(archive, study, series, sop)
    source = archive.frames(sop)
    for n in numbers:
        if n > source.count:
            raise NotFoundError(f"instance {sop} has {source.count} frame(s), not frame {n}")
    return source


async def frames(request: Request) -> Response:
    """The listed frames of one instance (10.4.1.1.3), one positioned read each where possible.

    A viewer asks for one frame per request, a thousand times per series:
    a few frames are read and framed in one hop to the thread pool; a longer
    list is streamed, one frame in memory at a time.
    """
    ctx: WebContext = request.app.state.ctx
    study, series, sop = _target(request)
    assert sop is not None  # the route has {instance}
    numbers = parse_frame_list(str(request.path_params["frames"]))
    source = await ctx.call(_open_frames, ctx.archive, study, series, sop, numbers)
    media, decode = frame_representation(parse_accept(request.headers.get("accept")),
                                         source.transfer_syntax, source.encapsulated)  # fmt: skip
    boundary = new_boundary()
    media_type = f'multipart/related; type="{media}"; boundary={boundary}'
    parts = _frame_parts(ctx.archive, source, numbers, media, decode)
    if len(numbers) <= FRAMES_IN_ONE_HOP:
        body = await ctx.call(lambda: b"".join(multipart_body(parts, boundary)))
        return Response(body, media_type=media_type)
    return StreamingResponse(multipart_body(parts, boundary), media_type=media_type)


# -- bulk data ----------------------------------------------------------------------


def _bulk_value(archive: Archive, sop: str, path: list[str]) -> bytes:
    data, _ = archive.read_metadata(sop)
    value = bulk_value(data, path)
    if value is None:
        raise NotFoundError(f"instance {sop} has no binary value at {'/'.join(path)}")
    return value


async def bulkdata(request: Request) -> Response:
    """One bulk data value (10.4.1.1.5); Pixel Data as its frames."""
    ctx: WebContext = request.app.state.ctx
    study, series, sop = _target(request)
    assert sop is not None
    path = [p for p in str(request.path_params["path"]).split("/") if p]
    if not path or any(not p.isdigit() and len(p) != 8 for p in path):
        raise BadRequestError("bulk data path: tag (8 hex digits), item index, tag, ...")
    await ctx.call(resolve, ctx.archive, study, series, sop)
    boundary = new_boundary()
    media = f'multipart/related; type="{OCTET}"; boundary={boundary}'
    if [p.upper() for p in path] == ["7FE00010"]:
        source = await ctx.call(ctx.archive.frames, sop)
        parts = _frame_parts(ctx.archive, source, list(range(1, source.count + 1)), OCTET, False)
        return StreamingResponse(multipart_body(parts, boundary), media_type=media)
    value = await ctx.call(_bulk_value, ctx.archive, sop, path)
    return Response(b"".join(multipart_body([(OCTET, value, None)], boundary)), media_type=media)


def routes() -> list[Route]:
    """The WADO-RS routes, relative to the DICOMweb base path."""
    inst = "/studies/{study}/series/{series}/instances/{instance}"
    return [
        Route("/studies/{study}", retrieve, methods=["GET"]),
        Route("/studies/{study}/series/{series}", retrieve, methods=["GET"]),
        Route(inst, retrieve, methods=["GET"]),
        Route("/studies/{study}/metadata", metadata, methods=["GET"]),
        Route("/studies/{study}/series/{series}/metadata", metadata, methods=["GET"]),
        Route(inst + "/metadata", metadata, methods=["GET"]),
        Route(inst + "/frames/{frames}", frames, methods=["GET"]),
        Route(inst + "/bulkdata/{path:path}", bulkdata, methods=["GET"]),
    ]
