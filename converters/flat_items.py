"""A model trained on flattened items, deployed to take the items: a scikit-learn estimator
(or an ONNX file) fit on the 64 values of 8x8 images serves (8, 8, 1) images.

The ONNX graph gets a Flatten node in front of its input, so the device feeds it the framed
items as they are and the card's input shape is the item's. Keras and TFLite models take
their items themselves (a Flatten layer inside the model).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from converters.onnx_contract import INPUT_NAME, rename
from converters.quantize import RUNTIME, quantize_onnx
from converters.source import Artifact, SourceModel
from edge_agent.errors import BadDataError
from edge_agent.protocol.input_spec import InputSpec

FLAT_NAME = "X_flat"


def items_source(source: SourceModel, spec: InputSpec) -> SourceModel:
    """`source` if it takes items of `spec.shape`; a `FlatItems` around a 2-D ONNX-bound model
    of `spec.size` features; else BadDataError saying what the model takes."""
    shape = getattr(source, "item_shape", None)
    if shape == spec.shape:
        return source
    want = ", ".join(map(str, spec.shape))
    if shape is None and source.n_features in (None, spec.size):
        return FlatItems(source, spec.shape)
    takes = f"items of shape {shape}" if shape is not None else f"{source.n_features} features"
    hint = (
        " (give the Keras model the item shape as its input, with a Flatten layer inside)"
        if source.framework in ("keras", "tflite")
        else ""
    )
    raise BadDataError(
        f"{source.description} takes {takes}; the {spec.kind} input gives items of shape "
        f"({want}), {spec.size} values{hint}"
    )


class FlatItems:
    """`inner`, trained on (n, prod(item_shape)) rows, as a model of (n, *item_shape) items."""

    def __init__(self, inner: SourceModel, item_shape: tuple[int, ...]) -> None:
        self.inner = inner
        self.item_shape = item_shape
        self.framework = inner.framework
        self.description = f"{inner.description} on flattened {'x'.join(map(str, item_shape))}"
        self.task = inner.task
        self.n_features: int | None = None
        self.classes: list[Any] = inner.classes
        self.feature_names: list[str] | None = None

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.inner.predict(x.reshape(len(x), -1))

    def scores(self, x: np.ndarray) -> np.ndarray | None:
        return self.inner.scores(x.reshape(len(x), -1))

    def convert(self, x: np.ndarray, quantize: str) -> Artifact:
        flat = self.inner.convert(x.reshape(len(x), -1), "none")
        if flat.runtime != RUNTIME:
            raise BadDataError(
                f"{self.inner.description}: only ONNX models can be fed flattened items"
            )
        return quantize_onnx(flatten_input(flat.model_bytes, self.item_shape), quantize, x)


def flatten_input(model_bytes: bytes, item_shape: tuple[int, ...]) -> bytes:
    """The ONNX model whose input "X" [batch, features] becomes "X" [batch, *item_shape],
    flattened inside the graph."""
    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    rename(graph, INPUT_NAME, FLAT_NAME)
    (old,) = [i for i in graph.input if i.name == FLAT_NAME]
    graph.input.remove(old)
    graph.input.insert(
        0, helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, *item_shape])
    )
    graph.node.insert(
        0, helper.make_node("Flatten", [INPUT_NAME], [FLAT_NAME], name="flatten_items", axis=1)
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()
