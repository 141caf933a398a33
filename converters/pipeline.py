"""A trained model + data -> signed-ready bundle on disk, in one call.

    check data -> split -> convert -> quantize -> validate parity -> card -> zip

The model is a scikit-learn estimator or any `SourceModel` (Keras, ONNX or TFLite file). The
drift reference profile in the card uses every row; parity is validated on a seeded half of them
(`data.validation_half`), which also provides the health-gate sample.

An anomaly model (converters.anomaly) gets its threshold here, from the deployed model's scores
on every row (`contamination`, `threshold`, or the model's own); its `y`, when given, are true
flags (1/0, true/false, "anomaly"/"normal"), and its parity is the agreement of its flags.

A classifier with probabilities, given true labels `y`, also gets its confidence calibrated
(`converters.calibration`, for the device's accuracy estimate without labels). The deployed
artifact's confidence is fit on every labeled row (a half would do: on breast_cancer every row
estimates a held-out stream's accuracy to 0.014 on average, a half to 0.019); its expected
accuracy over them is the card's reference value. The validation report's "confidence" checks
it on rows it was not fit on: each half of the seeded split calibrated on the other, the
accuracy that expects next to the accuracy there. The rows handed over must be rows the model
was not trained on, as for the parity accuracy: on training rows a model looks surer and righter
than it will be. Without `y` there is nothing to calibrate against, and the card has no
calibration (the device then reports no accuracy estimate). Nothing here touches the
network; the only I/O is the final atomic write of the bundle. `progress` hears the name of each
step as it starts, for a caller that shows progress.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from converters.anomaly import anomaly_labels, anomaly_spec, choose_threshold
from converters.bundle import write_bundle
from converters.calibration import fit_calibration
from converters.card import MAX_SAMPLE_MEMBER_BYTES, MAX_SAMPLE_VALUES, build_card, sample_npy
from converters.categorical import categorical_source
from converters.data import (
    MIN_SPLIT_ROWS,
    check_feature_names,
    check_features,
    check_items,
    check_missing,
    check_targets,
    finite_rows,
    halves,
    validation_half,
)
from converters.flat_items import items_source
from converters.sklearn_onnx import SklearnSource
from converters.source import QUANTIZE_MODES, SourceModel, own_threshold
from converters.validate import (
    ParityError,
    artifact_runtime,
    check_parity,
    validation_report,
)
from edge_agent.errors import ConfigError
from edge_agent.framing.watch import watched, watched_names
from edge_agent.inference.runtime import Runtime
from edge_agent.protocol.card import SAMPLE_MEMBER, Calibration
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.input_spec import InputSpec, row_spec
from edge_agent.protocol.messages import ModelRef

SAMPLE_ROWS = 16  # at most; fewer where items are very large (converters.card)
# The hub is faster than a Pi: the health gate allows this many times the hub's p50 latency,
# and never less than MIN_LATENCY_BUDGET_MS.
LATENCY_HEADROOM = 20.0
MIN_LATENCY_BUDGET_MS = 50.0
STEPS = ("check data", "convert", "validate", "write bundle")


@frozen
class BuildReport:
    path: Path
    card: dict[str, Any]
    report: dict[str, Any]


def as_source(model: Any) -> SourceModel:
    """A SourceModel as is; anything else is taken for a scikit-learn estimator."""
    return (
        model if hasattr(model, "convert") and hasattr(model, "framework") else SklearnSource(model)
    )


def build_bundle(
    model: Any,
    x: np.ndarray,
    y: np.ndarray | None,
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
    progress: Callable[[str], None] = lambda step: None,
    lineage: dict[str, Any] | None = None,
    contamination: float | None = None,
    threshold: float | None = None,
    input_spec: InputSpec | None = None,
) -> BuildReport:
    """Convert, quantize, validate and write the bundle for `name@version` to `out`.

    `y` are the true labels or targets; None validates against the source model's own answers.
    Raises BadDataError (ConversionError, ParityError, ...) with what was expected and found;
    `force=True` writes the bundle even when the parity check fails; `lineage` (a retrained
    model's parent, training data and trigger) goes into the card as it is. `input_spec`
    says what the device feeds the model: None (or a row spec) for rows, `x` of shape (rows,
    features), a categorical feature's values the index of its text among the spec's
    categories (converters.categorical); a window or image spec for items, `x` of shape
    (n, *input_spec.shape). An anomaly model's threshold is `threshold`, else the
    1 - `contamination` quantile of its scores on `x`, else its own
    (converters.anomaly.choose_threshold)."""
    ModelRef(name, version)  # validates both before any heavy work
    if quantize not in QUANTIZE_MODES:
        raise ConfigError(f"quantize: expected one of {QUANTIZE_MODES}, got {quantize!r}")
    progress(STEPS[0])
    source = as_source(model)
    scored = source.task == "anomaly"
    if not scored and (contamination is not None or threshold is not None):
        raise ConfigError(
            f"contamination and threshold are for anomaly models; this is a {source.task} model"
        )
    if input_spec is None or input_spec.kind == "row":
        x32 = check_features(x, source.n_features)
        declared = list(input_spec.features) if input_spec else None
        if feature_names and declared and list(feature_names) != declared:
            raise ConfigError(
                f"feature_names {list(feature_names)} differ from the input's features {declared}"
            )
        given = feature_names or declared
        names = check_feature_names(given, x32.shape[1], source.feature_names)
        spec = input_spec or row_spec(names)
        if spec.categories:  # the card lists what the encoders know, too
            rows = categorical_source(source, spec)
            source, spec = rows, rows.spec
    else:
        spec = input_spec
        source = items_source(source, spec)
        x32 = check_items(x, spec.shape, spec.kind)
        names = watched_names(spec)
    check_missing(source.predict, x32, source.description)
    seen = watched(spec, x32)
    if scored and y is not None:
        y = anomaly_labels(check_targets(y, len(x32)))
    y_arr = check_targets(source.predict(x32) if y is None else y, len(x32))
    x_val, y_val = validation_half(x32, y_arr)
    classes = _classes(source, x32, y_arr)

    progress(STEPS[1])
    artifact = source.convert(x32, quantize)

    progress(STEPS[2])
    runtime = artifact_runtime(artifact, source, classes)
    predicted = runtime.predict(x32)
    anomaly = None
    if scored:
        cut, chosen = choose_threshold(predicted, own_threshold(source), contamination, threshold)
        anomaly = anomaly_spec(predicted, cut)
    y_known = None if scored and y is None else y_val
    val_rows = halves(len(x32))[1]  # the validation rows' places in the sample
    report = validation_report(
        source, runtime, artifact, x_val, y_known, anomaly, classes, row_ids=val_rows
    )
    if anomaly is not None:
        report["threshold_from"] = chosen
    report["parity"] = _parity(report, max_accuracy_drop, max_rmse_rel, force)
    classifier = source.task == "classification"
    calibrated = _calibrate(runtime, x32, y_arr) if y is not None and classifier else None
    if calibrated is not None:
        report["confidence"] = calibrated[1]

    progress(STEPS[3])
    # in the card where SAMPLE_ROWS items fit it, else beside it as a bundle member
    inline = SAMPLE_ROWS * spec.size <= MAX_SAMPLE_VALUES
    fit = MAX_SAMPLE_MEMBER_BYTES // (4 * spec.size)
    sample_rows = SAMPLE_ROWS if inline else max(1, min(SAMPLE_ROWS, fit))
    sample_x = finite_rows(x_val, sample_rows)
    if len(sample_x) == 0:
        sample_x = finite_rows(x32, sample_rows)
    npy = None if inline else sample_npy(sample_x)
    card = build_card(
        name,
        version,
        source,
        artifact,
        seen,
        predicted,
        classes,
        names,
        report,
        sample_x,
        # one row at a time, as the device's health gate runs them: dynamic quantization scales
        # activations per batch, so a batch of 16 may round a borderline row differently
        np.concatenate([runtime.predict(row[None, ...]) for row in sample_x]),
        _latency_budget(report, max_latency_ms),
        has_scores=runtime.scores(sample_x[:1]) is not None,
        confidence=calibrated[0] if calibrated else None,
        lineage=lineage,
        anomaly=anomaly,
        input_spec=spec,
        sample_member=npy,
    )
    write_bundle(out, card, artifact.model_bytes, {} if npy is None else {SAMPLE_MEMBER: npy})
    return BuildReport(path=Path(out), card=card, report=report)


def _calibrate(
    runtime: Runtime, x: np.ndarray, y: np.ndarray
) -> tuple[Calibration, dict[str, Any]] | None:
    """The deployed model's confidence calibration, fit on every labeled row, and its check:
    each half of the seeded split calibrated on the other half, the accuracy that expects on
    it next to the accuracy there (None for a classifier without probabilities)."""
    labels, scores = runtime.predict_with_scores(x)
    if scores is None:
        return None
    right = labels == y
    confidence = fit_calibration(scores, right, scores)
    expected, held_rows = 0.0, 0
    for fit, held in itertools.permutations(halves(len(x))):
        each = fit_calibration(scores[fit], right[fit], scores[held]).expected_accuracy
        expected += each * len(held)
        held_rows += len(held)
    check = {
        "rows": len(x),
        "held_out": len(x) >= MIN_SPLIT_ROWS,  # else calibrated and checked on the same rows
        "expected_accuracy": expected / held_rows,
        "accuracy": float(np.mean(right)),
    }
    return confidence, check


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


def _classes(source: SourceModel, x: np.ndarray, y: np.ndarray) -> list[Any]:
    """The source's class labels; for a model that does not say, those seen in y or predicted."""
    if source.task != "classification":
        return []
    if source.classes:
        return list(source.classes)
    return [v.item() for v in np.union1d(y, source.predict(x))]


def _latency_budget(report: dict[str, Any], explicit: float | None) -> float:
    if explicit is not None:
        return float(explicit)
    return max(MIN_LATENCY_BUDGET_MS, LATENCY_HEADROOM * float(report["latency_p50_ms"]))
