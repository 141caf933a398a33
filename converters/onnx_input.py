"""An `.onnx` file handed to the converter, brought to the converters' contract.

The contract (see `sklearn_onnx`): one float32 input "X" [batch, features]; a classifier gives
"label" [batch] and, when it has them, "probabilities" [batch, classes] as plain tensors; a
regressor gives "variable"; an anomaly model (`task` "anomaly": a file says nothing of it) its one
float output, a score per row, higher = more anomalous, renamed "score". A foreign file is renamed
to that contract; a ZipMap (skl2onnx's default list-of-dicts probabilities) is removed so the
tensor under it becomes the output and its class labels are kept. What cannot be brought there is
refused with what was expected and found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from converters.anomaly import check_single_score
from converters.onnx_contract import INPUT_NAME, rename, rename_outputs
from converters.quantize import quantize_onnx
from converters.source import TASKS, Artifact
from edge_agent.errors import BadDataError, BundleRejected, ConfigError
from edge_agent.inference.runtime import OnnxRuntime

_LABEL_TYPES = {TensorProto.INT64: "int64", TensorProto.STRING: "string"}
_VALUE_TYPES = {TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64"}
_CLASS_ATTRS = ("classlabels_int64s", "classlabels_strings", "classlabels_ints")


class OnnxSource:
    """A float32 ONNX model from a file, as the source of a conversion."""

    framework = "onnx"

    def __init__(self, model_bytes: bytes, where: str, task: str | None = None) -> None:
        model = _parse(model_bytes, where)
        self.classes: list[Any] = _strip_zipmap(model)
        self.task = _task(model, task, where)
        if self.task == "classification" and not self.classes:
            self.classes = _class_labels(model)
        self.n_features = _check_input(model, where)
        if self.task == "anomaly":
            check_single_score(model, where)
        rename_outputs(model, self.task, where)
        self.feature_names: list[str] | None = None
        producer = model.producer_name or "an unknown producer"
        self.description = f"ONNX model from {producer} ({len(model.graph.node)} nodes)"
        self.float_bytes = model.SerializeToString()
        try:
            self._runtime = OnnxRuntime(self.float_bytes)
        except BundleRejected as exc:
            raise BadDataError(f"{where}: {exc.detail}") from exc

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._runtime.predict(x)

    def scores(self, x: np.ndarray) -> np.ndarray | None:
        return self._runtime.scores(x)

    def convert(self, x: np.ndarray, quantize: str) -> Artifact:
        return quantize_onnx(self.float_bytes, quantize, x)


def load_onnx(path: Path, task: str | None = None) -> OnnxSource:
    if not path.is_file():
        raise ConfigError(f"{path}: no such model file")
    return OnnxSource(path.read_bytes(), str(path), task)


def _parse(model_bytes: bytes, where: str) -> onnx.ModelProto:
    if not model_bytes:
        raise BadDataError(f"{where}: expected an ONNX model, got an empty file")
    try:
        model = onnx.load_from_string(model_bytes)
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf's DecodeError and the checker's ValidationError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadDataError(
            f"{where}: expected an ONNX model, could not read it (truncated or not ONNX?): {first}"
        ) from exc
    if not model.graph.output:
        raise BadDataError(f"{where}: expected an ONNX model with outputs, got a graph with none")
    return model


def _check_input(model: onnx.ModelProto, where: str) -> int | None:
    """One float32 input [batch, features], renamed to "X"; the feature count when fixed."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise BadDataError(
            f"{where}: expected one input tensor [batch, features], got {len(inputs)} "
            f"({[i.name for i in inputs]})"
        )
    tensor = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if tensor.elem_type != TensorProto.FLOAT or len(dims) != 2:
        got = TensorProto.DataType.Name(tensor.elem_type).lower()
        raise BadDataError(
            f"{where}: expected a float32 input of shape [batch, features], got {got} "
            f"with shape {dims} (input {inputs[0].name!r})"
        )
    rename(model.graph, inputs[0].name, INPUT_NAME)
    return dims[1]


def _strip_zipmap(model: onnx.ModelProto) -> list[Any]:
    """Remove a ZipMap feeding a graph output; its class labels (or [] if there is none)."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        if node.op_type == "ZipMap" and node.output[0] in outputs:
            classes = _attr_labels(node)
            probabilities = node.input[0]
            graph.node.remove(node)
            out = next(o for o in graph.output if o.name == node.output[0])
            index = list(graph.output).index(out)
            graph.output.remove(out)
            graph.output.insert(
                index,
                onnx.helper.make_tensor_value_info(
                    probabilities, TensorProto.FLOAT, [None, len(classes) or None]
                ),
            )
            return classes
    return []


def _class_labels(model: onnx.ModelProto) -> list[Any]:
    """Class labels from the classifier node that carries them (LinearClassifier, ...)."""
    for node in model.graph.node:
        labels = _attr_labels(node)
        if labels:
            return labels
    return []


def _attr_labels(node: onnx.NodeProto) -> list[Any]:
    for attr in node.attribute:
        if attr.name in _CLASS_ATTRS:
            if attr.ints:
                return [int(v) for v in attr.ints]
            if attr.strings:
                return [v.decode("utf-8") for v in attr.strings]
    return []


def _task(model: onnx.ModelProto, task: str | None, where: str) -> str:
    """The given task, or the one the first output's type says (labels: classification)."""
    first = model.graph.output[0].type.tensor_type.elem_type
    inferred = (
        "classification"
        if first in _LABEL_TYPES
        else ("regression" if first in _VALUE_TYPES else None)
    )
    if task is not None:
        if task not in TASKS:
            raise ConfigError(f"task: expected one of {TASKS}, got {task!r}")
        return task
    if inferred is None:
        got = TensorProto.DataType.Name(first).lower() if first else "not a tensor"
        raise BadDataError(
            f"{where}: expected the first output to be labels (int64 or string) or values "
            f"(float), got {got} (output {model.graph.output[0].name!r})"
        )
    return inferred
