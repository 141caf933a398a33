"""The health gate a freshly installed model must pass before it serves (pure decision)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from edge_agent.errors import BundleRejected, EdgefleetError
from edge_agent.protocol.card import ModelCard
from edge_agent.runtime import Runtime


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    reason: str
    agreement: float
    p50_latency_ms: float


def _agreement(card: ModelCard, got: np.ndarray) -> float:
    expected = np.asarray(card.sample_outputs)
    if card.task == "classification":
        return float(np.mean(got.astype(expected.dtype) == expected))
    expected = expected.astype(np.float64)
    tol = 1e-2 * np.maximum(1.0, np.abs(expected))
    return float(np.mean(np.abs(got.astype(np.float64) - expected) <= tol))


def check_health(card: ModelCard, runtime: Runtime, warmup: int = 3) -> HealthResult:
    """Run the card's sample one row at a time; check agreement and latency against the card."""
    x = np.asarray(card.sample_inputs, dtype=np.float32)
    if len(x) == 0:
        return HealthResult(False, "the card carries no sample to check", 0.0, math.inf)
    latencies = []
    outputs = []
    try:
        for _ in range(warmup):
            runtime.predict(x[:1])
        for row in x:
            start = time.perf_counter()
            outputs.append(runtime.predict(row[None, :])[0])
            latencies.append((time.perf_counter() - start) * 1000)
    except (EdgefleetError, RuntimeError, ValueError) as exc:
        return HealthResult(False, f"inference failed: {exc}", 0.0, math.inf)
    agreement = _agreement(card, np.asarray(outputs))
    p50 = float(np.percentile(latencies, 50))
    if agreement < card.min_agreement:
        return HealthResult(
            False,
            f"agreement with the card's sample {agreement:.2f} < required {card.min_agreement:.2f}",
            agreement,
            p50,
        )
    if p50 > card.max_latency_ms:
        return HealthResult(
            False, f"p50 latency {p50:.2f} ms > budget {card.max_latency_ms:.2f} ms", agreement, p50
        )
    return HealthResult(True, "", agreement, p50)


def require_health(card: ModelCard, runtime: Runtime) -> HealthResult:
    result = check_health(card, runtime)
    if not result.ok:
        raise BundleRejected("unhealthy", result.reason)
    return result
