"""The health gate a freshly installed model must pass before it serves (pure decision).

The card's sample runs one row at a time, as sensor lines arrive: every row must give a finite
output (the share of rows that raise or give NaN/inf is the error rate, checked against the
card's `max_error_rate`), the outputs must agree with the card's (`min_agreement`; an anomaly
model's score within 1% and on the same side of the card's threshold), and the
p50 latency must stay within the card's budget (`max_latency_ms`).

Latency here is the CPU time of the thread that runs the inference (`time.thread_time`), not
the wall clock: a device busy with other work (or a hundred simulated devices sharing two cores)
waits longer for a core, but the model costs the same, and a gate must judge the model, not
the neighbours. The runtimes run a row on the calling thread (onnxruntime and TFLite with one
intra-op thread, as the agent opens them by default), so its CPU time is the model's whole
cost; with `runtime.threads` above 1 the pool's other threads are not counted.
"""

from __future__ import annotations

import math
import time

import numpy as np

from edge_agent.inference.runtime import INFERENCE_ERRORS, Runtime
from edge_agent.protocol.card import Anomaly, ModelCard
from edge_agent.protocol.frozen import frozen
from edge_agent.uplink.telemetry import percentile


@frozen
class HealthResult:
    ok: bool
    reason: str
    agreement: float
    p50_latency_ms: float
    error_rate: float = 0.0


def outputs_agree(
    task: str, expected: np.ndarray, got: np.ndarray, anomaly: Anomaly | None = None
) -> np.ndarray:
    """Per row: the same label (classification), a value within 1% (regression), and for an
    anomaly model (read by `anomaly`) a score within 1% that flags the row the same way."""
    expected = np.asarray(expected)
    if task == "classification":
        return np.asarray(got).astype(expected.dtype) == expected
    want = expected.astype(np.float64)
    tol = 1e-2 * np.maximum(1.0, np.abs(want))
    close = np.abs(np.asarray(got).astype(np.float64) - want) <= tol
    if anomaly is None:
        return close
    return close & (anomaly.flags(got) == anomaly.flags(want))


def _finite(value: object) -> bool:
    return not isinstance(value, float | np.floating) or math.isfinite(value)


def check_health(card: ModelCard, runtime: Runtime) -> HealthResult:
    """Run the card's sample one row at a time; check errors, agreement and latency."""
    x = card.sample_items()
    if len(x) == 0:
        return HealthResult(False, "the card carries no sample to check", 0.0, math.inf, 1.0)
    expected = np.asarray(card.sample_outputs)
    latencies: list[float] = []
    agree = 0
    errors: list[str] = []
    for i, row in enumerate(x):
        start = time.thread_time()
        try:
            got = runtime.predict(row[None, ...])[0]
        except INFERENCE_ERRORS as exc:
            errors.append(f"row {i}: {exc}")
            continue
        latencies.append((time.thread_time() - start) * 1000)
        if not _finite(got):
            errors.append(f"row {i}: output {got}")
            continue
        agree += int(
            outputs_agree(card.task, expected[i : i + 1], np.asarray([got]), card.anomaly)[0]
        )
    error_rate = len(errors) / len(x)
    agreement = agree / len(x)
    p50 = float(percentile(np.asarray(latencies), (50,))[0]) if latencies else math.inf
    if error_rate > card.max_error_rate:
        return HealthResult(
            False,
            f"error rate {error_rate:.2f} > allowed {card.max_error_rate:.2f} "
            f"({len(errors)} of {len(x)} sample rows; first: {errors[0]})",
            agreement,
            p50,
            error_rate,
        )
    if agreement < card.min_agreement:
        return HealthResult(
            False,
            f"agreement with the card's sample {agreement:.2f} < required {card.min_agreement:.2f}",
            agreement,
            p50,
            error_rate,
        )
    if p50 > card.max_latency_ms:
        return HealthResult(
            False,
            f"p50 latency {p50:.2f} ms of CPU > budget {card.max_latency_ms:.2f} ms",
            agreement,
            p50,
            error_rate,
        )
    return HealthResult(True, "", agreement, p50, error_rate)
