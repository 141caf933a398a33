"""What goes into a conversion and what comes out, whatever the framework.

A `SourceModel` is the model the engineer handed over (a scikit-learn estimator, a Keras model, an
ONNX or TFLite file), able to predict on float32 rows so the result can be compared with it. An
`Artifact` is the deployable model: its bytes, the runtime the card names, and the unquantized
bytes it came from (for the size ratio).

An anomaly model that has a threshold of its own (an outlier detector's) says so with an
attribute `anomaly_threshold` (`own_threshold` reads it); the others have none.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from edge_agent.protocol.frozen import frozen

TASKS = ("classification", "regression", "anomaly")
QUANTIZE_MODES = ("none", "dynamic", "static", "float16")  # float16: TFLite only
DEFAULT_CONTAMINATION = 0.01  # the share of reference rows an autoencoder's threshold flags
MAX_CONTAMINATION = 0.5  # as scikit-learn's outlier detectors allow: anomalies are the fewer


class SourceModel(Protocol):
    framework: str  # the card's "framework": scikit-learn, keras, onnx, tflite
    description: str  # the card's "estimator": what the model is, for people
    task: str  # one of TASKS
    n_features: int | None  # what the model expects, when it says
    classes: list[Any]  # class labels in probability-column order; [] for a regressor
    feature_names: list[str] | None  # names the model was trained with, when it knows them

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, n_features) float32 -> (n,) labels, values, or an anomaly model's scores
        (higher = more anomalous: converters.anomaly)."""
        ...

    def scores(self, x: np.ndarray) -> np.ndarray | None:
        """(n, n_classes) probabilities for a classifier that gives them; else None."""
        ...

    def convert(self, x: np.ndarray, quantize: str) -> Artifact:
        """The deployable artifact, quantized by `quantize` (calibrated on rows `x`)."""
        ...


def own_threshold(source: SourceModel) -> float | None:
    """The score threshold an anomaly model comes with, if any (converters.anomaly)."""
    value = getattr(source, "anomaly_threshold", None)
    return None if value is None else float(value)


@frozen
class Artifact:
    runtime: str  # the card's "runtime": onnxruntime or litert
    model_file: str  # name inside the bundle: model.onnx or model.tflite
    float_bytes: bytes  # before quantization
    model_bytes: bytes  # what ships
    quantize: str  # the mode applied: none, dynamic, static, float16
    note: str = ""  # e.g. why quantization left the model unchanged
    # a TFLite model validated on the runtime its target profile names: which one ran it
    # ("tflite-runtime 2.14.0"), the op set that runtime loads, and how its outputs compared
    # with the hub's (a stage of the validation report, converters.validate.compare_outputs)
    validated_on: str = ""
    op_set: str = ""
    on_target: dict[str, Any] | None = None


def growth_note(quantize: str, before: int, after: int) -> str:
    """A note when quantization made the model larger, not smaller (small weight matrices: the
    scales, zero points and quantize/dequantize nodes outweigh the bytes it saves); "" else."""
    if quantize == "none" or after <= before:
        return ""
    what = "int8" if quantize in ("dynamic", "static") else quantize
    return (
        f"{what} made the model larger ({after} bytes vs {before} as float32): its weight "
        "matrices are too small for the scales and quantize nodes to pay off; "
        "--quantize none ships the smaller model"
    )
