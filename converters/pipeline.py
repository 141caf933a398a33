"""Trained estimator + data -> signed-ready bundle on disk, in one call.

    check data -> split -> convert (skl2onnx) -> quantize -> validate parity -> card -> zip

The rows of (x, y) are shuffled with a fixed seed and cut in two halves: the first half is the
drift reference profile written into the card, the second half validates the conversion and
provides the health-gate sample. With fewer than `data.MIN_SPLIT_ROWS` rows, all rows serve as
both. Nothing here touches the network; the only I/O is the final atomic write of the bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters.bundle import write_bundle
from converters.card import build_card
from converters.data import (
    check_feature_names,
    check_features,
    check_targets,
    finite_rows,
    validation_half,
)
from converters.quantize import quantize_dynamic_int8
from converters.sklearn_onnx import check_fitted, estimator_name, task_of, to_onnx_model
from converters.validate import (
    ParityError,
    check_parity,
    onnx_predict,
    open_session,
    validation_report,
)
from edge_agent.errors import ConfigError
from edge_agent.protocol.messages import ModelRef

QUANTIZE_MODES = ("dynamic", "none")
SAMPLE_ROWS = 16
# The hub is faster than a Pi: the health gate allows this many times the hub's p50 latency,
# and never less than MIN_LATENCY_BUDGET_MS.
LATENCY_HEADROOM = 20.0
MIN_LATENCY_BUDGET_MS = 50.0


@dataclass(frozen=True)
class BuildReport:
    path: Path
    card: dict[str, Any]
    report: dict[str, Any]


def build_bundle(
    estimator: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    name: str,
    version: int,
    out: Path,
    quantize: str = "dynamic",
    feature_names: list[str] | None = None,
    max_accuracy_drop: float = 0.01,
    max_rmse_rel: float = 0.01,
    max_latency_ms: float | None = None,
    force: bool = False,
) -> BuildReport:
    """Convert, quantize, validate and write the bundle for `name@version` to `out`.

    Raises BadDataError (ConversionError, ParityError, ...) with what was expected and found;
    `force=True` writes the bundle even when the parity check fails."""
    ModelRef(name, version)  # validates both before any heavy work
    if quantize not in QUANTIZE_MODES:
        raise ConfigError(f"quantize: expected one of {QUANTIZE_MODES}, got {quantize!r}")
    check_fitted(estimator)
    task = task_of(estimator)
    x32 = check_features(x, getattr(estimator, "n_features_in_", None))
    y_arr = check_targets(y, len(x32))
    names = check_feature_names(
        feature_names, x32.shape[1], getattr(estimator, "feature_names_in_", None)
    )
    x_val, y_val = validation_half(x32, y_arr)
    x_ref = x32

    fp32 = to_onnx_model(estimator, x32).SerializeToString()
    model = quantize_dynamic_int8(fp32) if quantize == "dynamic" else fp32
    report = validation_report(estimator, fp32, model, x_val, y_val, task)
    report["quantize"] = quantize
    report["parity"] = _parity(report, max_accuracy_drop, max_rmse_rel, force)

    session = open_session(model)
    sample_x = finite_rows(x_val, SAMPLE_ROWS)
    if len(sample_x) == 0:
        sample_x = finite_rows(x32, SAMPLE_ROWS)
    card = build_card(
        name,
        version,
        task,
        estimator_name(estimator),
        x_ref,
        onnx_predict(session, x_ref, task)[0],
        _classes(estimator, task),
        names,
        report,
        sample_x,
        onnx_predict(session, sample_x, task)[0],
        _latency_budget(report, max_latency_ms),
    )
    write_bundle(out, card, model)
    return BuildReport(path=Path(out), card=card, report=report)


def _parity(
    report: dict[str, Any], max_accuracy_drop: float, max_rmse_rel: float, force: bool
) -> dict[str, Any]:
    """The parity verdict for the report; raises unless `force`."""
    try:
        check_parity(report, max_accuracy_drop, max_rmse_rel)
    except ParityError as exc:
        if not force:
            raise
        return {"ok": False, "forced": True, "detail": str(exc)}
    return {"ok": True}


def _classes(estimator: Any, task: str) -> list[Any]:
    if task != "classification":
        return []
    return list(getattr(estimator, "classes_", []))


def _latency_budget(report: dict[str, Any], explicit: float | None) -> float:
    if explicit is not None:
        return float(explicit)
    return max(MIN_LATENCY_BUDGET_MS, LATENCY_HEADROOM * float(report["latency_p50_ms"]))
