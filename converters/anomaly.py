"""Anomaly models, whatever the framework: the score output, the threshold, the labels.

Every anomaly model deploys with one output, "score" [batch, 1], higher = more anomalous (the
card's one convention, `edge_agent.protocol.card.Anomaly`), so a device reads any of them the
same way: a row whose score is above the card's threshold is an anomaly. What a model gives is
brought to that in its graph, here:

- an outlier detector (IsolationForest, OneClassSVM...) gives scikit-learn's
  `decision_function`, score_samples - offset_, higher = more normal: the graph appends
  `score = -decision - offset_` (`append_detector_score`), which is `-score_samples`, and the
  detector's own threshold is `-offset_` (where `decision_function` crosses 0: what its
  `predict` calls an outlier, -1). For an IsolationForest that is the anomaly score of the
  paper (0.5 with contamination "auto");
- an autoencoder gives its reconstruction: the graph appends the reconstruction error, the
  mean over features of the squared difference from what it was given
  (`append_reconstruction_error`). It has no threshold of its own.

The threshold (`choose_threshold`) is the one given, else a quantile of the deployed model's
scores on the reference rows (1 - contamination), else the model's own, else the quantile at
DEFAULT_CONTAMINATION. The reference rows should be normal rows the model was not trained on:
on its training rows an autoencoder reconstructs better than it will on new rows, so a quantile
there flags more new normal rows than the contamination says.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converters.onnx_contract import SCORE_OUTPUT, rename
from converters.source import DEFAULT_CONTAMINATION, MAX_CONTAMINATION
from edge_agent.errors import BadDataError, ConfigError
from edge_agent.protocol.card import Anomaly, anomaly_label


def append_detector_score(model: onnx.ModelProto, decision: str, offset: float) -> None:
    """Make `score` = -decision - offset the graph's only output ([batch, 1] float32)."""
    graph = model.graph
    offset_name = _fresh(graph, "anomaly_offset")
    graph.initializer.append(
        numpy_helper.from_array(np.asarray([offset], dtype=np.float32), offset_name)
    )
    negated = _fresh(graph, "anomaly_negated")
    graph.node.append(helper.make_node("Neg", [decision], [negated], name=negated))
    score = _fresh(graph, "anomaly_score")
    graph.node.append(helper.make_node("Sub", [negated, offset_name], [score], name=score))
    _only_output(model, score)


def append_reconstruction_error(
    model: onnx.ModelProto, reconstruction: str, given: str, width: int
) -> None:
    """Make `score` = mean over features of (reconstruction - given)^2 the graph's only output
    ([batch, 1] float32). `given` is the tensor the autoencoder was fed (the graph's input, or
    what steps before it made of it), `width` its features; the reconstruction is read as
    [batch, width] (skl2onnx flattens an MLPRegressor's outputs to one column)."""
    graph = model.graph
    shape = _fresh(graph, "anomaly_shape")
    graph.initializer.append(numpy_helper.from_array(np.asarray([-1, width], np.int64), shape))
    rows = _fresh(graph, "anomaly_reconstruction")
    graph.node.append(helper.make_node("Reshape", [reconstruction, shape], [rows], name=rows))
    diff = _fresh(graph, "anomaly_diff")
    graph.node.append(helper.make_node("Sub", [rows, given], [diff], name=diff))
    squared = _fresh(graph, "anomaly_squared")
    graph.node.append(helper.make_node("Mul", [diff, diff], [squared], name=squared))
    score = _fresh(graph, "anomaly_score")
    if _opset(model) >= 18:  # the axes are an input from opset 18 on
        axes = _fresh(graph, "anomaly_axes")
        graph.initializer.append(numpy_helper.from_array(np.asarray([1], np.int64), axes))
        mean = helper.make_node("ReduceMean", [squared, axes], [score], name=score, keepdims=1)
    else:
        mean = helper.make_node("ReduceMean", [squared], [score], name=score, axes=[1], keepdims=1)
    graph.node.append(mean)
    _only_output(model, score)


def _only_output(model: onnx.ModelProto, name: str) -> None:
    """Tensor `name` as the graph's one output, "score" [batch, 1] float32, and nothing left
    that does not lead to it."""
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, 1]))
    rename(model.graph, name, SCORE_OUTPUT)
    needed = {SCORE_OUTPUT}
    keep = []
    for node in reversed(model.graph.node):
        if needed.intersection(node.output):
            keep.append(node)
            needed.update(node.input)
    del model.graph.node[:]
    model.graph.node.extend(reversed(keep))
    used = [i for i in model.graph.initializer if i.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(used)


def _fresh(graph: onnx.GraphProto, stem: str) -> str:
    """A tensor name the graph does not use yet."""
    taken = {v.name for v in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]}
    for node in graph.node:
        taken.update(node.input)
        taken.update(node.output)
    name, i = stem, 0
    while name in taken:
        i += 1
        name = f"{stem}_{i}"
    return name


def _opset(model: onnx.ModelProto) -> int:
    return next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), 1)


def choose_threshold(
    scores: np.ndarray,
    own: float | None,
    contamination: float | None = None,
    threshold: float | None = None,
) -> tuple[float, str]:
    """(threshold, how it was chosen), from the deployed model's `scores` on the reference
    rows: `threshold` if given, else their 1 - `contamination` quantile, else the model's `own`,
    else the quantile at DEFAULT_CONTAMINATION."""
    if threshold is not None and contamination is not None:
        raise ConfigError("give the threshold or the contamination, not both")
    if threshold is not None:
        return float(threshold), "given"
    if contamination is None and own is not None:
        return float(own), "the model's own"
    share = DEFAULT_CONTAMINATION if contamination is None else contamination
    if not 0 < share <= MAX_CONTAMINATION:
        raise ConfigError(
            f"contamination: expected a share above 0 and at most {MAX_CONTAMINATION}, got {share}"
        )
    finite = np.asarray(scores, dtype=np.float64).reshape(-1)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        raise BadDataError("the model gives no finite score on the reference rows")
    # as scikit-learn places an outlier detector's offset_ for its contamination
    return float(np.quantile(finite, 1 - share)), f"contamination {share:g}"


def anomaly_spec(scores: np.ndarray, threshold: float) -> Anomaly:
    """The card's anomaly section: the threshold and the share of reference rows above it."""
    flags = Anomaly(threshold, 0.0).flags(scores)
    return Anomaly(threshold, float(flags.mean()) if flags.size else 0.0)


def anomaly_labels(y: Any, where: str = "y") -> np.ndarray:
    """Ground truth for an anomaly model as booleans: 1/0, true/false or "anomaly"/"normal";
    BadDataError naming the first value that is none of those."""
    values = np.asarray(y).reshape(-1)
    flags = np.empty(len(values), dtype=bool)
    for i, value in enumerate(values.tolist()):
        flag = anomaly_label(value)
        if flag is None:
            raise BadDataError(
                f"{where}[{i}]: expected an anomaly label (1 or 0, true or false, 'anomaly' or "
                f"'normal'), got {value!r:.40}"
                + (" (scikit-learn's -1 for an outlier: give y == -1)" if value == -1 else "")
            )
        flags[i] = flag
    return flags


def check_single_score(model: onnx.ModelProto, where: str) -> None:
    """An anomaly model from a file: one float output of one value per row, its score."""
    outputs = list(model.graph.output)
    tensor = outputs[0].type.tensor_type if outputs else None
    dims = (
        [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if tensor
        else []
    )
    ok = (
        len(outputs) == 1
        and tensor is not None
        and tensor.elem_type == TensorProto.FLOAT
        and (len(dims) == 1 or (len(dims) == 2 and dims[1] in (1, None)))
    )
    if not ok:
        raise BadDataError(
            f"{where}: expected an anomaly model's one output, a float32 score per row "
            f"(higher = more anomalous), got {[o.name for o in outputs]}"
        )
