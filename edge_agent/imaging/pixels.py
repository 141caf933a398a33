"""From decoded pixels to what the model takes, as the card's `image` section says: resized to
(height, width), with its channels (1 gray, 3 RGB), scaled `pixel * scale + offset`.

The converter prepares training images with `card_pixels` too, so a device and the hub resize
and convert alike. Pixels stay float32 0..255 until `scaled`; drift watches them there
(edge_agent.imaging.stats).
"""

from __future__ import annotations

import numpy as np

from edge_agent.protocol.input_spec import ImageSpec

LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as Pillow's "L" and OpenCV


def resize(image: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    """(h, w, c) pixels -> (height, width, c) float32. Pixel centres are aligned (a pixel
    covers [i, i+1) and is sampled at i + 0.5, as OpenCV's INTER_LINEAR and INTER_NEAREST_EXACT
    do); "bilinear" weighs the four nearest source pixels, "nearest" takes the one under the
    centre. Shrinking by much with bilinear aliases (no averaging over the footprint): give
    the device images near the model's size."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image.astype(np.float32, copy=False)
    if mode == "nearest":
        rows, cols = _nearest(height, h), _nearest(width, w)
        return image[rows[:, None], cols[None, :]].astype(np.float32)
    r0, r1, fr = _bilinear(height, h)
    c0, c1, fc = _bilinear(width, w)
    top, bottom = image[r0].astype(np.float32), image[r1].astype(np.float32)
    rows = top + (bottom - top) * fr[:, None, None]
    left, right = rows[:, c0], rows[:, c1]
    return left + (right - left) * fc[None, :, None]


def _nearest(n_out: int, n_in: int) -> np.ndarray:
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.intp), n_in - 1)


def _bilinear(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low index, high index, weight of the high one) of each output pixel along one axis."""
    at = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    low = np.floor(at).astype(np.intp)
    return low, np.minimum(low + 1, n_in - 1), (at - low).astype(np.float32)


def to_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """(h, w, 1 or 3) -> (h, w, channels): RGB to gray by luma, gray to RGB repeated."""
    have = pixels.shape[2]
    if have == channels:
        return pixels
    if channels == 1:
        return (pixels @ LUMA)[:, :, None]
    return np.repeat(pixels, channels, axis=2)


def card_pixels(image: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """Decoded (h, w, 1 or 3) pixels -> (height, width, channels) float32 0..255, as the card
    says (resized first: a gray conversion after resizing costs a fraction)."""
    return to_channels(resize(image, spec.height, spec.width, spec.resize), spec.channels)


def scaled(pixels: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """Pixels 0..255 -> the model's input values, `pixel * scale + offset`, float32."""
    return (pixels * np.float32(spec.scale) + np.float32(spec.offset)).astype(np.float32)


def unscaled(x: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """The model's input values -> pixels 0..255 (scaled's inverse; the card's scale is never
    0)."""
    return ((x - np.float32(spec.offset)) / np.float32(spec.scale)).astype(np.float32)
