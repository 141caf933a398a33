"""The names of signal features a window card may declare (`input.window.signal`): the grammar,
checked when a card is read. What each one computes is `edge_agent.signal`.

    mean, std, rms, min, max, ptp     per channel, over the window's samples
    band_power:LO-HI                  per channel, the power in LO <= f < HI Hz (decimals allowed)

A band must hold at least one frequency of the window's real FFT (size samples at rate_hz:
0, rate/size, 2*rate/size, ... up to rate/2); a band reaching past rate/2 holds the highest
of them too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from edge_agent.errors import MessageError
from edge_agent.protocol.frozen import frozen

STATS = ("mean", "std", "rms", "min", "max", "ptp")
BAND = "band_power"
MAX_SIGNAL = 32  # signal features in one card
_NUMBER = r"(\d+(?:\.\d+)?)"
_BAND = re.compile(rf"{BAND}:{_NUMBER}-{_NUMBER}")
GRAMMAR = f"one of {', '.join(STATS)} or {BAND}:LO-HI (Hz, e.g. {BAND}:0.5-3)"


@frozen
class SignalFeature:
    name: str  # as declared: "rms", "band_power:0-5"
    kind: str  # one of STATS, or BAND
    low_hz: float = 0.0  # BAND only: LO <= f < HI
    high_hz: float = 0.0


def parse_signal(
    names: Sequence[str], size: int, rate_hz: float, where: str = "signal"
) -> tuple[SignalFeature, ...]:
    """The declared names of a window of `size` samples at `rate_hz`, checked; MessageError
    naming `where[i]`, what was expected and what came otherwise."""
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise MessageError(f"{where}[{i}]: expected {GRAMMAR}, got {name!r:.40}")
    return _parse(tuple(names), int(size), float(rate_hz), where)


@lru_cache(maxsize=64)
def _parse(
    names: tuple[str, ...], size: int, rate_hz: float, where: str
) -> tuple[SignalFeature, ...]:
    if len(names) > MAX_SIGNAL:
        raise MessageError(f"{where}: expected at most {MAX_SIGNAL} features, got {len(names)}")
    out: dict[tuple[str, float, float], SignalFeature] = {}
    for i, name in enumerate(names):
        at = f"{where}[{i}]"
        feature = _one(name, size, rate_hz, at)
        twin = out.setdefault((feature.kind, feature.low_hz, feature.high_hz), feature)
        if twin is not feature:
            raise MessageError(f"{at}: {name!r} repeats {twin.name!r}; expected each feature once")
    return tuple(out.values())


def _one(name: str, size: int, rate_hz: float, at: str) -> SignalFeature:
    if name in STATS:
        return SignalFeature(name, name)
    band = _BAND.fullmatch(name)
    if band is None:
        from difflib import get_close_matches  # only for a wrong name

        close = get_close_matches(name.split(":")[0], [*STATS, BAND], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise MessageError(f"{at}: expected {GRAMMAR}, got {name!r:.40}.{hint}")
    feature = SignalFeature(name, BAND, float(band.group(1)), float(band.group(2)))
    low, high = feature.low_hz, feature.high_hz
    if not low < high:
        raise MessageError(f"{at}: {name!r}: expected LO < HI, got {low:g} and {high:g} Hz")
    if not band_mask(feature, size, rate_hz).any():
        raise MessageError(
            f"{at}: {name!r}: expected a band holding at least one frequency of a "
            f"{size}-sample window at {rate_hz:g} Hz ({rate_hz / size:g} Hz apart, up to "
            f"{frequencies(size, rate_hz)[-1]:g} Hz), got none in [{low:g}, {high:g}) Hz"
        )
    return feature


def frequencies(size: int, rate_hz: float) -> np.ndarray:
    """The frequencies of a real FFT of `size` samples at `rate_hz`: k * rate_hz / size,
    k = 0 .. size // 2."""
    return np.arange(size // 2 + 1) * rate_hz / size


def band_mask(feature: SignalFeature, size: int, rate_hz: float) -> np.ndarray:
    """Which of `frequencies(size, rate_hz)` a band holds: LO <= f < HI."""
    f = frequencies(size, rate_hz)
    return (f >= feature.low_hz) & (f < feature.high_hz)
