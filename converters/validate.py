"""Parity between the source estimator and its ONNX result, on validation data.

`validation_report` runs both on the same float32 rows and returns a JSON-ready dict: how far the
outputs moved, how often the labels agree, the task metric before and after, the model sizes and
the batch-1 latency. `check_parity` turns a report into a pass or a ParityError.
Metrics are plain numpy; only the estimator's own predict/predict_proba come from scikit-learn.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import onnxruntime as ort

from converters.sklearn_onnx import INPUT_NAME, expected_outputs
from edge_agent.errors import BadDataError

LATENCY_WARMUP = 5
LATENCY_RUNS = 100


class ParityError(BadDataError):
    """The converted model is measurably worse than the source estimator."""


def open_session(model_bytes: bytes) -> ort.InferenceSession:
    """A single-threaded CPU session, the closest a hub gets to a small device."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BadDataError(f"onnxruntime cannot load the model: {exc}") from exc


def onnx_predict(
    session: ort.InferenceSession, x: np.ndarray, task: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """(labels or values, probabilities or None) of the ONNX model on float32 rows `x`."""
    outs = session.run(expected_outputs(task), {INPUT_NAME: np.ascontiguousarray(x, np.float32)})
    if task == "classification":
        return np.asarray(outs[0]).ravel(), np.asarray(outs[1])
    return np.asarray(outs[0], dtype=np.float64).reshape(len(x)), None


def validation_report(
    estimator: Any,
    fp32_bytes: bytes,
    model_bytes: bytes,
    x: np.ndarray,
    y: np.ndarray,
    task: str,
) -> dict[str, Any]:
    """Compare `estimator` with the deployable `model_bytes` (fp32 size is for the ratio)."""
    x32 = np.asarray(x, dtype=np.float32)
    session = open_session(model_bytes)
    pred, proba = onnx_predict(session, x32, task)
    ref = np.asarray(estimator.predict(x32))
    report: dict[str, Any] = {"task": task, "rows": len(x32)}
    if task == "classification":
        report.update(_classification(estimator, x32, y, ref, pred, proba))
    else:
        report.update(_regression(y, ref, pred))
    report.update(
        size_bytes_before=len(fp32_bytes),
        size_bytes_after=len(model_bytes),
        size_ratio=len(model_bytes) / len(fp32_bytes),
        latency_p50_ms=latency_p50_ms(session, x32),
    )
    return report


def check_parity(
    report: dict[str, Any], max_accuracy_drop: float = 0.01, max_rmse_rel: float = 0.01
) -> None:
    """ParityError if accuracy fell by more than `max_accuracy_drop` (absolute, 0.01 = 1 point)
    or RMSE rose by more than `max_rmse_rel` (relative to the source estimator's RMSE)."""
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


def latency_p50_ms(session: ort.InferenceSession, x: np.ndarray, runs: int = LATENCY_RUNS) -> float:
    """Median wall time of one batch-1 `session.run`, cycling through the rows of `x`."""
    rows = [np.ascontiguousarray(x[i : i + 1], np.float32) for i in range(min(len(x), runs))]
    for i in range(LATENCY_WARMUP):
        session.run(None, {INPUT_NAME: rows[i % len(rows)]})
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        session.run(None, {INPUT_NAME: rows[i % len(rows)]})
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
    estimator: Any,
    x32: np.ndarray,
    y: np.ndarray,
    ref: np.ndarray,
    pred: np.ndarray,
    proba: np.ndarray | None,
) -> dict[str, Any]:
    ref_proba = estimator.predict_proba(x32) if hasattr(estimator, "predict_proba") else None
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


def _regression(y: np.ndarray, ref: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    ref = ref.astype(np.float64).reshape(len(pred))
    return {
        "max_abs_diff": float(np.max(np.abs(pred - ref))),
        "rmse_before": rmse(y, ref),
        "rmse_after": rmse(y, pred),
        "mae_before": mae(y, ref),
        "mae_after": mae(y, pred),
    }
