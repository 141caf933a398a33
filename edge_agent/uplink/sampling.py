"""Sampled raw records: a share of inferred rows sent to the hub with their prediction.

Off by default (`telemetry.raw_sample_rate = 0`): raw inputs may be personal data. With a rate
r in (0, 1], each inferred row is kept with probability r, independently, and handed to `sink`
as the body of a telemetry record of its own::

    {"raw": {"model": {"name": "iris", "version": 3},
             "features": {"sepal length (cm)": 5.1, ...},
             "prediction": 0,
             "id": "pi-01/3/1520"}}

`id` is the row's prediction id (edge_agent.protocol.ids; absent for rows inferred before the
agent numbered them), the key ground truth for it comes back with.

The hub stores it like any telemetry record (once per (device, boot, seq)); a telemetry body
with `raw` is such a sample, one without is a window aggregate. The choice is pure: the random
source is injectable, so a test replays it exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np

from edge_agent.errors import ConfigError
from edge_agent.protocol.card import ModelCard
from edge_agent.protocol.records import RawSample

Sink = Callable[[dict[str, Any]], None]
RowId = Callable[[int], str]  # the prediction id of a batch's i-th row


def pick_rows(n: int, rate: float, rng: random.Random) -> list[int]:
    """Indices of the rows kept out of `n`, each with probability `rate`."""
    return [i for i in range(n) if rng.random() < rate]


def raw_body(
    card: ModelCard, row: np.ndarray, prediction: Any, row_id: str | None = None
) -> dict[str, Any]:
    """A sample's record body. Values that are not finite numbers become null (JSON has no NaN)."""
    features = {
        name: (float(v) if math.isfinite(v) else None)
        for name, v in zip(card.feature_names, row.tolist(), strict=True)
    }
    return RawSample(card.model, features, prediction, row_id).to_body()


class RawSampler:
    """What `Pipeline.process` offers every inferred batch to, when sampling is on."""

    def __init__(self, rate: float, sink: Sink, rng: random.Random | None = None) -> None:
        if not 0 < rate <= 1:
            raise ConfigError(f"raw_sample_rate expected a probability in (0, 1], found {rate!r}")
        self.rate = rate
        self.sink = sink
        self.rng = rng or random.Random()
        self.sampled = 0

    def offer(
        self,
        card: ModelCard,
        x: np.ndarray,
        predictions: np.ndarray,
        row_id: RowId | None = None,
    ) -> None:
        picked = pick_rows(len(x), self.rate, self.rng)
        if not picked:
            return
        labels = predictions.tolist()  # numpy scalars -> int, float, str, bool
        for i in picked:
            self.sink(raw_body(card, x[i], labels[i], row_id(i) if row_id is not None else None))
        self.sampled += len(picked)
