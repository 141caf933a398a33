"""Training windows for a window model: the card's `window` section from what the engineer says
(`--channels ax,ay,az --window 128 --stride 64 --rate 50 --signal mean,rms,band_power:0-5`), and
raw windows made into the model's inputs by the device's own code (edge_agent.signal), so a
device computes exactly the features the model was validated on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from converters.data import check_items
from edge_agent.errors import ConfigError, MessageError
from edge_agent.protocol.input_spec import InputSpec, parse_input_spec
from edge_agent.signal import signal_features

# where the card's window fields come from on `edgehub model convert`
_FLAGS = {
    "input.features": "--channels",
    "input.window.size": "--window",
    "input.window.stride": "--stride",
    "input.window.rate_hz": "--rate",
    "input.window.signal": "--signal",
}


def window_spec(
    channels: Sequence[str],
    size: int,
    stride: int,
    rate_hz: float,
    signal: Sequence[str] = (),
) -> InputSpec:
    """The input of a window model: `size` samples of `channels`, one every 1/`rate_hz`
    seconds, a window every `stride` samples; the model takes the window (size, channels),
    or with `signal` the signal features it names (edge_agent.signal). Checked as a card's
    input section is, ConfigError naming the option otherwise."""
    section: dict[str, Any] = {
        "kind": "window",
        "features": list(channels),
        "window": {"size": size, "stride": stride, "rate_hz": rate_hz, "signal": list(signal)},
    }
    try:
        return parse_input_spec(section, "input", [])
    except MessageError as exc:
        text = str(exc)
        for field, flag in sorted(_FLAGS.items(), key=lambda kv: -len(kv[0])):
            if text.startswith(field):
                text = flag + text[len(field) :]
                break
        raise ConfigError(text) from exc


def window_items(windows: Any, spec: InputSpec) -> np.ndarray:
    """(n, size, channels) raw windows -> (n, *spec.shape) model inputs: the windows as they
    are, or their signal features computed as the device computes them."""
    assert spec.window is not None
    w = spec.window
    x = check_items(windows, (w.size, len(spec.features)), "window")
    return signal_features(x, w.signal, w.rate_hz) if w.signal else x
