"""The onnxruntime runtime's batch of one (an IOBinding, `OneRow`) gives what the session's run
gives, row after row, from several threads at once; and where a binding cannot hold the outputs
(a string label) or onnxruntime refuses it (an output whose shape changes), the session's run
answers instead and the binding is dropped."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression

from edge_agent.inference.runtime import (
    BOUND_THREADS,
    INFERENCE_ERRORS,
    ONE_ROW_BYTES,
    OnnxRuntime,
    Outputs,
    RunFailed,
    run_errors,
)

ZIPMAP_OFF = {"zipmap": False}


def _session_run(model_bytes: bytes, x: np.ndarray) -> list[np.ndarray]:
    """The outputs of a plain session run on each row of `x` alone, stacked (a batch of many
    sums in another order: its floats may differ in the last bits)."""
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    rows = [session.run(None, {"X": x[i : i + 1]}) for i in range(len(x))]
    return [np.concatenate(outputs) for outputs in zip(*rows, strict=True)]


@pytest.fixture(scope="module")
def classifier() -> tuple[bytes, np.ndarray]:
    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    model = LogisticRegression(max_iter=5000).fit(x, data.target)
    onx = to_onnx(model, x[:1], options={id(model): ZIPMAP_OFF}, target_opset=17)
    return onx.SerializeToString(), x


def test_rows_one_at_a_time_give_the_sessions_outputs(classifier: tuple[bytes, np.ndarray]) -> None:
    model_bytes, x = classifier
    labels, probabilities = _session_run(model_bytes, x)
    runtime = OnnxRuntime(model_bytes)
    got = [runtime.predict_with_scores(x[i : i + 1]) for i in range(len(x))]
    assert runtime._both._ones  # the rows after the first went through the binding
    assert [int(g[0][0]) for g in got] == labels.tolist()
    np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), probabilities)
    # the outputs are copies: the next row does not change the last one's
    first = runtime.predict(x[:1])
    runtime.predict(x[1:2])
    assert first.tolist() == labels[:1].tolist()
    # labels alone, scores alone and a batch of many agree with the session's run too
    assert [int(runtime.predict(x[i : i + 1])[0]) for i in range(50)] == labels[:50].tolist()
    scores = runtime.scores(x[7:8])
    assert scores is not None
    np.testing.assert_array_equal(scores, probabilities[7:8])
    batch = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(runtime.predict(x[:40]), batch.run(None, {"X": x[:40]})[0])


def test_a_regressors_rows_one_at_a_time(tmp_path: object) -> None:
    data = load_iris()
    x = data.data.astype(np.float32)
    model = LinearRegression().fit(x, data.target)
    model_bytes = to_onnx(model, x[:1], target_opset=17).SerializeToString()
    (want,) = _session_run(model_bytes, x)
    runtime = OnnxRuntime(model_bytes)
    got = np.concatenate([runtime.predict(x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_array_equal(got, want.reshape(-1))
    assert runtime.scores(x[:1]) is None


def test_threads_at_once_each_get_their_own_rows_outputs(
    classifier: tuple[bytes, np.ndarray],
) -> None:
    model_bytes, x = classifier
    _, probabilities = _session_run(model_bytes, x)
    runtime = OnnxRuntime(model_bytes)
    runtime.predict_with_scores(x[:1])  # the binding is made
    wrong: list[int] = []
    start = threading.Barrier(4)

    def work(offset: int) -> None:
        start.wait()
        for _ in range(20):
            for i in range(offset, len(x), 4):
                _, scores = runtime.predict_with_scores(x[i : i + 1])
                if scores is None or not np.array_equal(scores[0], probabilities[i]):
                    wrong.append(i)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert wrong == []
    assert len(runtime._both._ones) == BOUND_THREADS  # this thread's and three of the four


def test_string_labels_take_the_sessions_run() -> None:
    data = load_iris()
    x = data.data.astype(np.float32)
    names = np.array(["setosa", "versicolor", "virginica"])[data.target]
    model = LogisticRegression(max_iter=1000).fit(x, names)
    onx = to_onnx(model, x[:1], options={id(model): ZIPMAP_OFF}, target_opset=17)
    runtime = OnnxRuntime(onx.SerializeToString())
    got = [runtime.predict(x[i : i + 1])[0] for i in range(len(x))]
    assert not runtime._labels._ones and not runtime._labels._bindable
    assert got == model.predict(x).tolist()


def _nonzero_model() -> bytes:
    """A model whose output's length is the count of the row's non-zero values: its shape
    changes from one row to the next, so a binding made on one row does not fit the next."""
    graph = helper.make_graph(
        [
            helper.make_node("NonZero", ["X"], ["nz"]),
            helper.make_node("Shape", ["nz"], ["shape"]),
            helper.make_node("Cast", ["nz"], ["where"], to=TensorProto.FLOAT),
        ],
        "nonzero",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("where", TensorProto.FLOAT, [2, None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_an_output_whose_shape_changes_drops_the_binding() -> None:
    model_bytes = _nonzero_model()
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    outputs = Outputs(session, "X", ["where"], ort.RunOptions(), run_errors())
    rows = np.array([[1, 0, 2], [0, 0, 5], [3, 4, 5]], dtype=np.float32)
    got = [outputs.run(rows[:1].copy())[0]]
    assert outputs._ones  # made on the first row: two non-zero values
    got += [outputs.run(rows[i : i + 1].copy())[0] for i in (1, 2)]
    assert not outputs._ones and not outputs._bindable  # refused on the second
    want = [session.run(None, {"X": rows[i : i + 1]})[0] for i in range(3)]
    assert [g.shape for g in got] == [(2, 2), (2, 1), (2, 3)]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def _model(nodes: list[Any], out_shape: list[Any], initializers: Sequence[Any] = ()) -> bytes:
    """A model of `nodes` from X, (n, 3) float32, to the last node's output (without nodes:
    X itself)."""
    output = nodes[-1].output[0] if nodes else "X"
    graph = helper.make_graph(
        nodes,
        "m",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)],
        list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_an_output_that_is_the_input_is_never_bound() -> None:
    """onnxruntime does not write such an output into a bound buffer: it would keep whatever
    the buffer held."""
    runtime = OnnxRuntime(_model([], [None, 3]))
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    got = [runtime._labels.run(rows[i : i + 1])[0] for i in range(4)]
    np.testing.assert_array_equal(np.concatenate(got), rows)
    assert not runtime._labels._ones and not runtime._labels._bindable


def _gather_model() -> bytes:
    """label = data[int(X)] summed over the row, data = 0..4: a value of 5 or more makes the
    kernel fail (onnxruntime's InvalidArgument)."""
    data = numpy_helper.from_array(np.arange(5, dtype=np.float32), "data")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [
        helper.make_node("Cast", ["X"], ["xi"], to=TensorProto.INT64),
        helper.make_node("Gather", ["data", "xi"], ["g"]),
        helper.make_node("ReduceSum", ["g", "axes"], ["label"], keepdims=0),
    ]
    return _model(nodes, [None], [data, axes])


def test_a_row_that_fails_raises_and_the_binding_stays() -> None:
    runtime = OnnxRuntime(_gather_model())
    assert runtime.predict(np.array([[1, 2, 3]], np.float32)).tolist() == [6.0]
    assert runtime._labels._ones  # bound
    with pytest.raises(RunFailed, match="indices element out of data bounds"):
        runtime.predict(np.array([[9, 0, 0]], np.float32))  # raised as an inference error
    with pytest.raises(INFERENCE_ERRORS):  # a batch too: the session's own error type before
        runtime.predict(np.array([[1, 1, 1], [9, 0, 0]], np.float32))
    assert runtime._labels._ones and runtime._labels._bindable  # the row was the cause
    assert runtime.predict(np.array([[4, 4, 0]], np.float32)).tolist() == [8.0]


def test_a_large_row_takes_the_sessions_run() -> None:
    """Copying a row of more than ONE_ROW_BYTES into a bound buffer costs more than it saves."""
    width = ONE_ROW_BYTES // 4 + 1
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["X"], ["mean"], keepdims=0)],
        "m",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    runtime = OnnxRuntime(model.SerializeToString())
    x = np.ones((1, width), np.float32)
    for _ in range(3):
        assert float(runtime._labels.run(x)[0]) == 1.0
    assert not runtime._labels._ones


def test_a_row_the_model_cannot_run_is_counted_and_the_stream_goes_on() -> None:
    """Before, onnxruntime's InvalidArgument (not a RuntimeError) escaped Pipeline.process:
    the batch's rows went uncounted, and the agent's main loop only logged it. A batch the
    model cannot run now costs only its items the model cannot run, each counted."""
    from converters.card import reference_card
    from edge_agent.inference.pipeline import ActiveModel, Pipeline
    from edge_agent.protocol.card import parse_card

    names = ["a", "b", "c"]
    rows = np.random.default_rng(0).uniform(0, 10, (200, 3))  # 9 is in range
    card = parse_card(reference_card(rows, names))
    runtime = OnnxRuntime(_gather_model())
    windows: list[Any] = []
    pipeline = Pipeline(on_drift=lambda _r: None, on_window=windows.append)
    pipeline.active = ActiveModel.build(card, runtime, 50, 20, 100)
    lines = [b"1,2,3", b"4,4,9", b"0,0,0", b"9,1,1", b"2,2,2"]  # 9: no data[9]
    for line in lines:  # one at a time, then as one batch
        pipeline.process([("csv", line)])
    pipeline.process([("csv", line) for line in lines])
    pipeline.flush_window()
    (window,) = windows
    assert window.count == 6  # three good lines, twice
    assert window.errors == {"inference-error": 4}  # two bad lines, twice
    assert window.predictions == {"6.0": 4, "0.0": 2}  # 1+2+3 and 2+2+2; 0+0+0
    assert pipeline.stats.inferences == 6
