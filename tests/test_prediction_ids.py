"""Prediction ids (edge_agent.protocol.ids): every inferred row is `{device}/{boot}/{row}`, in the
results feed, in sampled raw rows and, as a range with each row's prediction, in the telemetry
window; through the real pipeline, and through a real agent counted by an independent
subscriber."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from cloud_hub.broker.local import RunningBroker
from edge_agent.config import load_config
from edge_agent.errors import ConfigError, MessageError
from edge_agent.inference.pipeline import ActiveModel, Pipeline
from edge_agent.protocol.ids import PredictionId, parse_prediction_id, prediction_id
from edge_agent.protocol.messages import ModelRef, decode_batch
from edge_agent.protocol.records import (
    MAX_WINDOW_ROWS,
    RawSample,
    TelemetryWindow,
    WindowRows,
    decode,
)
from edge_agent.uplink.sampling import RawSampler
from tests.support.labelled_fleet import (  # noqa: F401  (labelled_fleet is a fixture)
    DEVICE,
    IRIS_X,
    LabelledFleet,
    feed,
    labelled_fleet,
)
from tests.support.models import active_model, csv_line
from tests.support.watch import close, subscriber

WAIT_S = 30.0


@pytest.fixture(scope="module")
def iris_model(tmp_path_factory: pytest.TempPathFactory) -> ActiveModel:
    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=1000).fit(x, y)
    return active_model(clf, x, y, "iris", tmp_path_factory.mktemp("iris") / "iris-3.zip")


class Collected:
    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.windows: list[TelemetryWindow] = []
        self.samples: list[dict[str, Any]] = []


def numbered_pipeline(
    model: ActiveModel, window_rows: int = MAX_WINDOW_ROWS, keep: bool = True
) -> tuple[Pipeline, Collected]:
    got = Collected()
    pipeline = Pipeline(
        on_drift=lambda r: None,
        on_window=got.windows.append,
        on_result=got.results.append,
        window_rows=window_rows,
        keep_predictions=keep,
    )
    pipeline.active = model
    return pipeline, got


def rows_of(windows: list[TelemetryWindow]) -> list[tuple[str, Any]]:
    """(prediction id, prediction) of every row the windows name, in order."""
    out = []
    for w in windows:
        assert w.rows is not None and w.rows.predictions is not None
        assert len(w.rows.predictions) == w.count
        for i, p in enumerate(w.rows.predictions):
            out.append((prediction_id(DEVICE, w.rows.boot, w.rows.first + i), p))
    return out


# ---- the id itself --------------------------------------------------------------------------
def test_an_id_round_trips_and_a_bad_one_says_what_was_expected() -> None:
    assert parse_prediction_id("pi-01/3/1520") == PredictionId("pi-01", 3, 1520)
    assert str(PredictionId("pi-01", 3, 0)) == "pi-01/3/0"
    for bad in ("pi-01/3", "pi-01/x/1", "pi 01/3/1", "pi-01/0/1", "/3/1", "a/b/3/1", "pi-01/3/-1"):
        with pytest.raises(MessageError, match="expected a prediction id DEVICE/BOOT/ROW"):
            parse_prediction_id(bad)
    with pytest.raises(MessageError, match="got int"):
        parse_prediction_id(7)


# ---- the pipeline ---------------------------------------------------------------------------
def test_rows_are_numbered_in_order_across_batches_and_windows(iris_model: ActiveModel) -> None:
    pipeline, got = numbered_pipeline(iris_model, window_rows=16)
    pipeline.number_rows(DEVICE, 3)
    x = IRIS_X.astype(np.float32)
    lines = [("csv", csv_line(r)) for r in x]
    lines.insert(5, ("csv", b"garbage"))  # a rejected line takes no number
    for start in range(0, len(lines), 7):  # batches across the 16-row window bound
        pipeline.process(lines[start : start + 7])
    pipeline.flush_window()

    ids = [r["id"] for r in got.results]
    assert ids == [f"{DEVICE}/3/{i}" for i in range(len(x))]
    expected = iris_model.runtime.predict(x).tolist()
    assert [r["prediction"] for r in got.results] == expected
    # every window at most 16 rows, consecutive, each row's prediction as the results feed said
    assert all(w.count <= 16 for w in got.windows)
    assert rows_of(got.windows) == list(zip(ids, expected, strict=True))
    assert sum(w.count for w in got.windows) == len(x)
    assert all(w.model == iris_model.card.model for w in got.windows)
    body = json.loads(json.dumps(got.windows[0].to_body()))
    assert body["rows"] == {"boot": 3, "first": 0, "predictions": expected[:16]}
    assert decode("telemetry", body, "w") == got.windows[0]


def test_without_predictions_a_window_names_its_rows_only(iris_model: ActiveModel) -> None:
    pipeline, got = numbered_pipeline(iris_model, keep=False)
    pipeline.number_rows(DEVICE, 1)
    pipeline.process([("csv", csv_line(r)) for r in IRIS_X[:10]])
    pipeline.flush_window()
    (window,) = got.windows
    assert window.rows == WindowRows(1, 0, None)
    assert "predictions" not in window.to_body()["rows"]
    assert window.count == 10


def test_rows_before_numbering_have_no_id_and_numbering_twice_changes_nothing(
    iris_model: ActiveModel,
) -> None:
    pipeline, got = numbered_pipeline(iris_model)
    pipeline.process([("csv", csv_line(r)) for r in IRIS_X[:3]])
    pipeline.number_rows(DEVICE, 2)  # closes the window of unnumbered rows
    assert [w.rows for w in got.windows] == [None]
    pipeline.process([("csv", csv_line(r)) for r in IRIS_X[3:5]])
    pipeline.number_rows(DEVICE, 2)
    pipeline.process([("csv", csv_line(r)) for r in IRIS_X[5:6]])
    pipeline.flush_window()
    assert [r["id"] for r in got.results] == [None] * 3 + [f"{DEVICE}/2/{i}" for i in range(3)]
    assert got.windows[1].rows is not None and got.windows[1].rows.first == 0
    assert got.windows[1].count == 3


def test_sampled_rows_carry_their_id(iris_model: ActiveModel) -> None:
    pipeline, got = numbered_pipeline(iris_model)
    pipeline.sampler = RawSampler(0.3, got.samples.append, random.Random(5))
    pipeline.number_rows(DEVICE, 4)
    for start in range(0, 150, 10):
        pipeline.process([("csv", csv_line(r)) for r in IRIS_X[start : start + 10]])
    by_id = {r["id"]: r["prediction"] for r in got.results}
    assert len(got.samples) > 20
    for body in got.samples:
        sample = decode("telemetry", json.loads(json.dumps(body)), "sample")
        assert isinstance(sample, RawSample) and sample.id is not None
        assert by_id[sample.id] == sample.prediction
        row = parse_prediction_id(sample.id).row
        assert sample.features == dict(
            zip(iris_model.card.feature_names, IRIS_X[row].astype(np.float32).tolist(), strict=True)
        )


# ---- the record -----------------------------------------------------------------------------
def window(count: int, rows: dict[str, Any]) -> dict[str, Any]:
    return {"count": count, "model": {"name": "iris", "version": 1}, "rows": rows}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (window(2, {"boot": 1, "first": 0, "predictions": [1]}), "expected one per row (2), got 1"),
        (window(1, {"boot": 1, "predictions": [1]}), "telemetry.rows: missing field 'first'"),
        (window(1, {"boot": -1, "first": 0}), "telemetry.rows.boot: expected a count"),
        (window(1, {"boot": 1, "first": 0, "predictions": [[1]]}), "rows.predictions[0]"),
        (window(1, {"boot": 1, "first": 0, "predictions": "1"}), "expected a list"),
        (
            window(1, {"boot": 1, "first": 0, "predictions": [0] * (MAX_WINDOW_ROWS + 1)}),
            f"expected at most {MAX_WINDOW_ROWS} rows",
        ),
        (window(MAX_WINDOW_ROWS + 1, {"boot": 1, "first": 0}), "at most 10000 rows"),
        (window(2, {"boot": 1, "first": 2**63 - 2}), "numbered below"),
    ],
)
def test_a_bad_rows_field_is_one_clear_error(body: dict[str, Any], says: str) -> None:
    with pytest.raises(MessageError, match=r".*") as info:
        decode("telemetry", body, "telemetry")
    assert says in str(info.value)


def test_windows_and_samples_of_older_agents_still_decode() -> None:
    old = decode("telemetry", {"count": 3, "predictions": {"1": 3}}, "w")
    assert isinstance(old, TelemetryWindow) and old.rows is None
    sample = decode("telemetry", {"raw": {"model": {"name": "iris", "version": 1}}}, "s")
    assert isinstance(sample, RawSample) and sample.id is None
    with pytest.raises(MessageError, match=r"raw\.id: expected a prediction id"):
        decode("telemetry", {"raw": {"model": {"name": "iris", "version": 1}, "id": "x"}}, "s")


# ---- config ---------------------------------------------------------------------------------
def test_predictions_are_on_by_default_and_windows_bounded(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[device]\nid = "d1"\n')
    telemetry = load_config(path).telemetry
    assert (telemetry.predictions, telemetry.window_rows) == (True, 1000)
    path.write_text('[device]\nid = "d1"\n[telemetry]\npredictions = false\n')
    assert load_config(path).telemetry.predictions is False
    for value, says in (
        ("0", "telemetry.window_rows expected 1 to 10000 rows, found 0"),
        ("20000", "telemetry.window_rows expected 1 to 10000 rows"),
        ("10000\nbatch_size = 100", "telemetry.window_rows (10000) times telemetry.batch_size"),
    ):
        path.write_text(f'[device]\nid = "d1"\n[telemetry]\nwindow_rows = {value}\n')
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert says in str(info.value)


# ---- a real agent, counted from outside -----------------------------------------------------
def test_a_real_agent_gives_every_row_one_id_that_its_windows_and_samples_agree_on(
    labelled_fleet: LabelledFleet,  # noqa: F811
    broker: RunningBroker,
) -> None:
    """Rows in (lines fed) against ids out, as an independent subscriber sees the results feed
    and the telemetry the agent publishes (each record once)."""
    results: dict[str, Any] = {}
    windows: dict[tuple[int, int], dict[str, Any]] = {}
    samples: dict[tuple[int, int], dict[str, Any]] = {}
    changed = threading.Condition()
    duplicates: list[str] = []

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        with changed:
            if msg.topic.endswith("/results"):
                result = json.loads(msg.payload)
                if result["id"] in results:
                    duplicates.append(result["id"])
                results[result["id"]] = result
            else:
                for r in decode_batch(msg.payload, "telemetry").records:
                    (samples if "raw" in r.body else windows)[(r.boot, r.seq)] = r.body
            changed.notify_all()

    client = subscriber(
        broker,
        [f"edgefleet/local/{DEVICE}/results", f"edgefleet/dev/{DEVICE}/telemetry"],
        on_message,
    )
    try:
        x = np.concatenate([IRIS_X, IRIS_X])  # 300 rows
        feed(labelled_fleet, x, bad_every=50)
        n = len(x)

        def window_rows() -> int:
            return sum(b["count"] for b in windows.values() if "rows" in b)

        with changed:
            assert changed.wait_for(lambda: len(results) >= n and window_rows() >= n, WAIT_S)
    finally:
        close(client)
    boot = labelled_fleet.agent.boot
    assert duplicates == []
    assert sorted(results, key=lambda i: parse_prediction_id(i).row) == [
        f"{DEVICE}/{boot}/{row}" for row in range(n)
    ]
    covered = rows_of(
        [decode("telemetry", b, "w") for b in windows.values() if "rows" in b]  # type: ignore[misc]
    )
    assert sorted(i for i, _ in covered) == sorted(results)  # each row in exactly one window
    assert all(results[i]["prediction"] == p for i, p in covered)
    assert all(b["count"] <= 40 for b in windows.values())  # window_rows = 40
    assert all(b["model"] == {"name": "iris", "version": 1} for b in windows.values())
    assert samples, "raw_sample_rate = 0.2: some rows are sampled"
    for body in samples.values():
        raw = body["raw"]
        assert results[raw["id"]]["prediction"] == raw["prediction"]
    assert labelled_fleet.agent.pipeline.stats.inferences == n
    assert labelled_fleet.agent.pipeline.stats.rejected["field-count"] == len(x) // 50
    assert ModelRef("iris", 1) == labelled_fleet.model
