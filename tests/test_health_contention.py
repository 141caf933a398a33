"""The health gate judges the model, not the neighbours: time a row spends waiting for a core
(a device busy with other work, a hundred simulated devices on two cores) is not the model's
latency, and a model that really costs more than its budget still fails."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from converters.pipeline import build_bundle
from edge_agent.inference.runtime import Runtime, load_runtime
from edge_agent.protocol.card import ModelCard
from edge_agent.update.bundle import read_bundle
from edge_agent.update.health import check_health

STALL_S = 0.02  # per row: what a descheduled thread waits, or what a slow model burns
BUDGET_MS = 5.0


class Stalled:
    """The real runtime, with every row waiting `STALL_S` off the CPU first (as a thread does
    while the cores run other work), or burning it on the CPU (as a slow model does)."""

    def __init__(self, runtime: Runtime, burn: bool) -> None:
        self._runtime, self._burn = runtime, burn

    def _stall(self) -> None:
        if self._burn:
            end = time.thread_time() + STALL_S
            while time.thread_time() < end:
                pass
        else:
            threading.Event().wait(STALL_S)  # off the CPU, like a thread waiting for a core

    def predict(self, x: np.ndarray) -> np.ndarray:
        self._stall()
        return self._runtime.predict(x)

    def scores(self, x: np.ndarray) -> np.ndarray | None:
        return self._runtime.scores(x)

    def predict_with_scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        self._stall()
        return self._runtime.predict_with_scores(x)


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelCard, Runtime]:
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    out = tmp_path_factory.mktemp("gate") / "iris.zip"
    build_bundle(model, x, y, name="iris", version=1, out=out, max_latency_ms=BUDGET_MS)
    bundle = read_bundle(out.read_bytes(), None, 10**8)
    return bundle.card, load_runtime(bundle.card, bundle.model_bytes)


def test_waiting_for_a_core_does_not_fail_the_gate(iris: tuple[ModelCard, Runtime]) -> None:
    card, runtime = iris
    start = time.perf_counter()
    result = check_health(card, Stalled(runtime, burn=False))
    wall_per_row_ms = (time.perf_counter() - start) * 1000 / len(card.sample_inputs)
    assert wall_per_row_ms > 2 * BUDGET_MS  # by the wall clock every row was over budget
    assert result.ok, result.reason
    assert result.p50_latency_ms < BUDGET_MS


def test_a_model_that_burns_its_budget_still_fails(iris: tuple[ModelCard, Runtime]) -> None:
    card, runtime = iris
    result = check_health(card, Stalled(runtime, burn=True))
    assert not result.ok
    assert "ms of CPU > budget 5.00 ms" in result.reason
    assert result.p50_latency_ms >= STALL_S * 1000


def test_the_budget_is_the_cards(iris: tuple[ModelCard, Runtime]) -> None:
    card, runtime = iris
    tight = dataclasses.replace(card, max_latency_ms=1e-6)
    assert not check_health(tight, runtime).ok
    assert check_health(card, runtime).ok
