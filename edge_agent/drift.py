"""Drift statistics against the model card's reference profile (pure numpy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.protocol.card import ModelCard, bucket_counts

EPSILON = 1e-4


def psi(reference_counts: np.ndarray, live_counts: np.ndarray) -> float:
    """Population stability index of two histograms over the same bins."""
    ref = np.asarray(reference_counts, dtype=np.float64)
    live = np.asarray(live_counts, dtype=np.float64)
    p = np.clip(ref / max(ref.sum(), 1.0), EPSILON, None)
    q = np.clip(live / max(live.sum(), 1.0), EPSILON, None)
    return float(np.sum((q - p) * np.log(q / p)))


def classify(value: float, warn: float, alert: float) -> str:
    return "alert" if value >= alert else "warn" if value >= warn else "ok"


@dataclass
class DriftMonitor:
    """Collects a window of inputs and, when it is full, produces a drift report."""

    card: ModelCard
    window: int = 200
    warn: float = 0.1
    alert: float = 0.25
    _rows: list[np.ndarray] = field(default_factory=list, repr=False)
    _count: int = 0

    def add(self, x: np.ndarray) -> dict[str, Any] | None:
        """Add a batch of rows; returns a report each time a window completes. Rows past the
        window carry over to the next one, so each report covers exactly `window` rows."""
        self._rows.append(x)
        self._count += len(x)
        if self._count < self.window:
            return None
        data = np.concatenate(self._rows)
        rest = data[self.window :]
        self._rows = [rest] if len(rest) else []
        self._count = len(rest)
        return self.report(data[: self.window])

    def report(self, data: np.ndarray) -> dict[str, Any]:
        features = {}
        for j, profile in enumerate(self.card.features):
            col = data[:, j].astype(np.float64)
            live = bucket_counts(col, list(profile.edges))
            features[profile.name] = round(psi(np.asarray(profile.counts), live), 4)
        worst = max(features, key=lambda k: features[k])
        return {
            "model": self.card.model.to_json(),
            "window": len(data),
            "psi": features,
            "max_psi": features[worst],
            "worst_feature": worst,
            "status": classify(features[worst], self.warn, self.alert),
        }
