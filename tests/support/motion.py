"""An accelerometer for window models: three channels (ax, ay, az, in m/s^2, gravity on az) at
RATE Hz, printed by the sensor with 3 decimals, in three motions: idle (still, a little noise),
walk (a 1.8 Hz sway) and shake (a 7 Hz jolt). Segments of each are continuous streams (a random
phase each), cut into windows as a device frames them."""

from __future__ import annotations

import numpy as np

CHANNELS = ("ax", "ay", "az")
RATE = 50.0
MOTIONS = ("idle", "walk", "shake")
GRAVITY = 9.81
# per motion: frequency (Hz), amplitude per channel, noise
_SHAPE = {
    "idle": (0.0, (0.0, 0.0, 0.0), 0.03),
    "walk": (1.8, (1.5, 0.8, 1.0), 0.15),
    "shake": (7.0, (3.0, 2.5, 1.5), 0.3),
}


def samples(motion: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) float32 samples of one motion, as the sensor prints them (3 decimals)."""
    freq, amplitude, noise = _SHAPE[motion]
    t = np.arange(n)[:, None] / RATE
    phase = rng.uniform(0, 2 * np.pi, 3)
    wave = np.asarray(amplitude) * np.sin(2 * np.pi * freq * t + phase)
    wave[:, 2] += GRAVITY
    return np.round(wave + noise * rng.normal(size=(n, 3)), 3).astype(np.float32)


def windows_of(stream: np.ndarray, size: int, stride: int) -> np.ndarray:
    """The windows a device frames from `stream` (n, channels): floor((n - size) / stride) + 1,
    cut here by slicing."""
    starts = range(0, len(stream) - size + 1, stride)
    return np.stack([stream[s : s + size] for s in starts])


def dataset(per_motion: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(windows (n, size, 3), labels (n,) motion names): `per_motion` windows of each motion,
    each from a segment of its own, in a shuffled order."""
    windows = [samples(m, size, rng) for m in MOTIONS for _ in range(per_motion)]
    labels = np.repeat(np.asarray(MOTIONS), per_motion)
    order = rng.permutation(len(labels))
    return np.stack(windows)[order], labels[order]


def lines(stream: np.ndarray, fmt: str = "csv") -> list[bytes]:
    """The sensor's lines: "0.012,-0.340,9.807" (csv) or {"ax": 0.012, ...} (json)."""
    if fmt == "csv":
        return [",".join(f"{v:.3f}" for v in row).encode() for row in stream]
    return [
        (
            "{" + ", ".join(f'"{c}": {v:.3f}' for c, v in zip(CHANNELS, row, strict=True)) + "}"
        ).encode()
        for row in stream
    ]
