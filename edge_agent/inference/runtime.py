"""Runtimes behind one interface: a model's bytes in, predictions out.

onnxruntime is the default; TFLite models (card runtime "litert") run on LiteRT (ai-edge-litert)
or, where only that is installed, tflite-runtime. Those are optional plugins imported only when a
card asks for them. The converters validate a result through these same classes, so what the hub
measured is what the device runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from edge_agent.errors import BundleRejected, EdgefleetError
from edge_agent.protocol.card import ModelCard
from edge_agent.protocol.reasons import Reason


class Runtime(Protocol):
    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, n_features) float32 -> (n,) labels (classification), values (regression) or
        scores (anomaly: higher = more anomalous)."""
        ...

    def scores(self, x: np.ndarray) -> np.ndarray | None:
        """(n, n_classes) class probabilities for a classifier; None for a regressor."""
        ...

    def predict_with_scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """`predict(x)` and `scores(x)` from one inference (what the accuracy estimate needs,
        at the cost of one, not two)."""
        ...


class OnnxRuntime:
    """A model whose first output is the label or value and whose second, for a classifier,
    is the probabilities (the converters' contract)."""

    def __init__(self, model_bytes: bytes, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                model_bytes, options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad models
            raise BundleRejected(
                Reason.BAD_MODEL, f"onnxruntime cannot load the model: {exc}"
            ) from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise BundleRejected(Reason.BAD_MODEL, f"expected one model input, got {len(inputs)}")
        self._input = inputs[0].name
        outputs = [o.name for o in self._session.get_outputs()]
        self._label_output = outputs[:1]
        self._score_output = outputs[1:2]
        self._both_outputs = outputs[:2]
        # One RunOptions for every call: with None, onnxruntime builds a default one per run,
        # which at batch 1 costs a tenth of a small model's inference. It holds no per-run state.
        self._run_options = ort.RunOptions()
        self._run = _direct_run(self._session)

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = self._run(self._label_output, {self._input: x}, self._run_options)[0]
        out = np.asarray(out)
        return out if out.ndim == 1 else out.reshape(len(x))  # (n,) as most models give them

    def scores(self, x: np.ndarray) -> np.ndarray | None:
        if not self._score_output:
            return None
        return np.asarray(self._run(self._score_output, {self._input: x}, self._run_options)[0])

    def predict_with_scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if not self._score_output:
            return self.predict(x), None
        labels, scores = self._run(self._both_outputs, {self._input: x}, self._run_options)
        labels = np.asarray(labels)
        return (labels if labels.ndim == 1 else labels.reshape(len(x))), np.asarray(scores)


def _direct_run(session: Any) -> Callable[..., list[Any]]:
    """The session's run without the Python wrapper's per-call checks, where this onnxruntime
    has the compiled one (`_sess.run`, what `InferenceSession.run` calls after them). At batch
    1 those checks cost about a third of a small model's inference, and none applies here: the
    input is the model's one input by name, a numpy array (no OrtValue to own), on the CPU
    provider (no graph capture, no provider to fall back from). Elsewhere: the public run."""
    compiled = getattr(session, "_sess", None)
    run = getattr(compiled, "run", None)
    return run if callable(run) else session.run


def open_runtime(
    kind: str, model_bytes: bytes, task: str, classes: Sequence[Any], threads: int = 1
) -> Runtime:
    """The runtime named `kind` ("onnxruntime" or "litert") for a model of `task`."""
    if kind == "onnxruntime":
        return OnnxRuntime(model_bytes, threads)
    if kind == "litert":
        from edge_agent.inference.tflite import TfliteRuntime

        return TfliteRuntime(model_bytes, task, classes, threads)
    raise BundleRejected(Reason.BAD_CARD, f"runtime {kind!r} is not one this agent knows")


RuntimeLoader = Callable[[ModelCard, bytes, int], Runtime]  # (card, model bytes, threads)

WARMUP_RUNS = 3


def load_runtime(card: ModelCard, model_bytes: bytes, threads: int = 1) -> Runtime:
    """The card's runtime, warmed up: a few single-row inferences on the card's first sample row
    (or zeros), so the first sensor line does not pay for lazy allocation. A failure here is
    left for the health gate to count and report."""
    runtime = open_runtime(card.runtime, model_bytes, card.task, card.classes, threads)
    items = card.sample_items()
    row = items[:1] if len(items) else np.zeros((1, *card.input.shape), np.float32)
    with contextlib.suppress(EdgefleetError, RuntimeError, ValueError):
        for _ in range(WARMUP_RUNS):
            runtime.predict(row)
    return runtime
