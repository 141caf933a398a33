"""Anomaly models as their own task: the card's fields, the converter (IsolationForest,
OneClassSVM and an MLP autoencoder from scikit-learn, on breast_cancer with the benign tumours
as normal), what the agent makes of their scores (health gate, results, telemetry windows,
drift, shadow) and the hub's quality metrics from ground truth. Scores, flags and metrics are
checked against scikit-learn's own, computed here."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.base import BaseEstimator
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, precision_score, recall_score
from sklearn.neighbors import LocalOutlierFactor
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from cloud_hub.quality.labels import JoinedLabel
from cloud_hub.quality.metrics import Floors, Query, quality_rows
from converters.anomaly import anomaly_labels, choose_threshold
from converters.card import reference_card
from converters.onnx_input import load_onnx
from converters.pipeline import BuildReport, build_bundle
from converters.sklearn_onnx import ConversionError, to_onnx_model
from converters.source import DEFAULT_CONTAMINATION
from converters.validate import ParityError, check_parity
from edge_agent.drift import DriftMonitor
from edge_agent.errors import BadDataError, BundleRejected, ConfigError, MessageError
from edge_agent.inference.pipeline import ActiveModel
from edge_agent.inference.pipeline import Pipeline as AgentPipeline
from edge_agent.inference.runtime import OnnxRuntime, load_runtime
from edge_agent.inference.shadow import Shadow
from edge_agent.protocol.card import Anomaly, ModelCard, anomaly_label, parse_card
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.records import DriftReport, TelemetryWindow
from edge_agent.update.bundle import read_bundle
from edge_agent.update.health import check_health
from tests.support.models import csv_line

SCORE_TOLERANCE = 1e-5  # float32 graph against scikit-learn's float64, relative


# ---- the card ---------------------------------------------------------------------------------
def anomaly_card(anomaly: object, task: str = "anomaly") -> dict[str, Any]:
    rng = np.random.default_rng(0)
    card = reference_card(rng.normal(size=(50, 2)), ["a", "b"])
    card["task"] = task
    if anomaly is not None:
        card["anomaly"] = anomaly
    return card


def test_an_anomaly_card_says_how_its_score_is_read() -> None:
    card = parse_card(anomaly_card({"threshold": 0.5, "direction": "higher", "rate": 0.02}))
    assert card.task == "anomaly"
    assert card.anomaly == Anomaly(0.5, 0.02, "higher")
    assert card.anomaly.flags(np.array([[0.2], [0.5], [0.51]])).tolist() == [False, False, True]


@pytest.mark.parametrize(
    ("anomaly", "says"),
    [
        (
            {"threshold": "high", "direction": "higher", "rate": 0.1},
            "card.anomaly.threshold: expected a finite number, got 'high'",
        ),
        (
            {"threshold": math.inf, "direction": "higher", "rate": 0.1},
            "card.anomaly.threshold: expected a finite number, got inf",
        ),
        (
            {"direction": "higher", "rate": 0.1},
            "card.anomaly.threshold: expected a finite number, got None",
        ),
        (
            {"threshold": 0.5, "direction": "lower", "rate": 0.1},
            "card.anomaly.direction: expected one of ('higher',) (a score above the threshold "
            "is anomalous), got 'lower'",
        ),
        (
            {"threshold": 0.5, "direction": "higher", "rate": 1.5},
            "card.anomaly.rate: expected a number from 0 to 1, got 1.5",
        ),
        (
            {"threshold": 0.5, "direction": "higher", "rate": 0.1, "cutoff": 2},
            "card.anomaly: unknown key 'cutoff'",
        ),
        (None, "card.anomaly: expected an object with the score's threshold and direction"),
    ],
)
def test_a_bad_anomaly_section_names_the_field(anomaly: object, says: str) -> None:
    with pytest.raises(BundleRejected) as info:
        parse_card(anomaly_card(anomaly))
    assert says in info.value.detail and "\n" not in info.value.detail


def test_only_an_anomaly_card_has_an_anomaly_section() -> None:
    card = anomaly_card({"threshold": 0.5, "direction": "higher", "rate": 0.1}, "classification")
    with pytest.raises(BundleRejected, match=r"card\.anomaly: expected only in an anomaly model"):
        parse_card(card)


@pytest.mark.parametrize(
    ("value", "flag"),
    [
        (1, True),
        (0, False),
        (True, True),
        (False, False),
        (1.0, True),
        ("1", True),
        ("0", False),
        ("anomaly", True),
        (" Normal ", False),
        ("TRUE", True),
        ("false", False),
        (-1, None),
        (2, None),
        ("outlier", None),
        (None, None),
    ],
)
def test_anomaly_labels(value: object, flag: bool | None) -> None:
    assert anomaly_label(value) is flag


def test_scikit_learns_minus_one_is_refused_with_the_fix() -> None:
    with pytest.raises(BadDataError, match=r"y\[1\]: .*got -1 \(scikit-learn's -1"):
        anomaly_labels(np.array([1, -1]))


# ---- the converter ------------------------------------------------------------------------------
class Cancer:
    """breast_cancer with the benign tumours as normal: models train on half the benign rows;
    the other half and the malignant rows are the sample, with true flags (1: malignant)."""

    def __init__(self) -> None:
        x, y = load_breast_cancer(return_X_y=True)
        x = x.astype(np.float32)
        benign, malignant = x[y == 1], x[y == 0]
        self.train = benign[::2]
        self.held = benign[1::2]
        self.malignant = malignant
        self.sample = np.concatenate([self.held, malignant[:40]])
        self.truth = np.r_[np.zeros(len(self.held)), np.ones(40)].astype(int)


@pytest.fixture(scope="module")
def cancer() -> Cancer:
    return Cancer()


@pytest.fixture(scope="module")
def iforest(cancer: Cancer) -> IsolationForest:
    return IsolationForest(n_estimators=50, contamination=0.05, random_state=0).fit(cancer.train)


@pytest.fixture(scope="module")
def ocsvm(cancer: Cancer) -> Pipeline:
    return make_pipeline(StandardScaler(), OneClassSVM(nu=0.05)).fit(cancer.train)


@pytest.fixture(scope="module")
def autoencoder(cancer: Cancer) -> Pipeline:
    """A scaler and an MLP trained to give back what the scaler makes of a benign row."""
    scaler = StandardScaler().fit(cancer.train)
    scaled = scaler.transform(cancer.train)
    mlp = MLPRegressor(hidden_layer_sizes=(8,), max_iter=3000, random_state=0).fit(scaled, scaled)
    return make_pipeline(scaler, mlp)


def reconstruction_error(autoencoder: Pipeline, x: np.ndarray) -> np.ndarray:
    scaled = autoencoder[0].transform(x)
    return np.mean((autoencoder[1].predict(scaled) - scaled) ** 2, axis=1)


def onnx_scores(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    assert [o.name for o in model.graph.output] == ["score"]
    return OnnxRuntime(model.SerializeToString()).predict(x).astype(np.float64)


@pytest.mark.parametrize("name", ["iforest", "ocsvm"])
def test_an_outlier_detector_scores_as_scikit_learn_and_flags_the_same_rows(
    name: str, cancer: Cancer, request: pytest.FixtureRequest
) -> None:
    detector = request.getfixturevalue(name)
    x = np.concatenate([cancer.held, cancer.malignant])
    got = onnx_scores(to_onnx_model(detector, x), x)
    want = -detector.score_samples(x)  # higher = more anomalous
    assert np.allclose(got, want, rtol=SCORE_TOLERANCE, atol=SCORE_TOLERANCE)
    threshold = -float(np.ravel(detector[-1].offset_ if name == "ocsvm" else detector.offset_)[0])
    flags, sklearn_flags = got > threshold, detector.predict(x) == -1
    assert np.mean(flags == sklearn_flags) >= 0.995  # only rows on the boundary may differ
    assert sklearn_flags[len(cancer.held) :].mean() > 2 * sklearn_flags[: len(cancer.held)].mean()


def test_an_autoencoder_scores_its_reconstruction_error(
    cancer: Cancer, autoencoder: Pipeline
) -> None:
    x = np.concatenate([cancer.held, cancer.malignant])
    got = onnx_scores(to_onnx_model(autoencoder, x), x)
    assert np.allclose(got, reconstruction_error(autoencoder, x), rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def built(
    cancer: Cancer,
    iforest: IsolationForest,
    ocsvm: Pipeline,
    autoencoder: Pipeline,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, BuildReport]:
    out = tmp_path_factory.mktemp("anomaly")
    models = {"iforest": iforest, "ocsvm": ocsvm, "autoencoder": autoencoder}
    return {
        name: build_bundle(
            model, cancer.sample, cancer.truth, name=name, version=1, out=out / f"{name}.zip"
        )
        for name, model in models.items()
    }


def shipped(build: BuildReport) -> tuple[ModelCard, Any]:
    bundle = read_bundle(build.path.read_bytes(), None, 10**8)
    return bundle.card, load_runtime(bundle.card, bundle.model_bytes)


@pytest.mark.parametrize("name", ["iforest", "ocsvm", "autoencoder"])
def test_the_bundle_ships_a_score_its_threshold_and_passes_the_health_gate(
    name: str, built: dict[str, BuildReport], cancer: Cancer
) -> None:
    card, runtime = shipped(built[name])
    assert card.task == "anomaly" and card.anomaly is not None
    assert card.raw["output"] == {
        "score": {"name": "score", "dtype": "float32", "shape": [None, 1]}
    }
    scores = runtime.predict(cancer.sample).astype(np.float64)
    assert card.anomaly.rate == pytest.approx(np.mean(scores > card.anomaly.threshold))
    report = built[name].report
    assert report["task"] == "anomaly" and report["parity"] == {"ok": True}
    assert report["flag_agreement"] >= 0.99
    assert {"precision_after", "recall_after", "f1_after"} <= set(report)
    assert check_health(card, runtime).ok


def test_a_detector_keeps_its_own_threshold(
    built: dict[str, BuildReport], iforest: IsolationForest
) -> None:
    card, _ = shipped(built["iforest"])
    assert card.anomaly is not None
    assert card.anomaly.threshold == -iforest.offset_
    assert built["iforest"].report["threshold_from"] == "the model's own"
    # a tree ensemble has no weights to quantize: shipped as float32, and the report says why
    assert "no MatMul/Gemm/Conv weights" in built["iforest"].report["note"]


def test_an_autoencoders_threshold_flags_the_contamination(
    built: dict[str, BuildReport], cancer: Cancer
) -> None:
    card, runtime = shipped(built["autoencoder"])
    assert card.anomaly is not None
    scores = runtime.predict(cancer.sample).astype(np.float64)
    assert card.anomaly.threshold == pytest.approx(np.quantile(scores, 1 - DEFAULT_CONTAMINATION))
    assert built["autoencoder"].report["threshold_from"] == f"contamination {DEFAULT_CONTAMINATION}"


@pytest.mark.parametrize("quantize", ["dynamic", "static"])
def test_an_int8_autoencoder_keeps_its_flags(
    quantize: str, cancer: Cancer, autoencoder: Pipeline, tmp_path: Path
) -> None:
    built = build_bundle(
        autoencoder,
        cancer.sample,
        None,
        name="ae",
        version=1,
        out=tmp_path / "ae.zip",
        quantize=quantize,
        contamination=0.1,
    )
    report = built.report
    assert report["quantize"] == quantize  # really quantized, if not smaller (a small MLP)
    note = report.get("note", "")  # not the "no weights to quantize" one
    assert note == "" or note.startswith("int8 made the model larger")
    assert report["flag_agreement"] >= 0.99
    want = reconstruction_error(autoencoder, cancer.sample)
    assert report["max_abs_diff"] <= 0.05 * float(np.max(want))
    card, runtime = shipped(built)
    assert check_health(card, runtime).ok


def test_threshold_and_contamination(
    cancer: Cancer, iforest: IsolationForest, tmp_path: Path
) -> None:
    given = build_bundle(
        iforest, cancer.sample, None, name="f", version=1, out=tmp_path / "f.zip", threshold=0.6
    )
    assert given.card["anomaly"]["threshold"] == 0.6 and given.report["threshold_from"] == "given"
    share = build_bundle(
        iforest,
        cancer.sample,
        None,
        name="f",
        version=2,
        out=tmp_path / "f2.zip",
        contamination=0.2,
    )
    assert share.card["anomaly"]["rate"] == pytest.approx(0.2, abs=0.01)
    with pytest.raises(ConfigError, match="the threshold or the contamination, not both"):
        choose_threshold(np.arange(10.0), None, 0.1, 1.0)
    with pytest.raises(ConfigError, match="contamination: expected a share above 0 and at most"):
        choose_threshold(np.arange(10.0), None, 0.9)


def test_anomaly_options_for_another_task_are_refused(cancer: Cancer, tmp_path: Path) -> None:
    clf = LogisticRegression(max_iter=2000).fit(cancer.sample, cancer.truth)
    with pytest.raises(ConfigError, match="are for anomaly models; this is a classification"):
        build_bundle(
            clf,
            cancer.sample,
            cancer.truth,
            name="c",
            version=1,
            out=tmp_path / "c.zip",
            contamination=0.1,
        )


def test_parity_of_an_anomaly_model_is_its_flags() -> None:
    check_parity({"task": "anomaly", "flag_agreement": 0.995}, max_accuracy_drop=0.01)
    with pytest.raises(ParityError, match=r"0\.0200 of the rows flagged differently"):
        check_parity({"task": "anomaly", "flag_agreement": 0.98}, max_accuracy_drop=0.01)


class NotAModel(BaseEstimator):
    def fit(self, x: np.ndarray, y: np.ndarray | None = None) -> NotAModel:
        self.mean_ = x.mean(axis=0)
        return self


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # it is no model
def test_what_cannot_be_an_anomaly_model_says_what_can(cancer: Cancer) -> None:
    with pytest.raises(ConversionError, match=r"an outlier detector \(IsolationForest, OneClass"):
        to_onnx_model(NotAModel().fit(cancer.train), cancer.train)
    lof = LocalOutlierFactor().fit(cancer.train)  # novelty=False: it scores no new row
    with pytest.raises(ConversionError, match=r"has none \(fit it with novelty=True\)"):
        to_onnx_model(lof, cancer.train)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=cancer.train.shape)  # as many outputs as inputs, not its input
    mlp = MLPRegressor(hidden_layer_sizes=(4,), max_iter=200, random_state=0)
    mlp.fit(cancer.train, noise)
    with pytest.raises(ConversionError, match=r"does not reconstruct what it is given"):
        to_onnx_model(mlp, cancer.train)


# ---- on the device ------------------------------------------------------------------------------
def active(build: BuildReport, window: int = 50) -> ActiveModel:
    card, runtime = shipped(build)
    return ActiveModel.build(card, runtime, window, warn_every=100, alert_every=10_000)


def test_results_and_telemetry_windows_flag_what_scikit_learn_flags(
    built: dict[str, BuildReport], cancer: Cancer, iforest: IsolationForest
) -> None:
    results: list[dict[str, Any]] = []
    windows: list[TelemetryWindow] = []
    pipeline = AgentPipeline(lambda r: None, windows.append, results.append)
    pipeline.active = active(built["iforest"])
    rows = np.concatenate([cancer.held[:60], cancer.malignant[:40]])
    pipeline.process([("csv", csv_line(row)) for row in rows])
    pipeline.flush_window()
    expected = iforest.predict(rows) == -1  # scikit-learn's own verdict
    assert [r["anomaly"] for r in results] == expected.tolist()
    assert all(type(r["prediction"]) is float for r in results)
    (window,) = windows
    assert window.anomalies == int(expected.sum()) and window.count == len(rows)
    assert TelemetryWindow.from_body(window.to_body(), "w") == window


def test_a_window_cannot_have_more_anomalies_than_rows() -> None:
    body = TelemetryWindow(count=3, anomalies=3).to_body()
    assert TelemetryWindow.from_body(body, "w").anomalies == 3
    assert "anomalies" not in TelemetryWindow(count=3).to_body()  # other models: absent
    with pytest.raises(MessageError, match=r"w.anomalies: expected at most the window's 3 rows"):
        TelemetryWindow.from_body({**body, "anomalies": 4}, "w")


def test_drift_reports_the_anomaly_rate_and_alarms_when_it_rises(
    built: dict[str, BuildReport], cancer: Cancer
) -> None:
    card, runtime = shipped(built["iforest"])
    assert card.anomaly is not None
    monitor = DriftMonitor(card, window=100)
    ordinary = cancer.sample[np.random.default_rng(1).integers(0, len(cancer.sample), 100)]
    scores = runtime.predict(ordinary)
    rate = DriftReport.from_body(monitor.report(ordinary, scores), "r").anomaly
    assert rate is not None and rate.rows == 100 and rate.reference == round(card.anomaly.rate, 4)
    assert rate.anomalies == int(np.sum(scores > card.anomaly.threshold))
    # malignant rows the card's sample did not hold: many more anomalies
    odd = np.concatenate([ordinary[:40], cancer.malignant[-60:]])
    scores = runtime.predict(odd)
    report = DriftReport.from_body(monitor.report(odd, scores), "r")
    assert report.anomaly is not None
    assert report.anomaly.anomalies == int(np.sum(scores > card.anomaly.threshold))
    assert report.anomaly.rate > 2 * card.anomaly.rate and report.anomaly.p < 1e-4
    assert report.status == "alert"


def test_drift_on_the_reference_distribution_rarely_warns(tmp_path: Path) -> None:
    """Fresh rows from the distribution the card's reference rows came from: the anomaly-rate
    test joins the family without raising false warnings above the level (1 window in 100),
    and alone it says p < 0.01 in at most 1% of the windows (Fisher's exact test errs on the
    quiet side)."""
    rng = np.random.default_rng(3)
    detector = IsolationForest(n_estimators=50, contamination=0.05, random_state=0)
    detector.fit(rng.normal(size=(500, 4)))
    reference = rng.normal(size=(1000, 4)).astype(np.float32)
    built = build_bundle(detector, reference, None, name="d", version=1, out=tmp_path / "d.zip")
    card, runtime = shipped(built)
    monitor = DriftMonitor(card, window=50)
    windows = 400
    rows = rng.normal(size=(50 * windows, 4)).astype(np.float32)
    reports = []
    for i in range(0, len(rows), 50):
        body = monitor.add(rows[i : i + 50], runtime.predict(rows[i : i + 50]))
        if body is not None:
            reports.append(DriftReport.from_body(body, "r"))
    assert len(reports) == windows
    rates = [r.anomaly for r in reports if r.anomaly is not None]
    assert len(rates) == windows
    assert sum(r.status != "ok" for r in reports) <= 0.01 * windows
    assert sum(r.p < 0.01 for r in rates) <= 0.01 * windows


def test_a_shadow_of_two_anomaly_models_compares_their_flags(
    built: dict[str, BuildReport], cancer: Cancer
) -> None:
    serving, serving_runtime = shipped(built["iforest"])
    candidate, candidate_runtime = shipped(built["ocsvm"])
    assert serving.anomaly is not None and candidate.anomaly is not None
    shadow = Shadow(
        candidate.model, candidate_runtime, "anomaly", len(cancer.sample), anomaly=candidate.anomaly
    )
    scores = serving_runtime.predict(cancer.sample)
    flags = serving.anomaly.flags(scores)
    report = shadow.observe(cancer.sample, scores, 1.0, serving.model, flags)
    assert report is not None
    theirs = candidate.anomaly.flags(candidate_runtime.predict(cancer.sample))
    assert report.agreement == round(float(np.mean(flags == theirs)), 4)
    assert 0.5 < report.agreement < 1  # scores on two scales, flags mostly alike


def test_ground_truth_measures_the_flags_of_an_anomaly_model() -> None:
    """Labels joined to an anomaly model's scores: precision, recall and F1 of its flags (the
    anomaly class alone), as scikit-learn computes them; a label that is no flag is left out."""
    rng = np.random.default_rng(5)
    model = ModelRef("watch", 1)
    scores = rng.normal(size=300)
    truth = (scores + rng.normal(scale=0.8, size=300)) > 1.0
    spelled = [["normal", "anomaly"], [0, 1], ["false", "true"]]
    joined = [
        JoinedLabel("d", 1, i, model, float(s), spelled[i % 3][int(t)], 0.0)
        for i, (s, t) in enumerate(zip(scores, truth, strict=True))
    ]
    joined.append(JoinedLabel("d", 1, 300, model, 0.3, "cat", 0.0))  # neither: left out
    anomaly = Anomaly(threshold=1.0, rate=0.16)
    (row,) = quality_rows(
        joined, {model: "anomaly"}, Query(), lambda d: ["fleet"], Floors(), {model: anomaly}
    )
    flags = scores > 1.0
    assert (row["task"], row["labels"], row["used"]) == ("anomaly", 301, 300)
    assert row["precision"]["value"] == pytest.approx(precision_score(truth, flags))
    assert row["recall"]["value"] == pytest.approx(recall_score(truth, flags))
    assert row["f1"]["value"] == pytest.approx(f1_score(truth, flags))
    assert row["accuracy"]["value"] == pytest.approx(np.mean(truth == flags))
    assert row["precision"]["low"] < row["precision"]["value"] < row["precision"]["high"]
    assert row["floor"] is None and row["alert"] is False


def test_an_onnx_file_of_scores_converts_with_task_anomaly(
    cancer: Cancer, iforest: IsolationForest, tmp_path: Path
) -> None:
    """A file says nothing of its task: with --task anomaly its one float output is the score
    (higher = more anomalous); a file with more outputs is refused, naming them."""
    scored = tmp_path / "scored.onnx"
    scored.write_bytes(to_onnx_model(iforest, cancer.sample).SerializeToString())
    built = build_bundle(
        load_onnx(scored, "anomaly"),
        cancer.sample,
        None,
        name="file",
        version=1,
        out=tmp_path / "file.zip",
        contamination=0.1,
    )
    assert built.card["task"] == "anomaly" and built.report["threshold_from"] == "contamination 0.1"
    assert built.report["flag_agreement"] == 1.0
    raw = tmp_path / "raw.onnx"  # skl2onnx's own: label and decision scores
    raw.write_bytes(
        convert_sklearn(
            iforest,
            initial_types=[("X", FloatTensorType([None, cancer.sample.shape[1]]))],
            target_opset={"": 17, "ai.onnx.ml": 3},
        ).SerializeToString()
    )
    with pytest.raises(BadDataError, match=r"expected an anomaly model's one output.*\['label'"):
        load_onnx(raw, "anomaly")
