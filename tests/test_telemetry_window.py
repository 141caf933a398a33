"""Telemetry windows and running statistics: what a record says about the rows it saw, and
(through the real pipeline) which model's rows a window holds."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from edge_agent.inference.pipeline import ActiveModel, Pipeline
from edge_agent.protocol.card import unique_sorted
from edge_agent.protocol.records import TelemetryWindow
from edge_agent.uplink.telemetry import RunningStats, Window, percentile, percentiles
from tests.support.models import active_model, csv_line

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
    assert window.to_record(102.5, None).to_body() == {
        "window_s": 2.5,
        "model": None,
        "count": len(per_row_ms),
        "latency_ms": percentiles(per_row_ms),
        "errors": dict(Counter(rejects)),
        "predictions": dict(labels),
    }
    assert list(window.to_record(103.0, None).predictions) == list(labels)  # first seen first


@settings(max_examples=50, derandomize=True, database=None, deadline=None)
@given(batches=st.lists(st.tuples(st.floats(0.001, 50.0), st.integers(1, 40)), max_size=40))
def test_running_stats_keep_one_latency_per_row_up_to_the_reservoir(
    batches: list[tuple[float, int]],
) -> None:
    stats = RunningStats(keep=100)
    for latency_ms, n in batches:
        stats.add(latency_ms, n)
    per_row_ms = [ms for ms, n in batches for _ in range(n)]
    assert stats.inferences == len(per_row_ms)
    assert stats.recent_ms().tolist() == per_row_ms[-100:]
    assert stats.latencies() == percentiles(per_row_ms[-100:], (50, 99))


# ---- windows through the pipeline: one model each --------------------------------------------
@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[ActiveModel, ActiveModel]:
    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=1000).fit(x, y)
    folder = tmp_path_factory.mktemp("models")
    return (
        active_model(clf, x, y, "iris", folder / "iris.zip"),
        active_model(clf, x, y, "iris-next", folder / "iris-next.zip"),
    )


def test_a_window_never_spans_two_models(two_models: tuple[ActiveModel, ActiveModel]) -> None:
    """Rows and rejections go into a window of the model that handled them; the first one
    another model handles closes the window before, and a window closed later (by the timer)
    is still stamped with the model that filled it, not with the one serving by then."""
    first, second = two_models
    windows: list[TelemetryWindow] = []
    pipeline = Pipeline(on_drift=lambda r: None, on_window=windows.append)
    lines = [("csv", csv_line(row)) for row in load_iris().data[:10]]
    pipeline.process(lines[:3])  # no model yet
    pipeline.active = first  # installed: the next batch is first's
    pipeline.process([*lines[:4], ("csv", b"1,2,3")])
    pipeline.active = second
    pipeline.flush_window()  # nothing of second's yet: the open window is still first's
    pipeline.process(lines[4:6])
    pipeline.active = None  # rolled back to no model
    pipeline.process(lines[6:7])
    pipeline.flush_window()
    assert [(w.model, w.count, w.errors) for w in windows] == [
        (None, 0, {"no-model": 3}),
        (first.card.model, 4, {"field-count": 1}),
        (second.card.model, 2, {}),
        (None, 0, {"no-model": 1}),
    ]
    assert pipeline.stats.rejected == {"no-model": 4, "field-count": 1}
    assert pipeline.stats.inferences == 6


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=60),
    st.lists(st.floats(0, 100), min_size=1, max_size=4),
)
def test_percentile_is_numpys_bit_for_bit(values: list[float], qs: list[float]) -> None:
    """The agent's own percentile (numpy's would import numpy.ma) gives numpy's floats."""
    x = np.round(np.asarray(values), 2)  # ties too
    assert np.array_equal(percentile(x, tuple(qs)), np.percentile(x, qs))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([0.0, -1.5, 2.0, 1e300, np.inf, -np.inf, np.nan]), max_size=30))
def test_unique_sorted_is_numpys_unique(values: list[float]) -> None:
    x = np.asarray(values, dtype=np.float64)
    got, want = unique_sorted(x), np.unique(x)
    assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True)
