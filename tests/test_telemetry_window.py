"""Telemetry windows and running statistics: what a record says about the rows it saw."""

from __future__ import annotations

from collections import Counter, deque

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.telemetry import RunningStats, Window, percentiles

# One micro-batch: its latency and its predictions, all of one type (one model's outputs).
BATCH = st.tuples(
    st.floats(0.001, 50.0),
    st.one_of(
        st.lists(st.integers(0, 2), min_size=1, max_size=16).map(np.asarray),
        st.lists(st.sampled_from(["benign", "malignant"]), min_size=1, max_size=16).map(np.asarray),
        st.lists(st.floats(-5, 5), min_size=1, max_size=16).map(
            lambda v: np.asarray(v, np.float32)
        ),
    ),
)


@settings(max_examples=100, derandomize=True, database=None, deadline=None)
@given(batches=st.lists(BATCH, max_size=30), rejects=st.lists(st.sampled_from(["garbage", "x"])))
def test_window_record_counts_every_row(
    batches: list[tuple[float, np.ndarray]], rejects: list[str]
) -> None:
    """Each row carries its batch's latency and its own prediction (as a string)."""
    window = Window(100.0)
    for latency_ms, predictions in batches:
        window.add(latency_ms, predictions)
    for reason in rejects:
        window.reject(reason)
    per_row_ms = [ms for ms, predictions in batches for _ in range(len(predictions))]
    labels = Counter(str(v) for _, predictions in batches for v in predictions.tolist())
    assert window.empty == (not batches and not rejects)
    assert window.to_record(102.5, None) == {
        "window_s": 2.5,
        "model": None,
        "count": len(per_row_ms),
        "latency_ms": percentiles(per_row_ms),
        "errors": dict(Counter(rejects)),
        "predictions": dict(labels),
    }
    assert list(window.to_record(103.0, None)["predictions"]) == list(labels)  # first seen first


@settings(max_examples=50, derandomize=True, database=None, deadline=None)
@given(batches=st.lists(st.tuples(st.floats(0.001, 50.0), st.integers(1, 40)), max_size=40))
def test_running_stats_keep_one_latency_per_row_up_to_the_reservoir(
    batches: list[tuple[float, int]],
) -> None:
    stats = RunningStats(recent_ms=deque(maxlen=100))
    for latency_ms, n in batches:
        stats.add(latency_ms, n)
    per_row_ms = [ms for ms, n in batches for _ in range(n)]
    assert stats.inferences == len(per_row_ms)
    assert list(stats.recent_ms) == per_row_ms[-100:]
