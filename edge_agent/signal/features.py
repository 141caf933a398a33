"""Computing signal features (edge_agent.signal says what each one is)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from edge_agent.errors import BadDataError, ConfigError, MessageError
from edge_agent.protocol.signal_names import BAND, band_mask, parse_signal

_STATS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda x: x.mean(axis=1),
    "std": lambda x: x.std(axis=1),
    "rms": lambda x: np.sqrt(np.square(x).mean(axis=1)),
    "min": lambda x: x.min(axis=1),
    "max": lambda x: x.max(axis=1),
    "ptp": lambda x: np.ptp(x, axis=1),
}


def signal_names(channels: Sequence[str], signal: Sequence[str]) -> list[str]:
    """The names of `signal_features`' columns: "channel.feature", channel by channel."""
    return [f"{channel}.{name}" for channel in channels for name in signal]


def signal_features(windows: np.ndarray, signal: Sequence[str], rate_hz: float) -> np.ndarray:
    """(n, samples, channels) windows at `rate_hz` -> (n, channels * len(signal)) float32:
    column c * len(signal) + j is feature signal[j] of channel c (`signal_names`).

    ConfigError for a name that is not a signal feature (or a band that holds no frequency
    of such a window); BadDataError for windows that are not (n, samples, channels)."""
    x = np.asarray(windows)
    if x.ndim != 3 or x.shape[1] < 1 or x.shape[2] < 1 or x.dtype.kind not in "iuf":
        raise BadDataError(
            f"windows: expected numbers of shape (n, samples, channels), got an array of "
            f"shape {x.shape} ({x.dtype})"
        )
    n, size, channels = x.shape
    try:
        features = parse_signal(signal, size, rate_hz)
    except MessageError as exc:
        raise ConfigError(str(exc)) from exc
    x = x.astype(np.float64)
    power = None
    columns = []  # each (n, channels)
    for feature in features:
        if feature.kind == BAND:
            if power is None:
                power = _power(x)
            columns.append(power[:, band_mask(feature, size, rate_hz), :].sum(axis=1))
        else:
            columns.append(_STATS[feature.kind](x))
    out = np.stack(columns, axis=2) if columns else np.empty((n, channels, 0))
    return out.reshape(n, channels * len(features)).astype(np.float32)


def _power(x: np.ndarray) -> np.ndarray:
    """(n, size, channels) -> (n, size // 2 + 1, channels): each frequency's share of the mean
    square (Parseval: they add up to mean(x**2) over the samples)."""
    size = x.shape[1]
    power = np.square(np.abs(np.fft.rfft(x, axis=1))) / (size * size)
    last = size // 2 if size % 2 == 0 else size // 2 + 1  # the Nyquist bin is not mirrored
    power[:, 1:last, :] *= 2
    return power
