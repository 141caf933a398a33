"""Training images for an image model: the card's `image` section from what the engineer says
(`--image 8x8x1 --scale ... --offset ... --resize ...`), and pixels 0..255 made into the model's
inputs by the device's own code (edge_agent.imaging), so a device resizes, converts and scales
exactly as the model was validated."""

from __future__ import annotations

import re

import numpy as np

from edge_agent.errors import BadDataError, ConfigError
from edge_agent.imaging import card_pixels, scaled
from edge_agent.protocol.input_spec import (
    IMAGE_CHANNELS,
    MAX_IMAGE_SIDE,
    RESIZE_MODES,
    ImageSpec,
    InputSpec,
)

_SIZE = re.compile(r"(\d+)x(\d+)x(\d+)")


def image_spec(
    size: str, scale: float | None = None, offset: float | None = None, resize: str | None = None
) -> InputSpec:
    """The input of an image model from "HxWxC" (e.g. "8x8x1", "96x96x3"); the model takes
    pixel * scale + offset (default 1/255 and 0), and other sizes are resized by `resize`
    (default bilinear)."""
    scale = 1 / 255 if scale is None else scale
    offset = 0.0 if offset is None else offset
    resize = resize or "bilinear"
    found = _SIZE.fullmatch(size.strip().lower())
    if found is None:
        raise ConfigError(f"--image: expected HxWxC such as 8x8x1 or 96x96x3, got {size!r}")
    height, width, channels = (int(v) for v in found.groups())
    if not (1 <= height <= MAX_IMAGE_SIDE and 1 <= width <= MAX_IMAGE_SIDE):
        raise ConfigError(f"--image: expected sides of 1 to {MAX_IMAGE_SIDE}, got {size!r}")
    if channels not in IMAGE_CHANNELS:
        raise ConfigError(f"--image: expected 1 (gray) or 3 (RGB) channels, got {channels}")
    if resize not in RESIZE_MODES:
        raise ConfigError(f"--resize: expected one of {RESIZE_MODES}, got {resize!r}")
    if not np.isfinite(scale) or scale == 0 or not np.isfinite(offset):
        raise ConfigError(
            f"--scale, --offset: expected finite numbers, scale not 0, got {scale}, {offset}"
        )
    image = ImageSpec(height, width, channels, resize, float(scale), float(offset))
    return InputSpec("image", (height, width, channels), image=image)


def image_items(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """(n, h, w) or (n, h, w, c) pixels 0..255 (c: 1 gray, 3 RGB, 4 RGBA) -> (n, *spec.shape)
    model inputs: resized, converted and scaled as the device does it."""
    arr = np.asarray(pixels)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[3] not in (1, 3, 4) or len(arr) < 1:
        raise BadDataError(
            f"images: expected an array of shape (n, H, W) or (n, H, W, C) with C 1, 3 or 4, "
            f"got {arr.shape}"
        )
    if arr.dtype.kind not in "uif":
        raise BadDataError(f"images: expected pixels as numbers, got {arr.dtype}")
    values = arr.astype(np.float32)
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 255:
        raise BadDataError(
            f"images: expected pixels from 0 to 255, got {values.min():g} to {values.max():g} "
            f"(scale them to 0..255 and declare the model's own scaling with --scale/--offset)"
        )
    assert spec.image is not None
    if values.shape[3] == 4:
        values = values[..., :3]  # alpha dropped, as the device's decoders do
    return np.stack([scaled(card_pixels(image, spec.image), spec.image) for image in values])
