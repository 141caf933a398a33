"""JPEG and other formats through Pillow or OpenCV, where one is installed (neither is part of
the base install: `pip install 'edgefleet[camera]'` brings OpenCV). Imported when an image
needs them, never at module level.

Bounded like the decoders of this package: Pillow reads only the header on open, so the size
is checked before any pixel is decoded; OpenCV decodes in one call, so it is handed only JPEG,
whose size is read from its frame header first and which must end with its end-of-image
marker (a cut file is refused, not decoded half grey).
"""

from __future__ import annotations

import io
import struct
import warnings
from typing import Any

import numpy as np

from edge_agent.imaging.errors import bad_image, check_pixels

JPEG_MAGIC = b"\xff\xd8\xff"
INSTALL_HINT = "install Pillow or OpenCV on the device (pip install 'edgefleet[camera]')"
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers


def decode_with_library(data: bytes, max_pixels: int) -> np.ndarray:
    """A JPEG or another format -> (height, width, 1 or 3) uint8, by Pillow, else (JPEG only)
    by OpenCV."""
    pil = _import("PIL.Image")
    if pil is not None:
        return _pillow(pil, data, max_pixels)
    jpeg = data.startswith(JPEG_MAGIC)
    cv2 = _import("cv2")
    if cv2 is not None and jpeg:
        return _opencv(cv2, data, max_pixels)
    if jpeg:
        raise bad_image(f"a JPEG needs Pillow or OpenCV, and neither is installed: {INSTALL_HINT}")
    raise bad_image(
        f"expected PNG, PGM/PPM, .npy or JPEG, got bytes starting {data[:8]!r} (other formats "
        "are read with Pillow, which is not installed)"
    )


def _import(name: str) -> Any:
    try:
        return __import__(name, fromlist=["_"])
    except ImportError:
        return None


def _pillow(pil: Any, data: bytes, max_pixels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its bomb warning: the limit here is our own
            with pil.open(io.BytesIO(data)) as image:  # reads the header only
                check_pixels(image.width, image.height, max_pixels)
                gray = image.mode in ("1", "L", "LA", "I", "I;16", "F")
                pixels = np.asarray(image.convert("L" if gray else "RGB"))
    except (OSError, ValueError, SyntaxError, EOFError, pil.DecompressionBombError) as exc:
        raise bad_image(f"Pillow cannot read the image: {exc}") from exc
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's start-of-frame header, walking its marker segments."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            break
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        (length,) = struct.unpack_from(">H", data, at + 2)
        if marker in _SOF:
            if at + 9 > len(data):
                break
            height, width = struct.unpack_from(">HH", data, at + 5)
            return width, height
        at += 2 + length
    raise bad_image("JPEG without a readable frame header (truncated or not JPEG)")


def _opencv(cv2: Any, data: bytes, max_pixels: int) -> np.ndarray:
    width, height = jpeg_size(data)
    check_pixels(width, height, max_pixels)
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise bad_image("truncated JPEG: no end-of-image marker")
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.dtype != np.uint8:
        raise bad_image("OpenCV cannot read the JPEG")
    if pixels.ndim == 2:
        return pixels[:, :, None]
    return np.ascontiguousarray(pixels[:, :, 2::-1])  # BGR(A) -> RGB
