"""The ONNX contract every bundle's model.onnx keeps, whatever produced it.

One float32 input "X" [batch, features]. A classifier gives "label" [batch] and, when it has them,
"probabilities" [batch, classes] as plain tensors (no ZipMap); a regressor gives "variable"; an
anomaly model gives "score" [batch, 1], higher = more anomalous (converters.anomaly).
`rename_outputs` brings a graph's outputs to these names, moving aside an inner tensor that
already has one of them.
"""

from __future__ import annotations

import onnx

from edge_agent.errors import BadDataError

INPUT_NAME = "X"
LABEL_OUTPUT = "label"
PROBA_OUTPUT = "probabilities"
VALUE_OUTPUT = "variable"
SCORE_OUTPUT = "score"


def expected_outputs(task: str) -> list[str]:
    if task == "classification":
        return [LABEL_OUTPUT, PROBA_OUTPUT]
    return [SCORE_OUTPUT] if task == "anomaly" else [VALUE_OUTPUT]


def rename_outputs(model: onnx.ModelProto, task: str, where: str) -> None:
    names = [o.name for o in model.graph.output]
    want = expected_outputs(task)
    if len(names) > len(want):
        raise BadDataError(
            f"{where}: expected at most {len(want)} output(s) for {task} ({want}), "
            f"got {len(names)} ({names})"
        )
    for old, new in zip(names, want, strict=False):
        rename(model.graph, old, new)


def rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename tensor `old` to `new`, moving an inner tensor already called `new` aside."""
    if old == new:
        return
    names = _tensor_names(graph)
    if new in names:
        spare = next(f"{new}_{i}" for i in range(1, len(names) + 2) if f"{new}_{i}" not in names)
        rename(graph, new, spare)
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        if value.name == old:
            value.name = new


def _tensor_names(graph: onnx.GraphProto) -> set[str]:
    names = {v.name for v in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return names
