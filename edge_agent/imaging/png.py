"""PNG in numpy and zlib: 8- and 16-bit gray, RGB, gray+alpha, RGBA and 8-bit palette images,
not interlaced. Anything else is refused with what the file is and what is read.

Bounded: the pixel count the header claims is checked before anything is inflated, and zlib is
asked for at most the bytes that count implies, so a small file that inflates to gigabytes (a
decompression bomb) costs nothing. Every chunk's CRC is checked; a file cut short (no IEND, a
chunk longer than what is left, too little image data) is refused as truncated.

Unfiltering runs along anti-diagonals: a byte depends only on the bytes to its left, above and
above-left, so every pixel of one anti-diagonal is reconstructed in one numpy step whatever
each row's filter (none, sub, up, average, Paeth): height + width - 1 steps per image.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from edge_agent.imaging.errors import bad_image, check_pixels, to_8bit

SIGNATURE = b"\x89PNG\r\n\x1a\n"
GRAY, RGB, PALETTE, GRAY_ALPHA, RGBA = 0, 2, 3, 4, 6
CHANNELS = {GRAY: 1, RGB: 3, PALETTE: 1, GRAY_ALPHA: 2, RGBA: 4}
NAMES = {GRAY: "gray", RGB: "RGB", PALETTE: "palette", GRAY_ALPHA: "gray+alpha", RGBA: "RGBA"}
_MAX_CHUNK = 2**31 - 1


def decode_png(data: bytes, max_pixels: int) -> np.ndarray:
    """PNG bytes -> (height, width, 1 or 3) uint8 pixels (alpha dropped, palette looked up)."""
    width, height, depth, color = _header(data, max_pixels)
    palette, idat = _chunks(data)
    if color == PALETTE and palette is None:
        raise bad_image("palette PNG without a PLTE chunk")
    bpp = CHANNELS[color] * depth // 8  # bytes per pixel
    stride = width * bpp
    expected = height * (stride + 1)  # each row: its filter byte, then its bytes
    raw = _inflate(b"".join(idat), expected)
    values = unfilter(raw, height, stride, bpp).reshape(height, width, bpp)
    if depth == 16:
        wide = values.reshape(height, width, bpp // 2, 2).astype(np.uint32)
        values = to_8bit(wide[..., 0] * 256 + wide[..., 1], 65535)
    if color == PALETTE:
        assert palette is not None
        index = values[..., 0]
        if int(index.max()) >= len(palette):
            raise bad_image(
                f"palette PNG: index {int(index.max())} beyond its {len(palette)} colors"
            )
        return palette[index]
    return values[..., :1] if CHANNELS[color] <= 2 else values[..., :3]  # alpha dropped


def _header(data: bytes, max_pixels: int) -> tuple[int, int, int, int]:
    """(width, height, bit depth, color type) from the IHDR chunk, which must come first;
    refused before anything else is read if this reader does not take it, or it is too big."""
    if not data.startswith(SIGNATURE):
        raise bad_image("expected a PNG signature, got other bytes")
    at = len(SIGNATURE)
    if len(data) < at + 25 or data[at : at + 8] != b"\x00\x00\x00\x0dIHDR":
        raise bad_image("PNG: expected an IHDR chunk of 13 bytes first")
    if zlib.crc32(data[at + 4 : at + 21]) != struct.unpack_from(">I", data, at + 21)[0]:
        raise bad_image("PNG chunk 'IHDR': bad CRC")
    width, height, depth, color, compression, filtering, interlace = struct.unpack_from(
        ">IIBBBBB", data, at + 8
    )
    if color not in CHANNELS:
        raise bad_image(f"PNG color type {color} is not one of {sorted(CHANNELS)}")
    kind = NAMES[color]
    if compression != 0 or filtering != 0:
        raise bad_image(f"PNG compression {compression}, filter method {filtering}: expected 0, 0")
    if interlace != 0:
        raise bad_image("interlaced PNG (Adam7) is not read here: save it without interlacing")
    if depth not in ((8,) if color == PALETTE else (8, 16)):
        allowed = "8" if color == PALETTE else "8 or 16"
        raise bad_image(f"{depth}-bit {kind} PNG: expected a bit depth of {allowed}")
    if width < 1 or height < 1:
        raise bad_image(f"PNG of {width}x{height} pixels: expected at least 1x1")
    check_pixels(width, height, max_pixels)
    return width, height, depth, color


def _chunks(data: bytes) -> tuple[np.ndarray | None, list[bytes]]:
    """(palette as (n, 3) uint8 or None, IDAT payloads) of the chunks after IHDR, CRCs
    checked."""
    at, end = len(SIGNATURE) + 25, len(data)
    palette: np.ndarray | None = None
    idat: list[bytes] = []
    while True:
        if at + 8 > end:
            raise bad_image("truncated PNG: it ends before its IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, at)
        if length > _MAX_CHUNK or at + 12 + length > end:
            raise bad_image(f"truncated PNG: chunk {_name(kind)} claims {length} bytes")
        body = data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack_from(">I", data, at + 8 + length)
        if zlib.crc32(kind + body) != crc:
            raise bad_image(f"PNG chunk {_name(kind)} at byte {at}: bad CRC")
        at += 12 + length
        if kind == b"PLTE":
            if length % 3 or not 3 <= length <= 768:
                raise bad_image(f"PNG: a PLTE chunk of {length} bytes, expected 3 to 768 in 3s")
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        elif not kind[0] & 0x20:  # an unexpected critical chunk (IHDR again too): cannot be read
            raise bad_image(f"PNG: unexpected critical chunk {_name(kind)}")
    if not idat:
        raise bad_image("PNG without image data (no IDAT chunk)")
    return palette, idat


def _name(kind: bytes) -> str:
    return repr(kind.decode("latin-1"))


def _inflate(compressed: bytes, expected: int) -> bytes:
    """The zlib stream's first `expected` bytes; refused if it holds fewer or more."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(compressed, expected)
        more = inflater.decompress(inflater.unconsumed_tail, 1) if len(raw) == expected else b""
    except zlib.error as exc:
        raise bad_image(f"PNG image data does not inflate: {exc}") from exc
    if len(raw) < expected:
        raise bad_image(
            f"truncated PNG: {len(raw)} bytes of image data, expected {expected} for its size"
        )
    if more:
        raise bad_image(f"PNG: more image data than the {expected} bytes its size implies")
    return raw


def unfilter(raw: bytes, height: int, stride: int, bpp: int) -> np.ndarray:
    """The reconstructed (height, stride) bytes of filtered PNG scanlines (each row: its
    filter type, then `stride` bytes; `bpp` bytes per pixel)."""
    rows = np.frombuffer(raw, np.uint8).reshape(height, stride + 1)
    kinds = rows[:, 0]
    if int(kinds.max()) > 4:
        row = int(np.argmax(kinds > 4))
        raise bad_image(f"PNG row {row}: filter type {int(kinds[row])}, expected 0 to 4")
    if not kinds.any():
        return rows[:, 1:]
    width = stride // bpp
    data = rows[:, 1:].reshape(height, width, bpp).astype(np.int16)
    # padded with a zero row above and a zero column to the left: the neighbours of the edges
    out = np.zeros((height + 1, width + 1, bpp), np.int16)
    row_kind = kinds.astype(np.int16)[:, None]
    for d in range(height + width - 1):
        r = np.arange(max(0, d - width + 1), min(height - 1, d) + 1)
        x = d - r
        left, up, corner = out[r + 1, x], out[r, x + 1], out[r, x]
        k = row_kind[r]
        p = left + up - corner
        pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - corner)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, corner))
        predicted = np.select(
            [k == 1, k == 2, k == 3, k == 4], [left, up, (left + up) >> 1, paeth], 0
        )
        out[r + 1, x + 1] = (data[r, x] + predicted) & 0xFF
    return out[1:, 1:].astype(np.uint8).reshape(height, stride)
