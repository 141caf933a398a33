"""The one interface every framer has (pure logic: no I/O)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import numpy as np

from edge_agent.errors import SensorLineError

OnReject = Callable[[SensorLineError], None]


class Framed(NamedTuple):  # a tuple: built once per micro-batch, it costs less than a dataclass
    """A micro-batch's items: `x` what the model takes, (n, *input.shape) float32; `seen` what
    drift watches, (n, len(card.features)) (for a row of numbers, the same array as `x`);
    `watch` the items drift counts, by index, where not all (None): drift's tests take their
    items as independent draws, so of overlapping windows it counts one in every few."""

    x: np.ndarray
    seen: np.ndarray
    watch: np.ndarray | None = None


class Framer(Protocol):
    def frame(self, messages: list[tuple[str, bytes]], reject: OnReject) -> Framed | None:
        """The items that `messages` (format, raw bytes) complete, None if none; each message
        it cannot use goes to `reject` (its reason and detail) and the rest go on."""
        ...

    def restart(self) -> None:
        """Messages were lost before the next ones (the agent's queue was full): an item made
        of several messages (a window) must not span them."""
        ...


def wrong_format(kind: str, fmt: str, accepted: tuple[str, ...]) -> SensorLineError:
    return SensorLineError(
        "garbage",
        f"expected {' or '.join(accepted)} input for a {kind} model, got a {fmt!r} message",
    )
