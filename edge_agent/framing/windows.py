"""A window model: each sensor line is one sample of the card's channels (csv or json, parsed by
edge_agent.sources.line_parser), and `size` consecutive samples, every `stride` samples, make
one window.

Samples go into a ring. After a (re)start, the window of the last `size` samples is framed once
`size` samples are there, then again after every `stride` more: n samples in a row give
floor((n - size) / stride) + 1 windows (stride < size: windows overlap; stride > size: the
samples between two windows are skipped). The model takes the window itself, (size, channels),
or its signal features (edge_agent.signal); drift watches a summary of each channel or the
signal features (edge_agent.framing.watch), never one value per sample. Overlapping windows
(stride < size) share samples, so their summaries are not independent draws, which drift's
tests assume (a stream of windows 16 samples apart of 128, drift-free, warned in 61 of 100
reports): drift counts only the windows that do not overlap the last one it counted, every
ceil(size / stride)-th since framing (re)started; the model still answers every window.

A window never spans a hole in its samples that the framer sees. A line that is refused
(counted under its reason like any sensor line) drops the window being filled and framing
starts again at the next good sample; so does a pause: when no line came for `gap_s`
(GAP_PERIODS sample periods, at least MIN_GAP_S) before a micro-batch. `restarts` counts the
windows dropped half filled. So do lines the agent's queue had no room for (a device too slow
for its sensor; counted as queue-full): the queue marks where they were lost
(edge_agent.sources.backlog.GAP) and the pipeline calls `restart` there. The samples of every
input of lines are framed together, in the order they arrive: give a window model one input.

A sample's values must fit the channel's range, widened as a row's bounds are: the reference's
min and max where drift watches them, else the reach of its windows' mean and std, or RMS
(`_reach`), else any float32. A sample line is short: the parser's line limit follows the
number of channels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from edge_agent.errors import SensorLineError
from edge_agent.framing.base import Framed, OnReject, wrong_format
from edge_agent.framing.rows import widened
from edge_agent.framing.watch import watched
from edge_agent.protocol.card import FeatureProfile, ModelCard
from edge_agent.signal import signal_features
from edge_agent.sources.line_parser import FORMATS, LineParser

GAP_PERIODS = 10  # sample periods without a line that end a window being filled
# ... and never less: the pause is seen between micro-batches, so a device that stalls this long
# (the pipeline busy, lines waiting) restarts too
MIN_GAP_S = 5.0
LINE_BYTES = 64  # a sample line's limit: this, plus per channel its name and VALUE_BYTES
VALUE_BYTES = 40  # a float's text (at most 24 characters), quotes, separators and spaces


def sample_line_bytes(channels: tuple[str, ...] | list[str]) -> int:
    """The longest sample line of these channels a parser accepts (csv or json)."""
    return LINE_BYTES + sum(len(name.encode()) + VALUE_BYTES for name in channels)


def channel_bounds(card: ModelCard) -> list[tuple[float, float]]:
    """(low, high) per channel of a window card, from what its reference holds (see above)."""
    assert card.input.window is not None
    profiles = {f.name: f for f in card.features}
    size = card.input.window.size
    bounds = []
    for channel in card.input.features:
        low, high = profiles.get(f"{channel}.min"), profiles.get(f"{channel}.max")
        if low is not None and high is not None:
            reach: tuple[float, float] | None = (low.min, high.max)
        else:
            reach = _reach(profiles, channel, size)
        # without a range, the parser keeps values within float32
        bounds.append(widened(card, *reach) if reach else (-math.inf, math.inf))
    return bounds


def _reach(
    profiles: dict[str, FeatureProfile], channel: str, size: int
) -> tuple[float, float] | None:
    """The range a sample of a reference-like window can be in, from the channel's mean and
    std (no sample is further than sqrt(size - 1) std from its window's mean: Samuelson's
    inequality) or its RMS (none is beyond sqrt(size) times the RMS); None if neither is
    watched."""
    mean, std = profiles.get(f"{channel}.mean"), profiles.get(f"{channel}.std")
    if mean is not None and std is not None:
        reach = math.sqrt(size - 1) * std.max
        return mean.min - reach, mean.max + reach
    rms = profiles.get(f"{channel}.rms")
    if rms is not None:
        return -math.sqrt(size) * rms.max, math.sqrt(size) * rms.max
    return None


class WindowFramer:
    def __init__(self, card: ModelCard, clock: Callable[[], float] = time.monotonic) -> None:
        window = card.input.window
        assert window is not None
        self._spec = card.input
        self._size, self._stride = window.size, window.stride
        self._signal, self._rate = window.signal, window.rate_hz
        names = list(card.input.features)
        bounds = channel_bounds(card)
        limit = sample_line_bytes(names)
        self._parsers = {fmt: LineParser(names, fmt, bounds, limit) for fmt in FORMATS}
        # each sample is written twice, at i and i + size: the last `size` are one slice
        self._ring = np.zeros((2 * self._size, len(names)), dtype=np.float32)
        self._count = 0  # samples since framing (re)started
        self._watch_every = -(-self._size // self._stride)  # windows from one counted to the next
        self._clock = clock
        self.gap_s = max(MIN_GAP_S, GAP_PERIODS / self._rate)
        self._last: float | None = None  # when the last micro-batch came
        self.restarts = 0

    def frame(self, messages: list[tuple[str, bytes]], reject: OnReject) -> Framed | None:
        if not messages:
            return None
        now = self._clock()
        if self._last is not None and now - self._last > self.gap_s:
            self.restart()
        self._last = now
        size, stride, ring, parsers = self._size, self._stride, self._ring, self._parsers
        windows: list[np.ndarray] = []
        watch: list[int] = []  # of `windows`, those drift counts
        for fmt, raw in messages:
            try:
                parser = parsers.get(fmt)
                if parser is None:
                    raise wrong_format("window", fmt, FORMATS)
                values = parser.values(raw)
            except SensorLineError as exc:
                reject(exc)
                self.restart()
                continue
            at = self._count % size
            ring[at] = ring[at + size] = values
            self._count += 1
            if self._count >= size and (self._count - size) % stride == 0:
                start = self._count % size
                if (self._count - size) // stride % self._watch_every == 0:
                    watch.append(len(windows))
                windows.append(ring[start : start + size].copy())
        if not windows:
            return None
        x = np.stack(windows)
        if self._signal:
            x = signal_features(x, self._signal, self._rate)
        counted = None if len(watch) == len(windows) else np.asarray(watch, dtype=np.intp)
        return Framed(x, watched(self._spec, x), counted)

    def restart(self) -> None:
        """Drop the window being filled (if any sample of it came since the last one)."""
        if self._count and (self._count < self._size or (self._count - self._size) % self._stride):
            self.restarts += 1
        self._count = 0
