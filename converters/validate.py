"""Parity between the source model and the deployable artifact, on validation data.

`validation_report` runs both on the same float32 rows and returns a JSON-ready dict: how far the
outputs moved, how often the labels (an anomaly model's flags) agree, the task metric before and
after, the model sizes and the batch-1 latency. The artifact runs on the agent's own runtime
classes, so the figures are those of the code a device runs. Its "conversion" and "quantization"
stages compare outputs row by row: the unquantized conversion against the source, the shipped
model against the unquantized one. `check_parity` turns a report into a pass or a ParityError
that names the rows. Metrics are plain numpy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from converters.source import Artifact, SourceModel
from edge_agent.errors import BadDataError, BundleRejected
from edge_agent.inference.runtime import Runtime, open_runtime
from edge_agent.protocol.card import Anomaly

LATENCY_WARMUP = 5
LATENCY_RUNS = 100

# Row by row, how far an output may move, and on what share of the rows it may move further.
# A value (a regressor's, an anomaly score) is measured against the spread of the source's
# outputs (their standard deviation), class probabilities in probability; a changed label is
# always beyond. The unquantized conversion must reproduce the source up to float32 rounding;
# the quantized model may move the unquantized one's outputs by what its precision allows.
# Measured on the suite's models (the datasets that ship with scikit-learn; linear models, SVC,
# KNN, trees, boosting, MLPs; Keras MLPs): float32 moves a value by at most 1e-5 of its spread
# and a probability by 1e-6; float16 by 5e-4 and 2e-4; int8 by 0.04 and 0.084, flipping no
# label. A distance-weighted KNN that skl2onnx converts as uniform moves every row, by up to
# 2.6 spreads (regressor) or 0.8 in probability (classifier).
CONVERSION_TOLERANCE = 1e-3
QUANTIZE_TOLERANCE = {"none": CONVERSION_TOLERANCE, "float16": 1e-2, "dynamic": 0.1, "static": 0.1}
MAX_BEYOND = {"conversion": 0.01, "quantization": 0.05}
# Trees and binned features split on thresholds the source compares in float64 and the graph in
# float32: a row with a feature lying on a split takes the other branch (on friedman1's
# training rows, 30 of 200 rows of a HistGradientBoostingRegressor do). Such a row is compared
# again with the source's answer on it moved one float32 step (`_outputs`), so trees are held
# to the same share as every other model.
MAX_ROWS_NAMED = 5  # rows beyond tolerance a report and an error name


class ParityError(BadDataError):
    """The converted model is measurably worse than the source model."""


def artifact_runtime(artifact: Artifact, source: SourceModel, classes: list[Any]) -> Runtime:
    """The runtime a device would open for `artifact`, single-threaded like a small device."""
    try:
        return open_runtime(artifact.runtime, artifact.model_bytes, source.task, classes, 1)
    except BundleRejected as exc:
        raise BadDataError(f"the converted model does not load: {exc.detail}") from exc


def validation_report(
    source: SourceModel,
    runtime: Runtime,
    artifact: Artifact,
    x: np.ndarray,
    y: np.ndarray | None,
    anomaly: Anomaly | None = None,
    classes: Sequence[Any] = (),
    row_ids: np.ndarray | None = None,
) -> dict[str, Any]:
    """Compare `source` with the deployable `artifact` (opened as `runtime`) on rows `x`. `y`
    are the true labels or targets; for an anomaly model (read by `anomaly`) true flags or None
    (then the flags are compared with the source's only). `row_ids`: the rows' places in the
    sample, for the rows a failed comparison names."""
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    pred = runtime.predict(x32)
    ref = source.predict(x32)
    report: dict[str, Any] = {"task": source.task, "rows": len(x32)}
    report.update(_outputs(source, runtime, artifact, x32, ref, pred, classes, row_ids))
    if anomaly is not None:
        report.update(_anomaly(y, ref, pred, anomaly))
    elif y is None:
        raise BadDataError(f"validation of a {source.task} model: expected targets, got none")
    elif source.task == "classification":
        report.update(_classification(y, ref, pred, source.scores(x32), runtime.scores(x32)))
    else:
        report.update(_regression(y, ref, pred))
    report.update(
        quantize=artifact.quantize,
        size_bytes_before=len(artifact.float_bytes),
        size_bytes_after=len(artifact.model_bytes),
        size_ratio=len(artifact.model_bytes) / len(artifact.float_bytes),
        latency_p50_ms=latency_p50_ms(runtime, x32),
    )
    if artifact.validated_on:
        report.update(validated_on=artifact.validated_on, op_set=artifact.op_set)
    if artifact.on_target is not None:
        report["target"] = artifact.on_target
    if artifact.note:
        report["note"] = artifact.note
    return report


def _outputs(
    source: SourceModel,
    runtime: Runtime,
    artifact: Artifact,
    x: np.ndarray,
    ref: np.ndarray,
    pred: np.ndarray,
    classes: Sequence[Any],
    row_ids: np.ndarray | None,
) -> dict[str, Any]:
    """The row-by-row comparison: "conversion" (the unquantized artifact against the source,
    which catches a converter that computes something else) and "quantization" (the shipped
    artifact against the unquantized one, within what its quantization allows)."""
    task = source.task
    ref_scores = source.scores(x) if task == "classification" else None
    probabilities = ref_scores is not None
    scores = runtime.scores(x) if probabilities else None
    if artifact.float_bytes != artifact.model_bytes:
        try:
            fp32 = open_runtime(artifact.runtime, artifact.float_bytes, task, classes, 1)
        except BundleRejected as exc:
            raise BadDataError(f"the unquantized conversion does not load: {exc.detail}") from exc
        fp32_pred, fp32_scores = fp32.predict(x), fp32.scores(x) if probabilities else None
    else:
        fp32_pred, fp32_scores = pred, scores
    spread = 1.0 if task == "classification" else value_spread(ref)  # labels: unused

    def at_float32_edges(rows: np.ndarray) -> np.ndarray:
        """How far `rows` of the conversion are from the source's answers on them moved one
        float32 step down or up (the nearer): the source may compare in float64 what the
        conversion compares in float32 (split and bin thresholds), so a feature lying on a
        threshold may go the other way there and only there."""
        nearest = np.full(len(rows), np.inf)
        for direction in (-np.inf, np.inf):
            moved_x = np.nextafter(x[rows], np.float32(direction)).astype(np.float32)
            again = output_moves(
                task,
                source.predict(moved_x),
                fp32_pred[rows],
                source.scores(moved_x) if probabilities else None,
                None if fp32_scores is None else fp32_scores[rows],
                spread,
            )
            nearest = np.fmin(nearest, again)
        return nearest

    conversion = output_moves(task, ref, fp32_pred, ref_scores, fp32_scores, spread)
    quantization = output_moves(task, fp32_pred, pred, fp32_scores, scores, spread)
    return {
        "conversion": compare_outputs(
            task,
            conversion,
            CONVERSION_TOLERANCE,
            MAX_BEYOND["conversion"],
            again=at_float32_edges,
            row_ids=row_ids,
            spread=None if task == "classification" else spread,
        ),
        "quantization": compare_outputs(
            task,
            quantization,
            QUANTIZE_TOLERANCE[artifact.quantize],
            MAX_BEYOND["quantization"],
            row_ids=row_ids,
            spread=None if task == "classification" else spread,
        ),
    }


def compare_outputs(
    task: str,
    moved: np.ndarray,
    tolerance: float,
    allowed_share: float,
    again: Callable[[np.ndarray], np.ndarray] | None = None,
    row_ids: np.ndarray | None = None,
    spread: float | None = None,
) -> dict[str, Any]:
    """A stage of the report from its rows' moves (`output_moves`): how many are beyond
    `tolerance`, the largest, and the first few beyond, named by `row_ids` (their places in the
    sample; else their positions). `again` measures rows beyond once more (the source's float32
    edges); those within tolerance then count as "edge_rows", not beyond. `spread`: what a
    value's move was divided by, kept so the report can say it in the output's own units."""
    moved = np.asarray(moved, np.float64).copy()
    beyond = np.flatnonzero(~(moved <= tolerance))
    edge_rows = 0
    if again is not None and len(beyond):
        moved[beyond] = np.fmin(moved[beyond], again(beyond))
        still = beyond[~(moved[beyond] <= tolerance)]
        edge_rows, beyond = len(beyond) - len(still), still
    measured = moved[np.isfinite(moved)]
    ids = np.sort(beyond if row_ids is None else np.asarray(row_ids)[beyond])
    stage = {
        "rows": len(moved),
        "beyond": len(beyond),
        "largest": float(np.max(measured)) if len(measured) else None,
        "tolerance": tolerance,
        "allowed_share": allowed_share,
        "edge_rows": edge_rows,
        "first_rows_beyond": [int(i) for i in ids[:MAX_ROWS_NAMED]],
    }
    if spread is not None:
        stage["spread"] = spread
    # the rows no distance measures: a changed label, or a value NaN on one side only
    stage["labels_changed" if task == "classification" else "nan_one_side"] = int(
        np.sum(np.isinf(moved))
    )
    return stage


def value_spread(ref: np.ndarray) -> float:
    """What a value's move is measured against: the standard deviation of the source's finite
    outputs, or their scale (at least 1) where they do not vary."""
    want = np.asarray(ref, np.float64).ravel()
    want = want[np.isfinite(want)]
    return float(np.std(want)) or max(1.0, float(np.max(np.abs(want), initial=0.0)))


def output_moves(
    task: str,
    ref: np.ndarray,
    got: np.ndarray,
    ref_scores: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    spread: float | None = None,
) -> np.ndarray:
    """Per row, how far `got` is from the reference `ref`: for values, the distance over
    `spread` (default `value_spread(ref)`); for a classifier, the largest change of a class
    probability (where both give them; else 0), and infinity where the label changed. NaN on
    both sides is no move; NaN on one side is infinitely far."""
    if task == "classification":
        moved = np.zeros(len(ref))
        if ref_scores is not None and scores is not None and scores.shape == ref_scores.shape:
            moved = np.max(_distance(ref_scores, scores), axis=1)
        same = np.asarray(got).astype(np.asarray(ref).dtype) == np.asarray(ref)
        return np.where(same, moved, np.inf)
    want = np.asarray(ref, np.float64).ravel()
    have = np.asarray(got, np.float64).ravel()
    return _distance(want, have) / (value_spread(want) if spread is None else spread)


def _distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| elementwise: 0 where both are NaN, infinity where one is."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.abs(a - b)
    return np.where(np.isnan(a) & np.isnan(b), 0.0, np.nan_to_num(diff, nan=np.inf))


def outputs_problem(report: dict[str, Any], stage: str) -> str | None:
    """What a stage of the row-by-row comparison found wrong, in one line; None if it holds."""
    s = report.get(stage)
    if s is None or s["beyond"] <= s["allowed_share"] * s["rows"]:
        return None
    what, against, why = {
        "conversion": (
            "the unquantized conversion",
            "the source model's",
            "the converted model does not compute what the source does",
        ),
        "quantization": (
            f"the {report.get('quantize', 'none')}-quantized model",
            "the unquantized conversion's",
            "try --quantize none, or a calibration sample closer to the device's data",
        ),
        "target": (
            f"the model on {report.get('validated_on') or 'the target runtime'}",
            "the same model's on the hub's runtime",
            "the device's runtime computes something else than the hub validated",
        ),
    }[stage]
    unit = "in probability" if report["task"] == "classification" else "of spread"
    mode = report.get("quantize", "none")
    allowed = "(float32 rounding)" if stage == "conversion" else f"for quantize={mode}"
    largest = "-" if s["largest"] is None else f"{s['largest']:.4g}"
    if s["largest"] is not None and s.get("spread"):  # and in the output's own units
        unit += f" {s['spread']:.4g}, i.e. {s['largest'] * s['spread']:.4g}"
    changed, nan = s.get("labels_changed", 0), s.get("nan_one_side", 0)
    labels = f", {changed} label(s) changed" if changed else ""
    labels += f", {nan} NaN where the other side has a value" if nan else ""
    rows = ", ".join(map(str, s.get("first_rows_beyond", [])))
    more = ", ..." if s["beyond"] > len(s.get("first_rows_beyond", [])) else ""
    return (
        f"{what}'s outputs differ from {against} on {s['beyond']} of {s['rows']} rows "
        f"(largest {largest} {unit}{labels}, tolerance {s['tolerance']:g} {allowed}, "
        f"expected at most {s['allowed_share']:.0%} of rows beyond it; sample rows "
        f"{rows}{more}, counted from 0): {why}"
    )


def _check_outputs(report: dict[str, Any], stage: str) -> None:
    found = outputs_problem(report, stage)
    if found:
        raise ParityError(f"parity check failed: {found}")


def check_parity(
    report: dict[str, Any], max_accuracy_drop: float = 0.01, max_rmse_rel: float = 0.01
) -> None:
    """ParityError if outputs moved row by row beyond what the conversion and the chosen
    quantization allow (`_outputs`), if accuracy fell by more than `max_accuracy_drop`
    (absolute, 0.01 = 1 point), an anomaly model flags more than that share of rows
    differently from its source, or RMSE rose by more than `max_rmse_rel` (relative to the
    source estimator's RMSE). The task's metric is checked before the quantized model's
    rows, so a quantization that ruins accuracy says so in those terms."""
    _check_outputs(report, "conversion")
    _check_metric(report, max_accuracy_drop, max_rmse_rel)
    _check_outputs(report, "quantization")


def _check_metric(report: dict[str, Any], max_accuracy_drop: float, max_rmse_rel: float) -> None:
    if report["task"] == "anomaly":
        changed = 1 - report["flag_agreement"]
        if changed > max_accuracy_drop:
            raise ParityError(
                f"parity check failed: {changed:.4f} of the rows flagged differently after "
                f"conversion (anomaly flag agreement {report['flag_agreement']:.4f}, expected "
                f"at least {1 - max_accuracy_drop:.4f})"
            )
        return
    if report["task"] == "classification":
        before, after = report["accuracy_before"], report["accuracy_after"]
        if before - after > max_accuracy_drop:
            raise ParityError(
                f"parity check failed: accuracy {before:.4f} before conversion, {after:.4f} after "
                f"(drop {before - after:.4f}, expected at most {max_accuracy_drop:.4f})"
            )
        return
    before, after = report["rmse_before"], report["rmse_after"]
    rise = (after - before) / before if before > 0 else after - before
    if rise > max_rmse_rel:
        raise ParityError(
            f"parity check failed: RMSE {before:.6g} before conversion, {after:.6g} after "
            f"(rise {rise:.2%}, expected at most {max_rmse_rel:.2%})"
        )


def latency_p50_ms(runtime: Runtime, x: np.ndarray, runs: int = LATENCY_RUNS) -> float:
    """Median wall time of one batch-1 prediction, cycling through the rows of `x`."""
    rows = [np.ascontiguousarray(x[i : i + 1], np.float32) for i in range(min(len(x), runs))]
    for i in range(LATENCY_WARMUP):
        runtime.predict(rows[i % len(rows)])
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        runtime.predict(rows[i % len(rows)])
        times[i] = time.perf_counter() - start
    return float(np.median(times) * 1000.0)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over every label seen in either array (0 when undefined)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    scores = []
    for label in np.union1d(y_true, y_pred):
        tp = np.sum((y_true == label) & (y_pred == label))
        fp = np.sum((y_true != label) & (y_pred == label))
        fn = np.sum((y_true == label) & (y_pred != label))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores))


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(y_true, float) - np.asarray(y_pred, float)) ** 2)))


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y_true, float) - np.asarray(y_pred, float))))


def _classification(
    y: np.ndarray,
    ref: np.ndarray,
    pred: np.ndarray,
    ref_proba: np.ndarray | None,
    proba: np.ndarray | None,
) -> dict[str, Any]:
    diff = None
    if ref_proba is not None and proba is not None and proba.shape == ref_proba.shape:
        diff = float(np.max(np.abs(proba.astype(np.float64) - ref_proba)))
    return {
        "max_abs_diff": diff,
        "label_agreement": accuracy(ref, pred),
        "accuracy_before": accuracy(y, ref),
        "accuracy_after": accuracy(y, pred),
        "macro_f1_before": macro_f1(y, ref),
        "macro_f1_after": macro_f1(y, pred),
    }


def _anomaly(
    y: np.ndarray | None, ref: np.ndarray, pred: np.ndarray, anomaly: Anomaly
) -> dict[str, Any]:
    """Scores, flags, and with true flags `y` the precision, recall and F1 of the flags."""
    ref_flags, flags = anomaly.flags(ref), anomaly.flags(pred)
    diff = np.abs(np.asarray(pred, np.float64).ravel() - np.asarray(ref, np.float64).ravel())
    report: dict[str, Any] = {
        "max_abs_diff": float(np.max(diff)),
        "threshold": anomaly.threshold,
        "flag_agreement": accuracy(ref_flags, flags),
        "anomaly_rate_before": float(np.mean(ref_flags)),
        "anomaly_rate_after": float(np.mean(flags)),
    }
    if y is not None:
        truth = np.asarray(y, dtype=bool)
        for when, got in (("before", ref_flags), ("after", flags)):
            report.update({f"{k}_{when}": v for k, v in flag_metrics(truth, got).items()})
    return report


def flag_metrics(truth: np.ndarray, flags: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of anomaly flags against true ones (0 where undefined)."""
    tp = int(np.sum(truth & flags))
    flagged, anomalies = int(np.sum(flags)), int(np.sum(truth))
    return {
        "precision": tp / flagged if flagged else 0.0,
        "recall": tp / anomalies if anomalies else 0.0,
        "f1": 2 * tp / (flagged + anomalies) if flagged + anomalies else 0.0,
    }


def _regression(y: np.ndarray, ref: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    ref = ref.astype(np.float64).reshape(len(pred))
    pred = pred.astype(np.float64).reshape(len(ref))
    return {
        "max_abs_diff": float(np.max(np.abs(pred - ref))),
        "rmse_before": rmse(y, ref),
        "rmse_after": rmse(y, pred),
        "mae_before": mae(y, ref),
        "mae_after": mae(y, pred),
    }
