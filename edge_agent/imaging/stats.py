"""What drift watches of images: a handful of statistics per image, whatever its size, computed
on the card-sized pixels (0..255, before scaling).

- per channel: mean and standard deviation (`mean`, `std` for gray; `mean_r` ... `std_b` for RGB,
  plus `brightness` and `contrast`, the mean and standard deviation of luma);
- `sharpness`: the variance of the 4-neighbour Laplacian of luma (focus, blur, motion), 0 for
  images under 3x3;
- `clipped_dark`, `clipped_bright`: the share of values at 0 or 255 (under- or over-exposure).
"""

from __future__ import annotations

import numpy as np

from edge_agent.imaging.pixels import LUMA

_CLIP_LOW, _CLIP_HIGH = 0.5, 254.5  # pixels recovered from scaled model inputs carry float error
_COMMON = ["sharpness", "clipped_dark", "clipped_bright"]


def stat_names(channels: int) -> list[str]:
    if channels == 1:
        return ["mean", "std", *_COMMON]
    colors = "rgb"
    return [
        *(f"mean_{c}" for c in colors),
        *(f"std_{c}" for c in colors),
        "brightness",
        "contrast",
        *_COMMON,
    ]


def image_stats(pixels: np.ndarray) -> np.ndarray:
    """(n, h, w, c) pixels 0..255 -> (n, len(stat_names(c))) float32 statistics."""
    n, h, w, c = pixels.shape
    p = pixels.astype(np.float32, copy=False)
    flat = p.reshape(n, h * w, c)
    columns = [flat.mean(axis=1), flat.std(axis=1)]
    luma = p[..., 0] if c == 1 else p @ LUMA
    if c != 1:
        luma_flat = luma.reshape(n, h * w)
        columns += [luma_flat.mean(axis=1)[:, None], luma_flat.std(axis=1)[:, None]]
    if h >= 3 and w >= 3:
        lap = (
            4 * luma[:, 1:-1, 1:-1]
            - luma[:, :-2, 1:-1]
            - luma[:, 2:, 1:-1]
            - luma[:, 1:-1, :-2]
            - luma[:, 1:-1, 2:]
        )
        sharpness = lap.reshape(n, -1).var(axis=1)
    else:
        sharpness = np.zeros(n, np.float32)
    values = p.reshape(n, -1)
    columns += [
        sharpness[:, None],
        (values < _CLIP_LOW).mean(axis=1)[:, None],
        (values > _CLIP_HIGH).mean(axis=1)[:, None],
    ]
    return np.concatenate(columns, axis=1).astype(np.float32)
