"""Quality metrics (cloud_hub.quality.metrics): the values agree with scikit-learn, the intervals
cover the true value at about their nominal rate in seeded simulations, rows split by device,
cohort, version and time bucket, and the accuracy floor alerts when accuracy falls and not on a
healthy stream (the running hub logs it once)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    mean_absolute_error,
    precision_recall_fscore_support,
    root_mean_squared_error,
)

from cloud_hub.drift.source import PublishedCards
from cloud_hub.quality.labels import FROM_API, JoinedLabel
from cloud_hub.quality.metrics import (
    Floors,
    Query,
    below_floor,
    class_key,
    classification_metrics,
    quality_rows,
    regression_metrics,
    wilson,
)
from cloud_hub.quality.report import MetricsQuery, quality_report, stored_floors
from cloud_hub.quality.watch import QualityWatch
from cloud_hub.store.database import Store
from cloud_hub.store.url import store_url
from edge_agent.errors import ConfigError
from edge_agent.protocol.ids import prediction_id
from edge_agent.protocol.messages import Batch, ModelRef, Record
from edge_agent.protocol.records import TelemetryWindow, WindowRows

MODEL = ModelRef("iris", 2)
SIMULATIONS = 400


def coverage(trials: int, one: Callable[[np.random.Generator], bool], seed: int = 7) -> float:
    rng = np.random.default_rng(seed)
    return sum(one(rng) for _ in range(trials)) / trials


def near_nominal(rate: float, trials: int = SIMULATIONS, nominal: float = 0.95) -> bool:
    """About the nominal rate: within 2 points (an interval of counts covers a little more or
    less than nominal, by where the counts fall) plus 3 standard deviations of the simulation's
    own noise (a fixed seed: no flakes)."""
    sd = math.sqrt(nominal * (1 - nominal) / trials)
    return abs(rate - nominal) <= 0.02 + 3 * sd


# ---- values --------------------------------------------------------------------------------------
def test_classifier_values_are_scikit_learns() -> None:
    rng = np.random.default_rng(3)
    truth = rng.choice(["setosa", "versicolor", "virginica"], 500).tolist()
    guess = [t if rng.random() < 0.8 else "virginica" for t in truth]
    guess[:3] = ["novel"] * 3  # a class never in the labels counts, as sklearn counts it
    got = classification_metrics(truth, guess)
    p, r, f, _ = precision_recall_fscore_support(truth, guess, average="macro", zero_division=0)
    assert got["accuracy"].value == pytest.approx(accuracy_score(truth, guess))
    assert (got["precision"].value, got["recall"].value, got["f1"].value) == pytest.approx(
        (p, r, f)
    )
    for interval in got.values():
        assert interval.low is not None and interval.high is not None
        assert interval.low <= interval.value <= interval.high


def test_regressor_values_are_scikit_learns() -> None:
    rng = np.random.default_rng(4)
    truth = rng.normal(100, 20, 300)
    guess = truth + rng.normal(2, 10, 300)
    got = regression_metrics(truth.tolist(), guess.tolist())
    assert got["rmse"].value == pytest.approx(root_mean_squared_error(truth, guess))
    assert got["mae"].value == pytest.approx(mean_absolute_error(truth, guess))


def test_class_labels_compare_by_value() -> None:
    assert class_key(2) == class_key(2.0) == class_key("2") == class_key(" 2 ".strip()) == "2"
    assert class_key("setosa") != class_key("Setosa")
    assert class_key(2.5) == class_key("2.5")


def test_one_label_has_a_value_and_no_bootstrap_interval() -> None:
    got = classification_metrics([1], [1])
    assert got["accuracy"].value == 1.0 and got["accuracy"].low is not None  # Wilson still works
    assert got["f1"].low is None
    assert regression_metrics([1.0], [2.0])["rmse"].low is None


# ---- intervals cover the truth at about their nominal rate ---------------------------------
@pytest.mark.parametrize(("p", "n"), [(0.5, 40), (0.9, 60), (0.97, 200), (0.99, 500)])
def test_the_accuracy_interval_covers_at_about_95_percent(p: float, n: int) -> None:
    def one(rng: np.random.Generator) -> bool:
        return wilson(int(rng.binomial(n, p)), n).covers(p)

    rate = coverage(2000, one)
    assert near_nominal(rate, 2000), rate


def test_the_macro_f1_precision_recall_intervals_cover_at_about_95_percent() -> None:
    # a population: 3 classes, this confusion matrix of probabilities (rows true)
    probs = np.array([[0.28, 0.03, 0.02], [0.04, 0.25, 0.05], [0.01, 0.06, 0.26]])
    from cloud_hub.quality.metrics import _macro

    truth_p, truth_r, truth_f = (float(v) for v in _macro(probs))
    cells = [(t, g) for t in range(3) for g in range(3)]
    hits = {"precision": 0, "recall": 0, "f1": 0}
    rng = np.random.default_rng(11)
    for _ in range(SIMULATIONS):
        idx = rng.choice(9, size=300, p=probs.ravel())
        truth = [cells[i][0] for i in idx]
        guess = [cells[i][1] for i in idx]
        got = classification_metrics(truth, guess, seed=int(rng.integers(1 << 30)))
        hits["precision"] += got["precision"].covers(truth_p)
        hits["recall"] += got["recall"].covers(truth_r)
        hits["f1"] += got["f1"].covers(truth_f)
    for name, n in hits.items():
        assert near_nominal(n / SIMULATIONS), (name, n / SIMULATIONS)


def test_the_rmse_and_mae_intervals_cover_at_about_95_percent() -> None:
    sigma, bias = 3.0, 1.0  # errors ~ N(bias, sigma): RMSE sqrt(bias^2 + sigma^2), MAE below
    true_rmse = math.sqrt(bias**2 + sigma**2)
    z = bias / sigma
    true_mae = sigma * math.sqrt(2 / math.pi) * math.exp(-(z**2) / 2) + bias * math.erf(
        z / math.sqrt(2)
    )
    hits = {"rmse": 0, "mae": 0}
    rng = np.random.default_rng(12)
    for _ in range(SIMULATIONS):
        truth = rng.normal(50, 10, 200)
        guess = truth + rng.normal(bias, sigma, 200)
        got = regression_metrics(truth.tolist(), guess.tolist())
        hits["rmse"] += got["rmse"].covers(true_rmse)
        hits["mae"] += got["mae"].covers(true_mae)
    for name, n in hits.items():
        assert near_nominal(n / SIMULATIONS), (name, n / SIMULATIONS)


# ---- rows ----------------------------------------------------------------------------------------
def joined(device: str, rows: list[tuple[int, int]], model: ModelRef = MODEL) -> list[JoinedLabel]:
    """(prediction, label) per row, predicted one an hour from t=0."""
    return [
        JoinedLabel(device, 1, i, model, p, t, 10.0 + i, predicted=3600.0 * i)
        for i, (p, t) in enumerate(rows)
    ]


def test_rows_by_version_device_cohort_and_bucket() -> None:
    labels = joined("a", [(1, 1), (1, 0), (0, 0), (1, 1)]) + joined("b", [(0, 0), (1, 1)])
    labels += joined("b", [(2.5, 2.0)], ModelRef("house", 1))
    tasks = {MODEL: "classification"}  # house@1: no card, guessed from its predictions
    cohorts = {"a": ["fleet", "group:lab"], "b": ["fleet", "tag:outdoor"]}
    floors = Floors(0.5)

    def rows(by: str, bucket: float | None = None) -> list[tuple[str, str, float | None, int]]:
        found = quality_rows(labels, tasks, Query(by, bucket), lambda d: cohorts[d], floors)
        return [
            (f"{r['model']}@{r['version']}", r["group"], r["bucket"], r["labels"]) for r in found
        ]

    assert rows("version") == [("house@1", "fleet", None, 1), ("iris@2", "fleet", None, 6)]
    assert rows("device")[1:] == [("iris@2", "a", None, 4), ("iris@2", "b", None, 2)]
    assert rows("cohort")[:2] == [
        ("house@1", "fleet", None, 1),
        ("house@1", "tag:outdoor", None, 1),
    ]
    assert rows("cohort")[2:] == [
        ("iris@2", "fleet", None, 6),
        ("iris@2", "group:lab", None, 4),
        ("iris@2", "tag:outdoor", None, 2),
    ]
    assert rows("version", 7200.0)[1:] == [
        ("iris@2", "fleet", 0.0, 4),
        ("iris@2", "fleet", 7200.0, 2),
    ]
    (house,) = [
        r
        for r in quality_rows(labels, tasks, Query(), lambda d: cohorts[d], floors)
        if r["model"] == "house"
    ]
    assert house["task"] == "regression" and house["rmse"]["value"] == 0.5
    assert house["accuracy"] is None and house["floor"] is None and not house["alert"]
    with pytest.raises(ConfigError, match="--by: expected one of version, device, cohort"):
        Query("model")


# ---- the floor -----------------------------------------------------------------------------------
def test_floors_parse_and_pick_the_most_specific() -> None:
    floors = Floors.parse(["0.9", "iris=0.8", "iris@3=0.95"])
    assert floors.of(ModelRef("iris", 3)) == 0.95
    assert floors.of(ModelRef("iris", 2)) == 0.8
    assert floors.of(ModelRef("wine", 1)) == 0.9
    assert Floors.from_json(floors.to_json()) == floors
    for bad in ("high", "1.5", "0", "Iris!=0.9", "iris@x=0.9"):
        with pytest.raises(ConfigError, match="--accuracy-floor: expected"):
            Floors.parse([bad])


def test_the_floor_alerts_when_accuracy_falls_and_not_on_a_healthy_stream() -> None:
    floor = 0.9
    rng = np.random.default_rng(21)
    # a healthy model (accuracy 0.95) judged over a day of 200 labels, 2000 times: never
    healthy = sum(below_floor(int(rng.binomial(200, 0.95)), 200, floor) for _ in range(2000))
    assert healthy == 0
    # right at the floor: about 0.5% of looks, no more
    at_floor = sum(below_floor(int(rng.binomial(200, floor)), 200, floor) for _ in range(4000))
    assert at_floor / 4000 <= 0.01
    # fallen to 0.75: 200 labels leave no doubt, nearly every look alerts
    fallen = sum(below_floor(int(rng.binomial(200, 0.75)), 200, floor) for _ in range(500))
    assert fallen / 500 >= 0.99
    assert below_floor(0, 5, floor)  # five wrong of five: enough
    assert not below_floor(3, 5, floor)  # three of five: too few to say
    assert not below_floor(0, 0, floor) and not below_floor(0, 10, None)


# ---- the running hub: the floor check logs once --------------------------------------------
def store_with_stream(tmp_path: Path, right: list[bool], now: float) -> Store:
    tmp_path.mkdir()
    store = Store(store_url(tmp_path))
    store.register("pi-01")
    predictions = [1] * len(right)
    body = TelemetryWindow(
        count=len(right), model=MODEL, rows=WindowRows(1, 0, tuple(predictions))
    ).to_body()
    store.add_batch("telemetry", Batch("pi-01", (Record(1, 0, now, body),)))
    pairs = [(prediction_id("pi-01", 1, i), 1 if ok else 0) for i, ok in enumerate(right)]
    store.add_labels(pairs, FROM_API, now)
    return store


def test_the_hub_logs_a_fall_below_the_floor_once_and_the_api_says_alert(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import time

    now = time.time()
    rng = np.random.default_rng(5)
    healthy = store_with_stream(tmp_path / "healthy", (rng.random(300) < 0.96).tolist(), now)
    watch = QualityWatch(healthy, PublishedCards(None), Floors(0.9))
    assert watch.check_floors(now) == set()

    fallen = store_with_stream(tmp_path / "fallen", (rng.random(300) < 0.7).tolist(), now)
    watch = QualityWatch(fallen, PublishedCards(None), Floors(0.9))
    with caplog.at_level(logging.WARNING, logger="cloud_hub.quality.watch"):
        for t in range(5):
            watch.tick(now + t * 60)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "iris@2 is below its floor 0.900" in said[0], said
    # the floors the hub was started with are what `edgehub metrics` and the API judge by
    assert stored_floors(fallen) == Floors(0.9)
    report = quality_report(fallen, PublishedCards(None), MetricsQuery(), now=now + 1)
    assert report["alerts"] == ["iris@2"] and report["rows"][0]["alert"] is True
