"""Images written out plainly for tests: PNG (zlib and the five PNG filters, as an encoder
writes them, without the decoder under test) and binary PGM."""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Sequence

import numpy as np

GRAY, RGB, PALETTE, GRAY_ALPHA, RGBA = 0, 2, 3, 4, 6


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def filtered(rows: np.ndarray, bpp: int, filters: Sequence[int]) -> bytes:
    """Scanlines (h, stride) of byte values, each filtered by filters[row % len], as an encoder
    does: the filter byte, then each byte minus its predictor from the original bytes."""
    out = bytearray()
    raw = rows.astype(int)
    for r in range(raw.shape[0]):
        kind = filters[r % len(filters)]
        out.append(kind)
        for i in range(raw.shape[1]):
            a = raw[r, i - bpp] if i >= bpp else 0
            b = raw[r - 1, i] if r else 0
            c = raw[r - 1, i - bpp] if r and i >= bpp else 0
            predictor = (0, a, b, (a + b) // 2, _paeth(a, b, c))[kind]
            out.append((raw[r, i] - predictor) & 0xFF)
    return bytes(out)


def png(
    values: np.ndarray,
    color: int,
    depth: int = 8,
    filters: Sequence[int] = (0, 1, 2, 3, 4),
    *,
    palette: np.ndarray | None = None,
    idat_parts: int = 1,
    interlace: int = 0,
    extra: bytes = b"",
) -> bytes:
    """A PNG of (h, w, samples) `values` (uint8, or uint16 for depth 16)."""
    h, w, samples = values.shape
    if depth == 16:
        rows = values.astype(">u2").view(np.uint8).reshape(h, w * samples * 2)
    else:
        rows = values.astype(np.uint8).reshape(h, w * samples)
    bpp = samples * depth // 8
    data = zlib.compress(filtered(rows, bpp, filters))
    cuts = np.linspace(0, len(data), idat_parts + 1).astype(int)
    body = b"".join(chunk(b"IDAT", data[a:b]) for a, b in itertools.pairwise(cuts))
    head = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, interlace))
    plte = chunk(b"PLTE", palette.tobytes()) if palette is not None else b""
    text = chunk(b"tEXt", b"Comment\x00written by the test")
    return b"\x89PNG\r\n\x1a\n" + head + text + plte + extra + body + chunk(b"IEND", b"")


def pgm(values: np.ndarray, maxval: int = 255) -> bytes:
    """A binary PGM (P5) of (h, w) or (h, w, 1) samples 0..maxval (up to 255)."""
    gray = values.reshape(values.shape[0], values.shape[1])
    return (
        f"P5\n{gray.shape[1]} {gray.shape[0]}\n{maxval}\n".encode()
        + gray.astype(np.uint8).tobytes()
    )
