"""Compression at rest (zstd) and which transfer syntaxes it pays for.

Measured on this 2-core machine, on a 512x512 16-bit CT slice (512 KiB):
zstd level 1 takes 1.2 ms (ratio 2.0), level 3 takes 3.5 ms (ratio 2.2),
level 19 138 ms (ratio 2.4). The whole ingest budget is about 1 ms per
instance, so pixels go to disk raw on ingest and sealed segments are
recompressed at COLD_ZSTD_LEVEL when the archive is idle or compacted.

16-bit native pixels are recompressed as byte planes (CODEC_ZSTD_PLANES16):
at level 3 on pydicom's test files CT_small 1.43x -> 1.74x, MR2_UNCI 2.38x
-> 2.85x, 693_UNCI 2.19x -> 2.87x, MR_small 1.32x -> 1.60x, for 0.3 ms more
per 512 KiB slice. 8- and 32-bit samples lose by it (US1_UNCR 5.9x -> 3.0x)
and keep plain zstd.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import zstandard
from pydicom.uid import UncompressedTransferSyntaxes

from engine.errors import UnsupportedTransferSyntaxError
from engine.storage.format import CODEC_RAW, CODEC_ZSTD, CODEC_ZSTD_PLANES16

COLD_ZSTD_LEVEL = 3  # best ratio per CPU second on CT; 6+ gains under 4%
INGEST_ZSTD_LEVEL = 1

# Encapsulated syntaxes (JPEG family, JPEG-LS, JPEG 2000, RLE, MPEG...) are
# compressed already: zstd gains nothing on them.
_NATIVE_PIXEL_SYNTAXES = frozenset(str(uid) for uid in UncompressedTransferSyntaxes)

_local = threading.local()


def pixels_compressible(transfer_syntax: str) -> bool:
    """True when Pixel Data in this syntax is native (uncompressed) and worth zstd."""
    return transfer_syntax in _NATIVE_PIXEL_SYNTAXES


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # zstd contexts are not thread-safe; keep one per thread and level.
    cache: dict[int, zstandard.ZstdCompressor] = getattr(_local, "c", None) or {}
    _local.c = cache
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def planes16(data: bytes | memoryview) -> bytes:
    """The bytes of 16-bit samples as two planes: every even byte, then every odd one."""
    if len(data) % 2:
        raise ValueError(f"{len(data)} bytes are not 16-bit samples")
    return np.frombuffer(data, np.uint8).reshape(-1, 2).T.tobytes()


def interleave16(data: bytes | memoryview) -> bytes:
    """The inverse of :func:`planes16`."""
    if len(data) % 2:
        raise ValueError(f"{len(data)} bytes are not two byte planes")
    return np.frombuffer(data, np.uint8).reshape(2, -1).T.tobytes()


def encode(
    data: bytes | memoryview, codec: int, level: int = COLD_ZSTD_LEVEL
) -> bytes | memoryview:
    """Encode a record part with `codec` (CODEC_ZSTD_PLANES16: an even number of bytes)."""
    if codec == CODEC_RAW:
        return data
    if codec == CODEC_ZSTD_PLANES16:
        return _compressor(level).compress(planes16(data))
    return _compressor(level).compress(data)


def decode(data: bytes | memoryview, codec: int, raw_len: int) -> bytes | memoryview:
    """Decode a record part; `raw_len` bounds the output (no decompression bombs)."""
    if codec == CODEC_RAW:
        return data
    if codec in (CODEC_ZSTD, CODEC_ZSTD_PLANES16):
        out: bytes = _decompressor().decompress(data, max_output_size=raw_len)
        if len(out) != raw_len:
            raise ValueError(f"zstd part decoded to {len(out)} bytes, header says {raw_len}")
        return interleave16(out) if codec == CODEC_ZSTD_PLANES16 else out
    raise ValueError(f"unknown codec {codec}")


def cold_pixel_codec(transfer_syntax: str, bits_allocated: object, pixel_bytes: int) -> int:
    """The codec sealed segments recompress a pixel part with (CODEC_RAW: leave it)."""
    if not pixels_compressible(transfer_syntax):
        return CODEC_RAW
    if str(bits_allocated) == "16" and pixel_bytes % 2 == 0:
        return CODEC_ZSTD_PLANES16
    return CODEC_ZSTD


# One decode (a transcode of every frame, or one rendered frame) may allocate at most this:
# a header claiming 65535 x 65535 x 1000 frames must be refused before pylibjpeg allocates.
MAX_DECODED_BYTES = 1 << 30


def check_decoded_size(ds: Any, frames: int | None = None) -> int:
    """The bytes decoding `frames` frames of `ds` yields (all when None), or raise if too many.

    Raises
    ------
    UnsupportedTransferSyntaxError
        Past :data:`MAX_DECODED_BYTES`: the client can ask for the stored syntax instead.
    """
    def number(keyword: str, default: int) -> int:
        try:
            return int(ds.get(keyword, default) or default)
        except (TypeError, ValueError):
            return default

    count = number("NumberOfFrames", 1) if frames is None else frames
    size = (number("Rows", 0) * number("Columns", 0) * number("SamplesPerPixel", 1)
            * ((number("BitsAllocated", 16) + 7) // 8) * count)  # fmt: skip
    if size > MAX_DECODED_BYTES:
        syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
        raise UnsupportedTransferSyntaxError(
            syntax, f"decoding needs {size:,} bytes, more than the limit of "
            f"{MAX_DECODED_BYTES:,}; ask for the syntax it is stored in",
        )  # fmt: skip
    return size
