"""Drift statistics on real data: PSI, the drift monitor, and the card's quantile bins."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.datasets import load_breast_cancer

from converters.card import reference_card
from edge_agent.drift import EPSILON, DriftMonitor, psi, status_of
from edge_agent.drift import monitor as monitor_module
from edge_agent.native import count_slots
from edge_agent.protocol.card import (
    ModelCard,
    bucket_counts,
    feature_profiles,
    parse_card,
    quantile_edges,
)

BINS = 10


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, list[str]]:
    data = load_breast_cancer()
    return np.asarray(data.data, dtype=np.float64), [str(n) for n in data.feature_names]


@pytest.fixture(scope="module")
def halves(cancer: tuple[np.ndarray, list[str]]) -> tuple[np.ndarray, np.ndarray]:
    x, _ = cancer
    order = np.random.default_rng(0).permutation(len(x))
    return x[order[: len(x) // 2]], x[order[len(x) // 2 :]]


def reference_psi(ref_counts: np.ndarray, live_counts: np.ndarray) -> float:
    """PSI written independently: symmetric KL divergence of the two binned distributions,
    with each bin's share floored at drift.EPSILON (the clipping drift.psi documents)."""
    p = np.maximum(np.asarray(ref_counts, float) / max(float(np.sum(ref_counts)), 1.0), EPSILON)
    q = np.maximum(np.asarray(live_counts, float) / max(float(np.sum(live_counts)), 1.0), EPSILON)
    return float(np.sum(q * np.log(q / p)) + np.sum(p * np.log(p / q)))


CONFIDENCE = {"edges": [0.75], "accuracy": [0.6, 0.95], "expected_accuracy": 0.9, "rows": 100}


def card_for(x: np.ndarray, names: list[str]) -> ModelCard:
    """A card of the current version whose drift reference profile is `x` (predictions: one
    of each class), with a confidence calibration."""
    return parse_card(reference_card(x, names, name="cancer", confidence=CONFIDENCE))


# ---- psi -------------------------------------------------------------------------------------
def test_psi_of_identical_histograms_is_zero() -> None:
    counts = np.array([5, 0, 12, 40, 3])
    assert psi(counts, counts) == 0.0
    assert psi(counts, counts * 7) == pytest.approx(0.0, abs=1e-12)


def test_psi_matches_an_independent_computation(
    cancer: tuple[np.ndarray, list[str]], halves: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = cancer
    ref, live = halves
    for j in range(x.shape[1]):
        edges = quantile_edges(ref[:, j], BINS)
        for other in (live[:, j], live[:, j] * 1.3 + 0.1 * live[:, j].std()):
            a, b = bucket_counts(ref[:, j], edges), bucket_counts(other, edges)
            assert psi(a, b) == pytest.approx(reference_psi(a, b), rel=1e-9, abs=1e-12)


@settings(max_examples=100, derandomize=True, database=None, deadline=None)
@given(
    data=st.integers(1, 12).flatmap(
        lambda n: st.tuples(
            arrays(np.int64, n, elements=st.integers(0, 1000)),
            arrays(np.int64, n, elements=st.integers(0, 1000)),
        )
    )
)
def test_psi_matches_on_any_histograms_including_empty_bins(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    a, b = data
    value = psi(a, b)
    assert value >= 0.0
    assert np.isfinite(value)
    assert value == pytest.approx(reference_psi(a, b), rel=1e-9, abs=1e-12)
    assert value == pytest.approx(psi(b, a), rel=1e-9, abs=1e-12)  # PSI is symmetric


def test_psi_on_real_data_same_distribution_is_small_and_shift_is_large(
    cancer: tuple[np.ndarray, list[str]], halves: tuple[np.ndarray, np.ndarray]
) -> None:
    _, names = cancer
    ref, live = halves
    j = names.index("mean radius")
    edges = quantile_edges(ref[:, j], BINS)
    ref_counts = bucket_counts(ref[:, j], edges)
    assert psi(ref_counts, bucket_counts(ref[:, j], edges)) == 0.0
    same = psi(ref_counts, bucket_counts(live[:, j], edges))
    assert same < 0.1
    shifted = live[:, j] + 1.0 * ref[:, j].std()
    moved = psi(ref_counts, bucket_counts(shifted, edges))
    assert moved > 0.25
    assert moved > 10 * same


# ---- the monitor -----------------------------------------------------------------------------
def feed(monitor: DriftMonitor, x: np.ndarray, batch: int) -> list[dict[str, Any]]:
    reports = []
    for start in range(0, len(x), batch):
        report = monitor.add(x[start : start + batch])
        if report is not None:
            reports.append(report)
    return reports


@pytest.mark.parametrize("batch", [1, 7, 16, 50])
def test_monitor_reports_exactly_every_window_rows(
    cancer: tuple[np.ndarray, list[str]], halves: tuple[np.ndarray, np.ndarray], batch: int
) -> None:
    _, names = cancer
    ref, live = halves
    monitor = DriftMonitor(card_for(ref, names), window=50)
    reports = feed(monitor, live[:280], batch)
    assert len(reports) == 280 // 50
    assert [r["window"] for r in reports] == [50] * len(reports)


def test_monitor_windows_hold_the_rows_in_order(
    cancer: tuple[np.ndarray, list[str]], halves: tuple[np.ndarray, np.ndarray]
) -> None:
    """Each report is about exactly its own window of rows, even when batches straddle two."""
    _, names = cancer
    ref, live = halves
    card = card_for(ref, names)
    straddling = feed(DriftMonitor(card, window=40), live[:120], 16)
    by_window = [DriftMonitor(card, window=40).report(live[i : i + 40]) for i in (0, 40, 80)]
    own = ("window", "psi", "ks", "js", "out_of_range", "p_values", "counts")  # not the pooled p
    assert [{k: r[k] for k in own} for r in straddling] == [
        {k: r[k] for k in own} for r in by_window
    ]
    assert straddling[0] == by_window[0]  # the first window has no history to pool


def test_monitor_report_contents_and_status(
    cancer: tuple[np.ndarray, list[str]], halves: tuple[np.ndarray, np.ndarray]
) -> None:
    _, names = cancer
    ref, live = halves
    card = card_for(ref, names)
    monitor = DriftMonitor(card, window=100)
    assert monitor.add(live[:99]) is None
    report = monitor.add(live[99:100])
    assert report is not None
    assert report["model"] == {"name": "cancer", "version": 1}
    assert report["window"] == 100
    assert set(report["psi"]) == set(names) == set(report["p_values"]) == set(report["q"])
    assert report["max_psi"] == max(report["psi"].values())
    assert report["levels"] == {"warn": 0.01, "alert": 0.0001}
    assert report["status"] == status_of(report["p"], report["levels"])
    assert report["p_values"][report["worst_feature"]] == min(report["p_values"].values())
    assert report["scale"] == 1  # nothing to pool yet
    # each per-feature value is psi() of that feature's live counts, and the counts are there
    j = names.index("worst area")
    profile = card.features[j]
    live_counts = bucket_counts(live[:100, j], list(profile.edges))
    expected = psi(np.asarray(profile.counts), live_counts)
    assert report["psi"]["worst area"] == pytest.approx(expected, abs=1e-4)
    assert report["counts"]["bins"]["worst area"] == live_counts.tolist()
    assert report["counts"]["rows"] == 100


def test_the_levels_follow_warn_every_and_alert_every(
    cancer: tuple[np.ndarray, list[str]], halves: tuple[np.ndarray, np.ndarray]
) -> None:
    _, names = cancer
    ref, live = halves
    card = card_for(ref, names)
    window = live[:100].copy()
    window[:, 3] += 0.6 * ref[:, 3].std()  # a moderate shift of one feature
    p = DriftMonitor(card, window=100).report(window)["p"]
    assert 0 < p < 0.5
    for warn_every, alert_every, status in (
        (1.5 / p, 2 / p, "ok"),
        (0.5 / p, 2 / p, "warn"),
        (0.25 / p, 0.5 / p, "alert"),
    ):
        if warn_every > 1:
            monitor = DriftMonitor(card, 100, warn_every=warn_every, alert_every=alert_every)
            assert monitor.report(window)["status"] == status
    with pytest.raises(ValueError, match="warn_every < alert_every"):
        DriftMonitor(card, 100, warn_every=500, alert_every=100)


def test_monitor_flags_one_shifted_feature(
    cancer: tuple[np.ndarray, list[str]], halves: tuple[np.ndarray, np.ndarray]
) -> None:
    _, names = cancer
    ref, live = halves
    monitor = DriftMonitor(card_for(ref, names), window=200)
    calm = monitor.add(live[:200])
    assert calm is not None
    assert calm["status"] == "ok" and calm["moved"] == []  # a 200-row sample of the population
    j = names.index("mean texture")
    shifted = live[:200].copy()
    shifted[:, j] += 2 * ref[:, j].std()
    report = monitor.add(shifted)
    assert report is not None
    assert report["worst_feature"] == "mean texture"
    assert report["moved"] == ["mean texture"]
    assert report["status"] == "alert"
    assert report["psi"]["mean texture"] > 1.0


# ---- quantile edges and bucket counts --------------------------------------------------------
def test_bucket_counts_sum_to_the_finite_values_and_ignore_nan() -> None:
    values = np.array([1.0, np.nan, 2.0, 3.0, np.inf, -np.inf, 2.5, np.nan, 10.0])
    edges = [1.5, 2.5]
    counts = bucket_counts(values, edges)
    assert counts.tolist() == [1, 2, 2]  # (-inf, 1.5], (1.5, 2.5], (2.5, inf)
    assert counts.sum() == np.isfinite(values).sum()


@settings(max_examples=100, derandomize=True, database=None, deadline=None)
@given(
    values=arrays(
        np.float64,
        st.integers(0, 60),
        elements=st.floats(-1e6, 1e6) | st.just(np.nan) | st.sampled_from([0.0, 1.0, 2.0]),
    ),
    bins=st.integers(1, 12),
)
def test_quantile_bins_cover_every_finite_value(values: np.ndarray, bins: int) -> None:
    edges = quantile_edges(values, bins)
    assert edges == sorted(set(edges))
    assert len(edges) <= bins - 1
    counts = bucket_counts(values, edges)
    assert len(counts) == len(edges) + 1
    assert counts.sum() == np.isfinite(values).sum()
    finite = values[np.isfinite(values)]
    for edge in edges:  # every edge lies strictly inside the observed range, between values
        assert finite.min() < edge < finite.max()
        assert edge not in finite


def test_edges_sit_between_observed_values_for_a_discrete_feature() -> None:
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 5, size=500).astype(np.float64)  # a feature with five levels
    edges = quantile_edges(counts, BINS)
    assert edges  # the levels are separated
    assert all(e - int(e) == 0.5 for e in edges)
    assert set(edges) <= {0.5, 1.5, 2.5, 3.5}
    # small noise on an integer value never flips it into another bin
    level_bins = bucket_counts(counts, edges)
    noisy_bins = bucket_counts(counts + rng.uniform(-0.2, 0.2, size=counts.size), edges)
    assert level_bins.tolist() == noisy_bins.tolist()


def test_edges_of_real_features_between_observed_values(
    cancer: tuple[np.ndarray, list[str]],
) -> None:
    x, _ = cancer
    for j in range(x.shape[1]):
        col = x[:, j]
        edges = quantile_edges(col, BINS)
        observed = np.unique(col)
        for edge in edges:
            below, above = observed[observed < edge].max(), observed[observed > edge].min()
            assert edge == pytest.approx((below + above) / 2)
        counts = bucket_counts(col, edges)
        assert counts.sum() == len(col)
        assert counts.max() <= 2 * len(col) / BINS  # roughly equal mass


@pytest.mark.parametrize(
    "values", [np.array([]), np.array([np.nan, np.nan]), np.array([4.0]), np.array([3.0] * 9)]
)
def test_degenerate_features_have_no_edges(values: np.ndarray) -> None:
    edges = quantile_edges(values, BINS)
    assert edges == []
    assert bucket_counts(values, edges).tolist() == [np.isfinite(values).sum()]


def test_feature_profile_ignores_nan_and_records_the_missing_rate(
    cancer: tuple[np.ndarray, list[str]],
) -> None:
    x, names = cancer
    col = x[:, :1].copy()
    col[::4] = np.nan
    (profile,) = feature_profiles(col, names[:1], BINS)
    finite = col[np.isfinite(col)]
    assert sum(profile.counts) == finite.size
    assert profile.missing_rate == pytest.approx(np.isnan(col).mean())
    assert profile.mean == pytest.approx(finite.mean())
    assert profile.min == finite.min()
    assert profile.max == finite.max()


# ---- KS, JS, out-of-range, missing, prediction drift (against scipy, on real data) -----------
def _shifted(live: np.ndarray, ref: np.ndarray, j: int, sds: float = 1.5) -> np.ndarray:
    out = live.copy()
    out[:, j] += sds * ref[:, j].std()
    return out


@pytest.mark.parametrize("shift", [False, True])
def test_ks_and_js_match_scipy_on_real_data(
    cancer: tuple[np.ndarray, list[str]], halves: tuple[np.ndarray, np.ndarray], shift: bool
) -> None:
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import ks_2samp

    _, names = cancer
    ref, live = halves
    card = card_for(ref, names)
    window = (_shifted(live, ref, 3) if shift else live)[:250].astype(np.float32)
    report = feed(DriftMonitor(card, window=250), window, 16)[0]
    for j, (name, profile) in enumerate(zip(names, card.features, strict=True)):
        col = window[:, j].astype(np.float64)
        expected_ks = ks_2samp(np.asarray(profile.ks), col).statistic
        assert report["ks"][name] == pytest.approx(expected_ks, abs=1e-4), name
        live_counts = bucket_counts(col, list(profile.edges)).astype(float)
        expected_js = jensenshannon(np.asarray(profile.counts, float), live_counts, base=2)
        assert report["js"][name] == pytest.approx(expected_js, abs=1e-4), name
        assert report["psi"][name] == pytest.approx(
            reference_psi(np.asarray(profile.counts), live_counts), abs=1e-4
        )
    # the card's bounded sample stands for the whole reference: KS close to the full one
    j = names.index("mean radius")
    full = ks_2samp(ref[:, j], window[:, j].astype(np.float64)).statistic
    assert report["ks"]["mean radius"] == pytest.approx(full, abs=0.02)


def test_no_false_alert_on_unshifted_data_and_the_shift_is_named(
    cancer: tuple[np.ndarray, list[str]], halves: tuple[np.ndarray, np.ndarray]
) -> None:
    _, names = cancer
    ref, live = halves
    card = card_for(ref, names)
    calm = feed(DriftMonitor(card, window=len(live)), live, 16)[0]
    assert calm["status"] == "ok", calm["p_values"]
    assert max(calm["ks"].values()) < 0.2
    j = names.index("mean texture")
    moved = feed(DriftMonitor(card, window=len(live)), _shifted(live, ref, j), 16)[0]
    assert moved["status"] == "alert"
    assert moved["moved"][0] == "mean texture"
    assert moved["ks"]["mean texture"] > 0.4
    assert moved["out_of_range"]["mean texture"] > calm["out_of_range"]["mean texture"]


def test_out_of_range_counts_values_past_the_card_min_and_max(
    cancer: tuple[np.ndarray, list[str]],
) -> None:
    x, names = cancer
    card = card_for(x, names)
    rows = np.repeat(x[:1], 10, axis=0)
    rows[:3, 0] = card.features[0].max + 1  # 3 above
    rows[3:4, 0] = card.features[0].min - 1  # 1 below
    rows[4:5, 0] = card.features[0].max  # on the bound: in range
    report = DriftMonitor(card, window=10).add(rows)
    assert report is not None
    assert report["out_of_range"][names[0]] == pytest.approx(0.4)


def test_missing_rates_count_rejected_rows(cancer: tuple[np.ndarray, list[str]]) -> None:
    x, names = cancer
    monitor = DriftMonitor(card_for(x, names), window=8)
    monitor.missing(2)
    monitor.missing(2)
    monitor.missing()  # feature unknown: counts as a row only
    report = monitor.add(x[:8])
    assert report is not None
    assert report["missing_rows"] == 3
    assert report["missing"][names[2]] == pytest.approx(2 / 11, abs=1e-4)
    assert report["missing"][names[0]] == 0.0
    assert monitor.add(x[:8])["missing_rows"] == 0  # type: ignore[index]  # a new window


def test_prediction_drift_from_the_card_classes(cancer: tuple[np.ndarray, list[str]]) -> None:
    x, names = cancer
    card = card_for(x, names)  # reference predictions: one of each class
    monitor = DriftMonitor(card, window=100)
    same = monitor.add(x[:100], np.array([0, 1] * 50))
    assert same is not None and same["prediction"]["psi"] == 0.0
    assert same["prediction"]["counts"] == {"0": 50, "1": 50}
    skewed = monitor.add(x[:100], np.array([1] * 100))
    assert skewed is not None and skewed["prediction"]["psi"] > 0.25
    assert skewed["status"] == "alert"


def test_time_window_closes_after_window_s(cancer: tuple[np.ndarray, list[str]]) -> None:
    x, names = cancer
    monitor = DriftMonitor(card_for(x, names), window=1000, window_s=10.0)
    assert monitor.add(x[:5], now=100.0) is None
    assert monitor.add(x[5:9], now=105.0) is None
    report = monitor.add(x[9:10], now=110.0)
    assert report is not None and report["window"] == 10


def test_old_card_thresholds_are_not_used_and_the_report_says_so(
    cancer: tuple[np.ndarray, list[str]],
) -> None:
    """A card from before calibration carries fixed PSI thresholds: a drift-free window of it
    is still judged by the sample-size levels (ok), and every report names what was set aside."""
    x, names = cancer
    raw = card_for(x, names).raw | {"drift": {"psi_warn": 0.01, "psi_alert": 0.02}}
    card = parse_card(raw)
    report = DriftMonitor(card, window=100).add(
        x[np.random.default_rng(1).permutation(len(x))][:100]
    )
    assert report is not None and report["status"] == "ok"
    assert report["max_psi"] > 0.02  # what the old bands would have alerted on
    assert any("psi_alert 0.02" in note and "not used" in note for note in report["notes"])
    assert "notes" not in DriftMonitor(card_for(x, names), window=100).add(x[:100])  # type: ignore[operator]


def test_capture_is_bounded_and_only_on_alerts(cancer: tuple[np.ndarray, list[str]]) -> None:
    x, names = cancer
    shifted = x[:50] + 10 * x.std(axis=0)
    loud = DriftMonitor(card_for(x, names), window=50, capture=7).add(shifted)
    assert loud is not None and loud["status"] == "alert"
    assert len(loud["capture"]["rows"]) == 7
    assert loud["capture"]["rows"][-1] == pytest.approx(shifted[-1].tolist())
    sample = x[np.random.default_rng(2).permutation(len(x))[:50]]  # (x[:50] is mostly malignant)
    calm = DriftMonitor(card_for(x, names), window=50, capture=7).add(sample)
    assert calm is not None and calm["status"] == "ok" and "capture" not in calm


def test_old_cards_without_a_ks_sample_still_read(cancer: tuple[np.ndarray, list[str]]) -> None:
    x, names = cancer
    raw = card_for(x, names).raw
    old = {**raw, "reference": {**raw["reference"]}}
    old["reference"]["features"] = [
        {k: v for k, v in f.items() if k != "ks"} for f in raw["reference"]["features"]
    ]
    card = parse_card(old)
    assert card.features[0].ks == ()
    report = DriftMonitor(card, window=100).add(x[:100])
    assert report is not None and 0 <= report["ks"][names[0]] <= 1
    assert any("no KS reference sample" in note for note in report["notes"])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"drift": {"psi_warn": -1}}, "psi_warn: expected a positive number"),
        ({"drift": {"psi_wrn": 0.1}}, "unknown key 'psi_wrn'"),
        ({"drift": {"psi_warn": 0.3, "psi_alert": 0.2}}, "psi_warn below psi_alert"),
        ({"drift": [0.1]}, "card.drift: expected an object"),
        ({"ks": [3.0, 1.0]}, "ascending order"),
        ({"ks": ["a"]}, "expected a list of finite numbers"),
        ({"card_version": 4}, r"card.card_version: expected one of \(1, 2, 3\), got 4"),
        ({"card_version": 1}, "confidence: expected only in a classifier's card of version 2"),
        ({"task": "regression"}, "confidence: expected only in a classifier's card"),
        ({"confidence": [0.9]}, "card.reference.confidence: expected an object, got list"),
        ({"confidence": {**CONFIDENCE, "bins": 3}}, "unknown key 'bins'"),
        ({"confidence": {"edges": [0.5]}}, "confidence: missing field 'accuracy'"),
        ({"confidence": {**CONFIDENCE, "edges": [1.5]}}, "edges: expected fewer than 50 numbers"),
        ({"confidence": {**CONFIDENCE, "edges": [0.8, 0.7]}}, "edges: expected strictly ascend"),
        ({"confidence": {**CONFIDENCE, "edges": ["a"]}}, "edges: expected a list of finite"),
        ({"confidence": {**CONFIDENCE, "edges": [0.01 * i for i in range(1, 51)]}}, "fewer than"),
        ({"confidence": {**CONFIDENCE, "accuracy": [0.9]}}, r"accuracy: expected 2 numbers"),
        ({"confidence": {**CONFIDENCE, "accuracy": [0.9, 1.2]}}, "from 0 to 1 \\(one per bin"),
        ({"confidence": {**CONFIDENCE, "accuracy": [0.9, 0.8]}}, "expected non-decreasing"),
        ({"confidence": {**CONFIDENCE, "expected_accuracy": 2}}, "expected_accuracy: expected a"),
        ({"confidence": {**CONFIDENCE, "expected_accuracy": "high"}}, "expected int or float"),
        ({"confidence": {**CONFIDENCE, "rows": 0}}, "rows: expected a count of 1 or more, got 0"),
        ({"confidence": {**CONFIDENCE, "rows": True}}, "rows: expected int, got bool"),
    ],
)
def test_bad_drift_parts_of_a_card_are_rejected(
    cancer: tuple[np.ndarray, list[str]], change: dict[str, Any], match: str
) -> None:
    from edge_agent.errors import BundleRejected

    x, names = cancer
    raw = card_for(x, names).raw
    if "ks" in change:
        feats = [dict(f) for f in raw["reference"]["features"]]
        feats[0]["ks"] = change["ks"]
        raw = {**raw, "reference": {**raw["reference"], "features": feats}}
    elif "confidence" in change:
        raw = {**raw, "reference": {**raw["reference"], "confidence": change["confidence"]}}
    else:
        raw = {**raw, **change}
    with pytest.raises(BundleRejected, match=match):
        parse_card(raw)


# ---- where the monitor counts a value: the float32 fast path against the complex grid ---------
def complex_slots(monitor: DriftMonitor, x: np.ndarray) -> np.ndarray:
    """Each value's slot written from the layout's definition: one searchsorted per side on
    the complex grid (`_Layout.slots` returns the same slots, in no particular order)."""
    grid = monitor._layout.grid
    keys = np.arange(x.shape[1]) + 1j * x
    return np.searchsorted(grid, keys, "left") + np.searchsorted(grid, keys, "right")


@pytest.fixture(scope="module")
def cancer_monitor(cancer: tuple[np.ndarray, list[str]]) -> DriftMonitor:
    x, names = cancer
    return DriftMonitor(card_for(x, names), window=50)  # card values: float64, most not float32


def grid_neighbours(monitor: DriftMonitor) -> np.ndarray:
    """Every finite grid point as float32, and the float32s either side of it."""
    points = monitor._layout.grid.imag
    as32 = points[np.isfinite(points)].astype(np.float32)
    up, down = np.nextafter(as32, np.float32(np.inf)), np.nextafter(as32, np.float32(-np.inf))
    return np.concatenate([as32, up, down])


F32_MAX = float(np.finfo(np.float32).max)
F32_TINY = float(np.finfo(np.float32).smallest_subnormal)


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(data=st.data(), rows=st.integers(1, 12))
def test_float32_slots_equal_the_complex_grid(
    cancer_monitor: DriftMonitor, data: st.DataObject, rows: int
) -> None:
    n = cancer_monitor.card.n_features
    special = st.sampled_from([0.0, -0.0, F32_MAX, -F32_MAX, F32_TINY, -F32_TINY])
    near = st.sampled_from(grid_neighbours(cancer_monitor).tolist())
    values = st.floats(-F32_MAX, F32_MAX, width=32) | special | near
    x = data.draw(arrays(np.float32, (rows, n), elements=values)).astype(np.float64)
    slots = np.sort(cancer_monitor._layout.slots(x))
    assert slots.tolist() == np.sort(complex_slots(cancer_monitor, x), None).tolist()


@settings(max_examples=50, derandomize=True, database=None, deadline=None)
@given(data=st.data())
def test_float64_slots_equal_the_complex_grid(
    cancer_monitor: DriftMonitor, data: st.DataObject
) -> None:
    n = cancer_monitor.card.n_features
    points = cancer_monitor._layout.grid.imag
    near = st.sampled_from(points[np.isfinite(points)].tolist())
    values = st.floats(-1e300, 1e300) | near
    x = data.draw(arrays(np.float64, (3, n), elements=values))
    x[0, 0] = 0.1  # not a float32: the complex path
    expected = np.sort(complex_slots(cancer_monitor, x), None)
    assert np.sort(cancer_monitor._layout.slots(x)).tolist() == expected.tolist()


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(data=st.data(), rows=st.integers(1, 12))
def test_the_c_count_equals_the_complex_grid(
    cancer_monitor: DriftMonitor, data: st.DataObject, rows: int
) -> None:
    # edge_agent.native.count_slots (built by the dev install) against the layout's definition
    assert count_slots is not None
    n = cancer_monitor.card.n_features
    points = cancer_monitor._layout.grid.imag
    near = st.sampled_from(
        [*points[np.isfinite(points)].tolist(), *grid_neighbours(cancer_monitor)]
    )
    values = st.floats(-1e300, 1e300) | st.floats(-F32_MAX, F32_MAX, width=32) | near
    x = data.draw(arrays(np.float64, (rows, n), elements=values))
    layout = cancer_monitor._layout
    counts = np.zeros(2 * len(layout.grid) + 1, dtype=np.int64)
    assert count_slots(x, layout.points, layout.point_starts, counts)
    expected = np.bincount(complex_slots(cancer_monitor, x).ravel(), minlength=len(counts))
    assert counts.tolist() == expected.tolist()
    x[rows - 1, n - 1] = np.nan  # not finite: nothing counted, the caller's path
    assert not count_slots(x, layout.points, layout.point_starts, counts)
    assert counts.tolist() == expected.tolist()


@settings(max_examples=50, derandomize=True, database=None, deadline=None)
@given(data=st.data(), windows=st.integers(1, 4))
def test_the_c_ks_statistics_equal_numpys(
    cancer_monitor: DriftMonitor, data: st.DataObject, windows: int
) -> None:
    n = cancer_monitor.card.n_features
    points = cancer_monitor._layout.grid.imag
    near = st.sampled_from(points[np.isfinite(points)].tolist())
    measures = []
    for _ in range(windows):
        rows = data.draw(st.integers(0, 30))
        x = data.draw(arrays(np.float64, (rows, n), elements=st.floats(-1e4, 1e4) | near))
        tally = cancer_monitor._tally.__class__(
            np.zeros_like(cancer_monitor._tally.counts),
            np.zeros_like(cancer_monitor._tally.preds),
            np.zeros(n, dtype=np.int64),
        )
        cancer_monitor._layout.add(x, tally.counts)
        measures.append(cancer_monitor._measure(tally))
    k = np.array([m.total for m in measures], dtype=np.float64)
    le, lt = np.array([m.le for m in measures]), np.array([m.lt for m in measures])
    assert monitor_module.ks_gaps is not None  # built by the dev install
    in_c = cancer_monitor._ks(k, le, lt)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(monitor_module, "ks_gaps", None)
        assert in_c.tolist() == cancer_monitor._ks(k, le, lt).tolist()


def test_non_finite_values_are_missing_and_the_rest_counted(
    cancer: tuple[np.ndarray, list[str]],
) -> None:
    x, names = cancer
    rows = x[:20].astype(np.float32).astype(np.float64)
    rows[3, 1], rows[5, 1], rows[7, 4] = np.nan, np.inf, -np.inf
    monitor = DriftMonitor(card_for(x, names), window=10**6)
    monitor._accumulate(rows, None)
    finite = np.isfinite(rows)
    slots = complex_slots(monitor, np.where(finite, rows, 0.0))[finite]
    expected = np.bincount(slots, minlength=len(monitor._tally.counts))
    assert monitor._tally.missing.tolist() == (~finite).sum(axis=0).tolist()
    assert monitor._tally.counts.tolist() == expected.tolist()
    assert monitor._tally.counts.sum() == finite.sum()


@pytest.mark.parametrize("batch", [1, 16, 100])
def test_reports_are_the_same_with_the_complex_grid_alone(
    cancer: tuple[np.ndarray, list[str]],
    halves: tuple[np.ndarray, np.ndarray],
    batch: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whole reports, fed float32 rows as the pipeline feeds them, in micro-batches that
    straddle stage flushes and windows: the same as when every value takes the complex path."""
    _, names = cancer
    ref, live = halves
    card = card_for(ref, names)
    rows = np.concatenate([live, live * 1.2]).astype(np.float32)
    predictions = (rows[:, 0] > np.median(rows[:, 0])).astype(np.int64)

    def reports() -> list[dict[str, Any]]:
        monitor = DriftMonitor(card, window=120, capture=3)
        out = []
        for i in range(0, len(rows), batch):
            report = monitor.add(rows[i : i + batch], predictions[i : i + batch], now=0.0)
            if report is not None:
                out.append(report)
        return out

    fast = reports()
    monkeypatch.setattr(
        "edge_agent.drift.layout.Layout.slots",
        lambda self, x, keep=None: complex_slots_of(self.grid, x, keep),
    )
    assert fast == reports()
    assert len(fast) == len(rows) // 120


def complex_slots_of(grid: np.ndarray, x: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    keys = np.arange(x.shape[1]) + 1j * x
    slots = np.searchsorted(grid, keys, "left") + np.searchsorted(grid, keys, "right")
    return slots.ravel() if keep is None else slots[keep]
