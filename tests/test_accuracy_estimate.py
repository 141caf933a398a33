"""Accuracy without labels (CBPE): the converter calibrates a classifier's confidence, the
device's drift reports estimate each window's accuracy from it, a rollout gate reads it.

Each dataset is split three ways (seeded): the model is fit on one third, the bundle (and so the
calibration) is built from the second with its true labels, and the third, held out from both,
is streamed through the device's runtime and drift monitor in micro-batches.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from converters.calibration import MAX_BINS, fit_calibration, pav
from converters.pipeline import build_bundle
from edge_agent.drift import DriftMonitor
from edge_agent.framing.rows import card_bounds
from edge_agent.inference.pipeline import ActiveModel, Pipeline
from edge_agent.inference.runtime import Runtime, load_runtime
from edge_agent.protocol.card import parse_card
from edge_agent.update.bundle import Bundle, read_bundle

ROOT = Path(__file__).resolve().parent.parent
LOADERS: dict[str, Callable[..., Any]] = {
    "breast_cancer": load_breast_cancer,
    "digits": load_digits,
    "wine": load_wine,
}
WINDOW, BATCH = 50, 10


@dataclass
class Built:
    bundle: Bundle
    path: Path
    runtime: Runtime
    x: np.ndarray  # the held-out third, float32
    y: np.ndarray


def build(tmp: Path, dataset: str, kind: str, seed: int, labels: bool = True) -> Built:
    x, y = LOADERS[dataset](return_X_y=True)
    fit, calibrate, held = np.array_split(np.random.default_rng(seed).permutation(len(x)), 3)
    model: Any = (
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        if kind == "lr"
        else RandomForestClassifier(n_estimators=50, random_state=seed)
    ).fit(x[fit], y[fit])
    out = tmp / f"{dataset}-{kind}-{seed}-{labels}.zip"
    y_cal = y[calibrate] if labels else None
    build_bundle(
        model, x[calibrate], y_cal, name=dataset, version=1, out=out, quantize="none", force=True
    )
    bundle = read_bundle(out.read_bytes(), None, 10**8)
    runtime = load_runtime(bundle.card, bundle.model_bytes)
    return Built(bundle, out, runtime, x[held].astype(np.float32), y[held])


def stream(built: Built, x: np.ndarray) -> tuple[list[dict[str, Any]], np.ndarray]:
    """`x` through the runtime and a drift monitor as the pipeline feeds it: the closed
    windows' reports, and the labels the model gave."""
    monitor = DriftMonitor(built.bundle.card, window=WINDOW)
    reports, given = [], []
    for i in range(0, len(x), BATCH):
        labels, scores = built.runtime.predict_with_scores(x[i : i + BATCH])
        given.append(labels)
        report = monitor.add(x[i : i + BATCH], labels, scores)
        if report is not None:
            reports.append(report)
    return reports, np.concatenate(given)


def pooled(reports: list[dict[str, Any]]) -> float:
    """The expected accuracy over many windows, from their mergeable sums."""
    return sum(r["accuracy"]["sum"] for r in reports) / sum(r["accuracy"]["rows"] for r in reports)


# ---- the estimate against the truth ------------------------------------------------------------
# Seeds per dataset: enough held-out rows in closed windows (about 450 or more) that the true
# accuracy itself is known to about 0.01 (one binomial standard error at 95% accuracy).
SEEDS = {"breast_cancer": 3, "digits": 1, "wine": 10}


@pytest.mark.parametrize(
    ("dataset", "kind"),
    [
        ("breast_cancer", "lr"),
        ("breast_cancer", "rf"),
        ("digits", "lr"),
        ("digits", "rf"),
        ("wine", "lr"),
    ],
)
def test_estimate_is_within_tolerance_of_the_true_accuracy(
    tmp_path: Path, dataset: str, kind: str
) -> None:
    """Pooled over the closed windows of the seeded splits, the estimate is within 0.03 of the
    accuracy the model really had on those held-out rows.

    Measured here (estimate - truth): breast_cancer LR +0.012, RF +0.004, digits LR -0.008,
    RF +0.013, wine LR +0.013. Over 20 seeds, one split each, the mean |error| of a single
    split's estimate is 0.014 (breast_cancer LR), 0.018 (RF), 0.009 (digits LR and RF), 0.031
    (wine LR, whose 59 held-out rows alone swing the true accuracy by 0.02)."""
    right = expected = rows = 0.0
    for seed in range(SEEDS[dataset]):
        built = build(tmp_path, dataset, kind, seed)
        assert built.bundle.card.confidence is not None
        reports, labels = stream(built, built.x)
        assert all(r["accuracy"]["rows"] == WINDOW for r in reports)
        n = len(reports) * WINDOW  # the rows of closed windows
        right += float(np.sum(labels[:n] == built.y[:n]))
        expected += sum(r["accuracy"]["sum"] for r in reports)
        rows += n
    print(f"{dataset} {kind}: estimate {expected / rows:.4f}, true {right / rows:.4f}")
    assert abs(expected / rows - right / rows) <= 0.03


def test_a_shift_to_harder_inputs_shows_a_drop(tmp_path: Path) -> None:
    """breast_cancer rows whose "worst radius" lies between its 30th and 70th percentiles,
    where benign and malignant overlap (a covariate shift): the model is truly less accurate
    there and the estimate falls below the card's value. Measured (seeds 0 and 1 pooled): true
    accuracy 0.952 on all held-out rows, 0.915 on the shifted ones; estimated 0.974 -> 0.951.
    CBPE sees such a shift at about half to all of its size."""
    true_all = true_mid = est_all = est_mid = 0.0
    for seed in (0, 1):
        built = build(tmp_path, "breast_cancer", "lr", seed)
        radius = built.x[:, 20]
        lo, hi = np.quantile(radius, [0.3, 0.7])
        mid = (radius > lo) & (radius < hi)
        x, y = np.tile(built.x[mid], (3, 1)), np.tile(built.y[mid], 3)  # whole windows
        reports, labels = stream(built, x)
        n = len(reports) * WINDOW
        true_mid += float(np.mean(labels[:n] == y[:n])) / 2
        est_mid += pooled(reports) / 2
        assert all(r["accuracy"]["change"] < 0 for r in reports)
        reports, labels = stream(built, built.x)
        true_all += float(np.mean(labels == built.y)) / 2
        est_all += pooled(reports) / 2
    print(f"true {true_all:.3f} -> {true_mid:.3f}, estimated {est_all:.3f} -> {est_mid:.3f}")
    assert true_mid < true_all - 0.025
    assert est_mid < est_all - 0.5 * (true_all - true_mid)


def test_noise_shows_a_drop_but_not_its_size(tmp_path: Path) -> None:
    """Digits with pixel noise of one reference standard deviation: the model is truly far
    less accurate (0.96 -> 0.80) and the estimate falls (0.956 -> 0.90), by about a
    third of the truth. This is CBPE's known limit, stated rather than hidden: the calibration
    holds where the model was calibrated, and noise takes it where it is confidently wrong. The
    report's drift tests are what flag such inputs."""
    built = build(tmp_path, "digits", "lr", 0)
    card = built.bundle.card
    assert card.confidence is not None
    base, _ = stream(built, built.x)
    rng = np.random.default_rng(7)
    noisy = built.x + rng.normal(0, 1, built.x.shape) * built.x.std(axis=0)
    reports, labels = stream(built, noisy.astype(np.float32))
    true, est = float(np.mean(labels == built.y)), pooled(reports)
    print(f"true {np.mean(labels == built.y):.3f}, estimated {pooled(base):.3f} -> {est:.3f}")
    assert true < 0.85
    assert est < pooled(base) - 0.03
    assert np.mean([r["accuracy"]["change"] < 0 for r in reports]) > 0.9
    assert reports[-1]["accuracy"]["reference"] == round(card.confidence.expected_accuracy, 4)
    assert all(r["status"] == "alert" for r in reports)


# ---- the report, the card and the pipeline -----------------------------------------------------
@pytest.fixture(scope="module")
def cancer(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build(tmp_path_factory.mktemp("cancer"), "breast_cancer", "lr", 0)


def test_window_sums_merge_into_the_whole_streams_estimate(cancer: Built) -> None:
    reports, _ = stream(cancer, cancer.x)
    n = len(reports) * WINDOW
    labels, scores = cancer.runtime.predict_with_scores(cancer.x[:n])
    whole = DriftMonitor(cancer.bundle.card).report(cancer.x[:n], labels, scores)["accuracy"]
    assert whole["rows"] == n
    assert pooled(reports) == pytest.approx(whole["expected"], abs=1e-4)
    assert [r["accuracy"]["rows"] for r in reports] == [WINDOW] * len(reports)
    for r in reports:
        acc = r["accuracy"]
        assert acc["expected"] == pytest.approx(acc["sum"] / acc["rows"], abs=1e-4)
        assert acc["change"] == pytest.approx(acc["expected"] - acc["reference"], abs=2e-4)


def test_a_version_1_card_still_loads_and_says_it_has_no_estimate(cancer: Built) -> None:
    raw = json.loads(json.dumps(cancer.bundle.card.raw))
    raw["card_version"] = 1
    del raw["reference"]["confidence"]
    card = parse_card(raw)
    assert card.version == 1 and card.confidence is None
    labels, scores = cancer.runtime.predict_with_scores(cancer.x[:50])
    report = DriftMonitor(card, window=50).add(cancer.x[:50], labels, scores)
    assert report is not None and report["accuracy"] is None
    assert any("no accuracy estimate: card version 1 predates" in n for n in report["notes"])


def test_no_labels_no_calibration_and_the_report_says_why(tmp_path: Path) -> None:
    built = build(tmp_path, "wine", "lr", 0, labels=False)
    card = built.bundle.card
    assert card.version == 2 and card.confidence is None
    assert "confidence" not in card.raw["reference"] and "confidence" not in card.validation
    report = DriftMonitor(card, window=20).report(built.x[:20], built.runtime.predict(built.x[:20]))
    assert report["accuracy"] is None
    assert any("built without true labels" in n for n in report["notes"])


def test_the_converter_checks_its_calibration_on_held_out_halves(cancer: Built) -> None:
    check = cancer.bundle.card.validation["confidence"]
    assert check["held_out"] is True and check["rows"] == 190
    assert abs(check["expected_accuracy"] - check["accuracy"]) < 0.03
    confidence = cancer.bundle.card.confidence
    assert confidence is not None and confidence.rows == 190
    assert len(confidence.accuracy) <= MAX_BINS


class Spy:
    """A runtime that counts which call the pipeline made."""

    def __init__(self, inner: Runtime) -> None:
        self.inner, self.calls = inner, {"predict": 0, "predict_with_scores": 0}

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.calls["predict"] += 1
        return self.inner.predict(x)

    def scores(self, x: np.ndarray) -> np.ndarray | None:
        return self.inner.scores(x)

    def predict_with_scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        self.calls["predict_with_scores"] += 1
        return self.inner.predict_with_scores(x)


@pytest.mark.parametrize("calibrated", [True, False])
def test_the_pipeline_asks_for_probabilities_only_when_the_card_can_use_them(
    cancer: Built, calibrated: bool
) -> None:
    raw = json.loads(json.dumps(cancer.bundle.card.raw))
    if not calibrated:
        del raw["reference"]["confidence"]
    card = parse_card(raw)
    spy = Spy(cancer.runtime)
    reports: list[dict[str, Any]] = []
    pipeline = Pipeline(on_drift=reports.append, on_window=lambda r: None)
    pipeline.active = ActiveModel.build(card, spy, 50, 100, 10_000)  # type: ignore[arg-type]
    bounds = np.asarray(card_bounds(card))
    inside = cancer.x[((cancer.x >= bounds[:, 0]) & (cancer.x <= bounds[:, 1])).all(axis=1)]
    x = inside[:100]  # rows the line parser accepts
    lines = [("csv", ",".join(repr(float(v)) for v in row).encode()) for row in x]
    for i in range(0, 100, BATCH):
        pipeline.process(lines[i : i + BATCH])
    assert spy.calls == (
        {"predict": 0, "predict_with_scores": 10}
        if calibrated
        else {"predict": 10, "predict_with_scores": 0}
    )
    assert len(reports) == 2
    if calibrated:
        expected = stream(cancer, x)[0]
        assert [r["accuracy"] for r in reports] == [r["accuracy"] for r in expected]
    else:
        assert all(r["accuracy"] is None for r in reports)


def test_onnx_one_call_gives_predicts_labels_and_scores(cancer: Built, tmp_path: Path) -> None:
    for built in (cancer, build(tmp_path, "digits", "rf", 0)):
        labels, scores = built.runtime.predict_with_scores(built.x)
        np.testing.assert_array_equal(labels, built.runtime.predict(built.x))
        expected = built.runtime.scores(built.x)
        assert scores is not None and expected is not None
        np.testing.assert_array_equal(scores, expected)
        one, _ = built.runtime.predict_with_scores(built.x[:1])
        np.testing.assert_array_equal(one, labels[:1])


# ---- the calibration itself ----------------------------------------------------------------------
def test_pav_matches_scikit_learns_isotonic_regression() -> None:
    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 60):
        values, weights = rng.random(n), rng.integers(1, 30, n).astype(np.float64)
        expected = IsotonicRegression().fit(np.arange(n), values, sample_weight=weights)
        np.testing.assert_allclose(pav(values, weights), expected.predict(np.arange(n)))


def test_fit_is_monotone_bounded_and_keeps_the_accuracy_of_its_rows() -> None:
    """Binning then pooling keeps each pool's total, so over the rows it was fit on the
    calibrated confidences add up to the rows that were right."""
    rng = np.random.default_rng(5)
    for n in (1, 30, 400, 5000):
        conf = rng.uniform(0.4, 1.0, n)
        right = rng.random(n) < conf**2
        scores = np.stack([conf, 1 - conf], axis=1)
        c = fit_calibration(scores, right, scores)
        assert len(c.accuracy) == len(c.edges) + 1 <= MAX_BINS
        assert list(c.accuracy) == sorted(c.accuracy) and list(c.edges) == sorted(set(c.edges))
        assert c.expected_accuracy == pytest.approx(right.mean(), abs=1e-9)
        assert c.rows == n


def test_ties_and_a_single_confidence_give_one_step() -> None:
    scores = np.tile([[1.0, 0.0]], (50, 1))
    c = fit_calibration(scores, np.arange(50) % 5 != 0, scores)
    assert c.edges == () and c.accuracy == (0.8,) and c.expected_accuracy == pytest.approx(0.8)


# ---- the device footprint ---------------------------------------------------------------
BLOCKER = textwrap.dedent(
    """
    import sys
    BLOCKED = {"sklearn", "skl2onnx", "onnx", "tensorflow", "cloud_hub", "converters", "scipy"}
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not on a device")
    sys.meta_path.insert(0, Block())
    """
)


def test_the_estimate_imports_nothing_new_on_the_device(cancer: Built, tmp_path: Path) -> None:
    """A serving agent with a calibrated card loads exactly the modules it loads without one."""
    bundle = cancer.path
    script = BLOCKER + textwrap.dedent(
        f"""
        import json
        import numpy as np
        from edge_agent.update.bundle import read_bundle
        from edge_agent.inference.pipeline import ActiveModel, Pipeline
        from edge_agent.protocol.card import parse_card
        from edge_agent.inference.runtime import load_runtime
        b = read_bundle(open({str(bundle)!r}, "rb").read(), None, 10**8)
        raw = json.loads(json.dumps(b.card.raw))
        del raw["reference"]["confidence"]
        seen = {{}}
        for name, card in (("plain", parse_card(raw)), ("calibrated", b.card)):
            reports = []
            p = Pipeline(on_drift=reports.append, on_window=lambda r: None)
            p.active = ActiveModel.build(card, load_runtime(card, b.model_bytes), 20, 100, 10000)
            line = ",".join(repr(v) for v in card.sample_inputs[0]).encode()
            for _ in range(20):
                p.process([("csv", line)])
            assert (reports[0]["accuracy"] is None) == (name == "plain"), reports[0]["accuracy"]
            seen[name] = sorted(sys.modules)
        print(json.dumps(sorted(set(seen["calibrated"]) - set(seen["plain"]))))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
