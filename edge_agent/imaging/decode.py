"""Bytes of one image, whatever its format, to pixels: the one entry point of the decoders."""

from __future__ import annotations

import numpy as np

from edge_agent.imaging import libs, netpbm, npy, png
from edge_agent.imaging.errors import bad_image

MAX_PIXELS = 4096 * 4096  # what an image's header may claim (the card's largest side, squared)


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """(height, width, 1 or 3) pixels 0..255 (uint8, or float32 from a float .npy) of PNG,
    binary PGM/PPM or .npy bytes, natively; of JPEG and other formats where Pillow or OpenCV
    is installed. Anything that is not a readable image, or claims more than `max_pixels`,
    raises SensorLineError("bad-image", what is wrong)."""
    if not data:
        raise bad_image("an empty message, expected an image")
    if data.startswith(png.SIGNATURE):
        return png.decode_png(data, max_pixels)
    if data[:1] == b"P" and data[1:2].isdigit():
        return netpbm.decode_netpbm(data, max_pixels)
    if data.startswith(npy.MAGIC):
        return npy.decode_npy(data, max_pixels)
    return libs.decode_with_library(data, max_pixels)
