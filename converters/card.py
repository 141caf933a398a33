"""The model card the agent reads (format owned by `edge_agent.protocol.card`).

`build_card` assembles it from values only: input schema, drift reference (per-feature quantile
profiles, the distribution of the model's own predictions on the reference rows, and a
classifier's confidence calibration when there is one), a sample
with expected outputs for the health gate, and the validation report. The result is plain JSON
(numpy types converted) and is checked with `parse_card` before it is returned, so a card the
agent would reject is never written.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from converters.onnx_contract import (
    INPUT_NAME,
    LABEL_OUTPUT,
    PROBA_OUTPUT,
    SCORE_OUTPUT,
    VALUE_OUTPUT,
)
from converters.source import Artifact, SourceModel
from edge_agent.errors import BadDataError
from edge_agent.protocol.card import (
    CARD_VERSION,
    INPUT_CARD_VERSION,
    SAMPLE_MEMBER,
    Anomaly,
    Calibration,
    bucket_counts,
    feature_profiles,
    parse_card,
    quantile_edges,
)
from edge_agent.protocol.input_spec import InputSpec, row_spec

DEFAULT_MIN_AGREEMENT = 0.9
MAX_CARD_BYTES = 256 * 1024  # what a card may weigh at most, whatever the input size
MAX_SAMPLE_VALUES = 4096  # values in the card's health-gate sample, all items together (~50 KB)
MAX_SAMPLE_MEMBER_BYTES = 8 * 1024 * 1024  # a larger sample travels as a bundle member, this big
REFERENCE_BINS = 10


def build_card(
    name: str,
    version: int,
    source: SourceModel,
    artifact: Artifact,
    x_ref: np.ndarray,
    y_pred_ref: np.ndarray,
    classes: Sequence[Any],
    feature_names: list[str],
    validation_report: dict[str, Any],
    sample_x: np.ndarray,
    sample_out: np.ndarray,
    max_latency_ms: float,
    *,
    has_scores: bool = True,
    confidence: Calibration | None = None,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    bins: int = REFERENCE_BINS,
    lineage: dict[str, Any] | None = None,
    anomaly: Anomaly | None = None,
    input_spec: InputSpec | None = None,
    sample_member: bytes | None = None,
) -> dict[str, Any]:
    """The card.json dict. `x_ref` are the values drift watches on the reference items and
    `feature_names` their names (for a row model, its inputs; else edge_agent.framing.watch);
    `y_pred_ref` the deployed model's predictions on those items; `sample_x` model inputs
    (n, *input shape) and `sample_out` its labels (classification), values (regression) or
    scores (anomaly) on them; `confidence` the classifier's confidence calibration, when it
    has one; `anomaly` how an anomaly model's score is read; `input_spec` what the device
    feeds the model (None: a row of `feature_names`); `sample_member` the `sample_npy` of
    `sample_x` when the sample is too large for the card and travels beside it."""
    task = source.task
    spec = input_spec or row_spec(feature_names)
    profiles = feature_profiles(x_ref, feature_names, bins, spec.categories)
    class_list = [to_jsonable(c) for c in classes] if task == "classification" else []
    inputs: dict[str, Any] = {
        "name": INPUT_NAME,  # a TFLite runtime binds its single input by position
        "dtype": "float32",
        **spec.to_json(),
    }
    if spec.kind == "row":
        inputs.pop("kind")  # a row card stays readable by agents that know no input kinds
        inputs["min"] = [p.min for p in profiles]
        inputs["max"] = [p.max for p in profiles]
    sample = np.asarray(sample_x, np.float32).reshape(len(sample_x), -1)
    card = {
        "card_version": CARD_VERSION if spec.kind == "row" else INPUT_CARD_VERSION,
        "name": name,
        "version": int(version),
        "task": task,
        "framework": source.framework,
        "estimator": source.description,
        "runtime": artifact.runtime,
        "model_file": artifact.model_file,
        "quantize": artifact.quantize,
        "input": inputs,
        "output": output_schema(task, class_list, artifact.runtime, has_scores),
        "classes": class_list,
        "reference": {
            "rows": len(x_ref),
            "features": [p.to_json() for p in profiles],
            "predictions": prediction_profile(task, y_pred_ref, class_list, bins),
            **({"confidence": confidence.to_json()} if confidence is not None else {}),
        },
        "sample": {
            **(
                {"inputs": [[float(str(v)) for v in row] for row in sample]}
                if sample_member is None  # each value as the shortest text read back the same
                else {
                    "file": SAMPLE_MEMBER,
                    "sha256": hashlib.sha256(sample_member).hexdigest(),
                    "items": len(sample),
                }
            ),
            "outputs": [to_jsonable(v) for v in np.asarray(sample_out).ravel()],
        },
        "health": {
            "max_latency_ms": float(max_latency_ms),
            "min_agreement": float(min_agreement),
            "max_error_rate": 0.0,
        },
        "validation": validation_report,
        **({"lineage": lineage} if lineage is not None else {}),
        **({"anomaly": anomaly.to_json()} if anomaly is not None else {}),
    }
    card = to_jsonable(card)
    check_card_size(card)
    parse_card(card)
    return card


def sample_npy(sample_x: np.ndarray) -> bytes:
    """The health-gate sample as the bundle member a card names: float32 .npy, no pickle."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(sample_x, np.float32), allow_pickle=False)
    return buf.getvalue()


def _sample_size(sample: dict[str, Any]) -> str:
    if "inputs" not in sample:
        return f"{sample['items']} sample items in {sample['file']}"
    return f"{len(sample['inputs'])} sample items of {len(sample['inputs'][0])} values"


def check_card_size(card: dict[str, Any]) -> None:
    """A card stays small whatever the input size: its JSON within MAX_CARD_BYTES."""
    size = len(json.dumps(card, separators=(",", ":")))
    if size > MAX_CARD_BYTES:
        raise BadDataError(
            f"model card: expected at most {MAX_CARD_BYTES} bytes, got {size} "
            f"({len(card['reference']['features'])} watched features, "
            f"{_sample_size(card['sample'])})"
        )


def output_schema(
    task: str, classes: list[Any], runtime: str, has_scores: bool = True
) -> dict[str, Any]:
    """Names, dtypes and shapes of the model's output tensors. A TFLite model gives the
    probabilities (or the value) only; the runtime derives the label. A classifier without
    probabilities (LinearSVC...) gives the label only. An anomaly model gives its score."""
    if task == "anomaly":
        named = {"name": SCORE_OUTPUT} if runtime == "onnxruntime" else {}
        return {"score": {**named, "dtype": "float32", "shape": [None, 1]}}
    if runtime != "onnxruntime":
        if task == "classification":
            return {"probabilities": {"dtype": "float32", "shape": [None, len(classes)]}}
        return {"value": {"dtype": "float32", "shape": [None, 1]}}
    if task == "classification":
        label_dtype = "string" if any(isinstance(c, str) for c in classes) else "int64"
        schema: dict[str, Any] = {
            "label": {"name": LABEL_OUTPUT, "dtype": label_dtype, "shape": [None]}
        }
        if has_scores:
            schema["probabilities"] = {
                "name": PROBA_OUTPUT,
                "dtype": "float32",
                "shape": [None, len(classes)],
            }
        return schema
    return {"value": {"name": VALUE_OUTPUT, "dtype": "float32", "shape": [None, 1]}}


def prediction_profile(
    task: str, predictions: np.ndarray, classes: list[Any], bins: int = REFERENCE_BINS
) -> dict[str, Any]:
    """Classification: count per class (in `classes` order). Regression and anomaly scores:
    quantile-bucket counts."""
    preds = np.asarray(predictions).ravel()
    if task == "classification":
        counts = [int(np.sum(preds == c)) for c in classes]
        return {"classes": classes, "counts": counts}
    values = preds.astype(np.float64)
    edges = quantile_edges(values, bins)
    return {"edges": edges, "counts": [int(c) for c in bucket_counts(values, edges)]}


def to_jsonable(obj: Any) -> Any:
    """Numpy scalars/arrays and tuples -> plain JSON types; non-finite floats -> None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def reference_card(
    x: np.ndarray,
    names: Sequence[str],
    *,
    name: str = "reference",
    version: int = 1,
    prediction_counts: Sequence[int] = (1, 1),
    confidence: dict[str, Any] | None = None,
    bins: int = REFERENCE_BINS,
    categories: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """A valid card.json dict that carries a drift reference and no model: what replaying data
    through the drift monitor needs (simulations, benches, tests). A two-class classifier whose
    predictions on the reference were `prediction_counts`, with `confidence` as the card's
    confidence calibration if given, and the features named in `categories` categorical (their
    values in `x` category codes); the model file is not a model."""
    card = {
        "card_version": CARD_VERSION,
        "name": name,
        "version": int(version),
        "task": "classification",
        "runtime": "onnxruntime",
        "model_file": "model.onnx",
        "input": {
            "name": INPUT_NAME,
            **({"features": list(names), "categories": categories} if categories else {}),
        },
        "classes": [0, 1],
        "reference": {
            "rows": len(x),
            "features": [p.to_json() for p in feature_profiles(x, list(names), bins, categories)],
            "predictions": {"counts": [int(c) for c in prediction_counts]},
            **({"confidence": confidence} if confidence is not None else {}),
        },
        "sample": {"inputs": [[float(v) for v in np.asarray(x[0], np.float32)]], "outputs": [0]},
        "health": {"max_latency_ms": 50.0, "min_agreement": 0.9},
    }
    parse_card(card)
    return card
