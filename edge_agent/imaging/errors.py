"""How an image is refused, and the checks every decoder shares."""

from __future__ import annotations

import numpy as np

from edge_agent.errors import SensorLineError

BAD_IMAGE = "bad-image"  # the reason a refused image is counted under


def bad_image(detail: str) -> SensorLineError:
    return SensorLineError(BAD_IMAGE, detail)


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Refuse, before decoding anything, an image whose header claims more than `max_pixels`
    (a decompression bomb: a few bytes that claim gigabytes of pixels)."""
    if width * height > max_pixels:
        raise bad_image(
            f"an image of {width}x{height} pixels: expected at most {max_pixels} pixels"
        )


def to_8bit(values: np.ndarray, maxval: int) -> np.ndarray:
    """Integer samples 0..maxval -> uint8 0..255, rounded."""
    if maxval == 255:
        return values.astype(np.uint8)
    wide = values.astype(np.uint32)
    return ((wide * 255 + maxval // 2) // maxval).astype(np.uint8)
