"""A numpy `.npy` array as an image: (H, W) or (H, W, C) with C 1, 3 (RGB) or 4 (RGBA, alpha
dropped), any integer or float type with values 0..255. No pickles: object arrays are refused.
How a camera frame travels from the camera source to the framer."""

from __future__ import annotations

import io
import math

import numpy as np

from edge_agent.imaging.errors import bad_image, check_pixels

MAGIC = b"\x93NUMPY"
_MAX_HEADER = 4096


def encode_npy(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(pixels), allow_pickle=False)
    return out.getvalue()


def decode_npy(data: bytes, max_pixels: int) -> np.ndarray:
    """.npy bytes -> (height, width, 1 or 3) pixels, uint8 or float32 0..255."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read(stream, max_header_size=_MAX_HEADER)
    except (ValueError, OSError, SyntaxError) as exc:
        raise bad_image(f".npy header: {exc}") from exc
    if dtype.hasobject or dtype.kind not in "uif" or dtype.fields is not None:
        raise bad_image(f".npy of {dtype}: expected integer or float pixels")
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
        raise bad_image(f".npy of shape {shape}: expected (H, W) or (H, W, C) with C 1, 3 or 4")
    height, width = shape[0], shape[1]
    if height < 1 or width < 1:
        raise bad_image(f".npy of shape {shape}: expected at least 1x1 pixels")
    check_pixels(width, height, max_pixels)
    size = math.prod(shape) * dtype.itemsize
    body = data[stream.tell() : stream.tell() + size]
    if len(body) < size:
        raise bad_image(f"truncated .npy: {len(body)} bytes of pixels, expected {size}")
    values = np.frombuffer(body, dtype).reshape(shape, order="F" if fortran else "C")
    if values.ndim == 2:
        values = values[:, :, None]
    values = values[..., :3] if values.shape[2] == 4 else values
    if dtype != np.uint8:
        values = values.astype(np.float32)
        if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 255:
            raise bad_image(".npy pixels: expected finite values from 0 to 255")
    return values
