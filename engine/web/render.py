"""Rendered and thumbnail resources (PS3.18 10.4.1.1.4 / 10.4.1.1.6), and WADO-URI images.

A frame is decoded with pydicom (pylibjpeg for compressed syntaxes), the
Modality LUT applied (Rescale Slope/Intercept), then a linear VOI window
(PS3.3 C.11.2.1.2): from ``window=center,width[,function]`` in the request,
else the dataset's first WindowCenter/WindowWidth, else the frame's min/max.
MONOCHROME1 is inverted; colour images are scaled to 8 bits as they are.
The image goes out as ``image/jpeg`` (default) or ``image/png`` (Pillow).
``viewport=rows,columns`` (thumbnail default 128,128) scales down, keeping
the aspect ratio; ``quality`` sets the JPEG quality.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import pydicom
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.archive import Archive
from engine.codec import check_decoded_size
from engine.errors import NotFoundError, UnsupportedTransferSyntaxError
from engine.web.context import WebContext
from engine.web.errors import BadRequestError, NotAcceptableError
from engine.web.multipart import parse_accept
from engine.web.wado import _target, resolve

RENDER_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG"}
THUMBNAIL_VIEWPORT = (128, 128)


def _floats(text: str, name: str, count: int) -> list[float]:
    parts = text.split(",")
    try:
        values = [float(p) for p in parts[:count]]
    except ValueError:
        raise BadRequestError(f"{name}={text!r}: expected {count} numbers") from None
    if len(values) < count:
        raise BadRequestError(f"{name}={text!r}: expected {count} numbers")
    return values


class RenderOptions:
    """Window, viewport, quality and media type of a rendered request."""

    def __init__(self, params: dict[str, str], accept: str | None, *, thumbnail: bool) -> None:
        self.window: tuple[float, float] | None = None
        if params.get("window"):
            center, width = _floats(params["window"], "window", 2)
            if width <= 0:
                raise BadRequestError("window width must be positive")
            self.window = (center, width)
        self.viewport: tuple[int, int] | None = THUMBNAIL_VIEWPORT if thumbnail else None
        if params.get("viewport"):
            rows, cols = (int(v) for v in _floats(params["viewport"], "viewport", 2))
            if rows < 1 or cols < 1:
                raise BadRequestError("viewport sizes must be positive")
            self.viewport = (rows, cols)
        self.quality = 90
        if params.get("quality"):
            q = _floats(params["quality"], "quality", 1)[0]
            if not 1 <= q <= 100:
                raise BadRequestError("quality is 1..100")
            self.quality = int(q)
        self.media_type = params.get("contentType") or _pick(accept)
        if self.media_type not in RENDER_TYPES:
            raise NotAcceptableError(f"rendered images are {', '.join(RENDER_TYPES)}")


def _pick(accept: str | None) -> str:
    for r in parse_accept(accept):
        for media in RENDER_TYPES:
            if r.matches(media):
                return media
    raise NotAcceptableError(f"rendered images are {', '.join(RENDER_TYPES)}; Accept: {accept}")


def _first(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if len(value) else None
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def render_frame(data: bytes, number: int, opts: RenderOptions) -> bytes:
    """Frame `number` (1-based) of Part 10 `data` as a JPEG or PNG."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
        if "PixelData" not in ds:
            raise NotFoundError("the instance has no Pixel Data to render")
        count = int(ds.get("NumberOfFrames", 1) or 1)
        if not 1 <= number <= count:
            raise NotFoundError(f"the instance has {count} frame(s), not frame {number}")
        check_decoded_size(ds, frames=1)  # before decoding what the header claims
        try:
            from pydicom.pixels import pixel_array  # type: ignore[attr-defined]

            arr = pixel_array(io.BytesIO(data), index=number - 1 if count > 1 else None)
        except (ValueError, RuntimeError, NotImplementedError) as exc:
            raise UnsupportedTransferSyntaxError(
                str(ds.file_meta.TransferSyntaxUID), f"cannot decode pixels: {exc}"
            ) from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if arr.ndim == 2:
        img = arr.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1)
        img += float(ds.get("RescaleIntercept", 0) or 0)
        center, width = opts.window or (
            _first(ds.get("WindowCenter")),
            _first(ds.get("WindowWidth")),
        )
        if center is None or width is None or width <= 0:
            lo, hi = float(img.min()), float(img.max())
            center, width = (lo + hi) / 2, max(hi - lo, 1.0)
        # PS3.3 C.11.2.1.2.1: linear VOI function
        out = np.clip(((img - (center - 0.5)) / (width - 1) + 0.5) * 255.0, 0, 255).astype(np.uint8)
        if photometric == "MONOCHROME1":
            out = 255 - out
        image = Image.fromarray(out, mode="L")
    else:
        scaled = arr.astype(np.float64)
        top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        image = Image.fromarray(np.clip(scaled * 255.0 / top, 0, 255).astype(np.uint8), mode="RGB")
    if opts.viewport is not None:
        image.thumbnail((opts.viewport[1], opts.viewport[0]))
    buf = io.BytesIO()
    kw: dict[str, Any] = {"quality": opts.quality} if opts.media_type == "image/jpeg" else {}
    image.save(buf, format=RENDER_TYPES[opts.media_type], **kw)
    return buf.getvalue()


def _render(archive: Archive, sop: str, number: int, opts: RenderOptions) -> bytes:
    return render_frame(archive.get(sop), number, opts)


async def _endpoint(request: Request, *, thumbnail: bool) -> Response:
    ctx: WebContext = request.app.state.ctx
    study, series, sop = _target(request)
    opts = RenderOptions(dict(request.query_params), request.headers.get("accept"),
                         thumbnail=thumbnail)  # fmt: skip
    found = await ctx.call(resolve, ctx.archive, study, series, sop)
    number = 1
    if "frames" in request.path_params:
        from engine.web.wado import parse_frame_list

        frames = parse_frame_list(str(request.path_params["frames"]))
        if len(frames) != 1:
            raise BadRequestError("render one frame at a time")
        number = frames[0]
    # a series or study is represented by its middle instance (PS3.18 10.4.1.1.6)
    chosen = str(found[len(found) // 2]["SOPInstanceUID"])
    body = await ctx.call(_render, ctx.archive, chosen, number, opts)
    return Response(body, media_type=opts.media_type)


async def rendered(request: Request) -> Response:
    """An instance or frame rendered for display (PS3.18 10.4.1.1.4)."""
    return await _endpoint(request, thumbnail=False)


async def thumbnail(request: Request) -> Response:
    """A small rendered image of a study, series, instance or frame (PS3.18 10.4.1.1.6)."""
    return await _endpoint(request, thumbnail=True)


def routes() -> list[Route]:
    """Rendered and thumbnail routes, relative to the DICOMweb base path."""
    inst = "/studies/{study}/series/{series}/instances/{instance}"
    return [
        Route(inst + "/rendered", rendered, methods=["GET"]),
        Route(inst + "/frames/{frames}/rendered", rendered, methods=["GET"]),
        Route("/studies/{study}/thumbnail", thumbnail, methods=["GET"]),
        Route("/studies/{study}/series/{series}/thumbnail", thumbnail, methods=["GET"]),
        Route(inst + "/thumbnail", thumbnail, methods=["GET"]),
        Route(inst + "/frames/{frames}/thumbnail", thumbnail, methods=["GET"]),
    ]
