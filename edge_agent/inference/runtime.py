"""Runtimes behind one interface: a model's bytes in, predictions out.

onnxruntime is the default; TFLite models (card runtime "litert") run on LiteRT (ai-edge-litert)
or, where only that is installed, tflite-runtime. Those are optional plugins imported only when a
card asks for them. The converters validate a result through these same classes, so what the hub
measured is what the device runs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from threading import get_ident
from typing import Any, Protocol

import numpy as np

from edge_agent.errors import BundleRejected, EdgefleetError
from edge_agent.protocol.card import ModelCard
from edge_agent.protocol.reasons import Reason

INFERENCE_ERRORS = (EdgefleetError, RuntimeError, ValueError)  # what a runtime raises on a row
BOUND_THREADS = 4  # threads a session keeps a batch-of-one binding for (`Outputs`)
ONE_ROW_BYTES = 16_384  # the largest row a batch-of-one binding takes (`OneRow`)


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
        name = inputs[0].name
        outputs = [o.name for o in self._session.get_outputs()]
        # One RunOptions for every call: with None, onnxruntime builds a default one per run,
        # which at batch 1 costs a tenth of a small model's inference. It holds no per-run state.
        run_options, errors = ort.RunOptions(), run_errors()
        self._labels = Outputs(self._session, name, outputs[:1], run_options, errors)
        self._scores = Outputs(self._session, name, outputs[1:2], run_options, errors)
        self._both = Outputs(self._session, name, outputs[:2], run_options, errors)

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = np.asarray(self._labels.run(x)[0])
        return out if out.ndim == 1 else out.reshape(len(x))  # (n,) as most models give them

    def scores(self, x: np.ndarray) -> np.ndarray | None:
        if not self._scores.names:
            return None
        return np.asarray(self._scores.run(x)[0])

    def predict_with_scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if not self._scores.names:
            return self.predict(x), None
        labels, scores = self._both.run(x)
        labels = np.asarray(labels)
        return (labels if labels.ndim == 1 else labels.reshape(len(x))), np.asarray(scores)


class Outputs:
    """Some outputs of a session, computed for a batch: `run(x)` is the list of them.

    A batch of one goes through an IOBinding (`OneRow`), made for each thread (at most
    `BOUND_THREADS`) from the first batch of one the session ran there for these outputs: the
    row is copied into a buffer onnxruntime reads, and the outputs come out of buffers it
    writes. That spares the input dict and the new output arrays of a run, about a fifth of
    a small model's inference at batch 1, where a device's sensor line usually is. Other
    batches, and what a binding cannot hold (a string label, an output that is not a tensor),
    take the session's run. When a bound run fails, the session's run is tried: if it fails
    too, the row is the cause and its error is raised; if it answers, the binding was (an
    output whose shape depends on the values), and binding stops."""

    def __init__(
        self,
        session: Any,
        input_name: str,
        names: list[str],
        run_options: Any,
        errors: tuple[type[Exception], ...],
    ) -> None:
        self.names = names
        self._session = session
        self._input = input_name
        self._options = run_options
        self._run = _direct_run(session)
        self._errors = errors
        self._ones: dict[int, OneRow] = {}  # by thread
        self._making = threading.Lock()
        self._bindable = True  # False once a binding was found impossible or was refused

    def run(self, x: np.ndarray) -> list[Any]:
        one = self._ones.get(get_ident()) if len(x) == 1 else None
        if one is not None:
            try:
                out = one.run(x)
            except INFERENCE_ERRORS:
                # the session's run raises too if the row is the cause (the binding stays);
                # if it answers, the binding was (an output whose shape moved): binding stops
                out = self._session_run(x)
                self._bindable, self._ones = False, {}
                return out
            if out is not None:
                return out
        out = self._session_run(x)
        if one is None and len(x) == 1 and self._bindable and len(self._ones) < BOUND_THREADS:
            self._bind(x, out)
        return out

    def _session_run(self, x: np.ndarray) -> list[Any]:
        try:
            return self._run(self.names, {self._input: x}, self._options)
        except self._errors as exc:  # onnxruntime's own, which are not RuntimeErrors
            raise RunFailed(f"onnxruntime could not run the model: {exc}") from exc

    def _bind(self, x: np.ndarray, outputs: list[Any]) -> None:
        """This thread's binding, made from a run on `x` that gave `outputs` (one thread at a
        time, so no more than BOUND_THREADS are made)."""
        with self._making:
            if get_ident() in self._ones or len(self._ones) >= BOUND_THREADS:
                return
            made = OneRow.of(self._session, self._input, self.names, x, outputs, self._options)
            if made is None:
                self._bindable = False
            else:
                self._ones[get_ident()] = made


class OneRow:
    """A batch of one through an IOBinding, for rows shaped like the one it was made from, by
    the thread that made it (`Outputs` keeps one a thread). The outputs are copied out: the
    buffers are the next row's."""

    def __init__(
        self, session: Any, binding: Any, x: np.ndarray, outputs: list[np.ndarray], options: Any
    ) -> None:
        self._x = x
        self._shape = x.shape
        self._dtype = x.dtype
        self._outputs = outputs
        self._binding = binding._iobinding
        self._run = session._sess.run_with_iobinding
        self._options = options

    @classmethod
    def of(
        cls,
        session: Any,
        input_name: str,
        names: list[str],
        x: np.ndarray,
        outputs: list[Any],
        options: Any,
    ) -> OneRow | None:
        """The binding for rows like `x` whose outputs `names` are shaped like `outputs` (a run
        of the session on `x`), or None where this onnxruntime or these outputs allow none: a
        row of more than ONE_ROW_BYTES (copying it in costs more than the binding saves), or
        outputs the bound run does not give exactly. Tried twice on `x` with the buffers set
        to 0, then 1: an output onnxruntime does not write into its buffer (a graph output
        that is the graph's input) keeps what the buffer held, and is caught."""
        numeric = all(isinstance(o, np.ndarray) and o.dtype.kind in "biuf" for o in outputs)
        compiled = getattr(session, "_sess", None)
        if (
            not numeric
            or x.dtype.kind != "f"
            or x.nbytes > ONE_ROW_BYTES
            or not hasattr(compiled, "run_with_iobinding")
        ):
            return None
        row = np.empty_like(x, order="C")
        buffers = [np.empty_like(o, order="C") for o in outputs]
        binding = session.io_binding()
        binding.bind_cpu_input(input_name, row)
        for name, out in zip(names, buffers, strict=True):
            binding.bind_output(name, "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
        one = cls(session, binding, row, buffers, options)
        for fill in (0, 1):
            for buffer in buffers:
                buffer.fill(fill)
            got = one.run(x)
            if got is None or not all(
                np.array_equal(g, o, equal_nan=True) for g, o in zip(got, outputs, strict=True)
            ):
                return None
        return one

    def run(self, x: np.ndarray) -> list[np.ndarray] | None:
        """The outputs for `x`, or None if it is not shaped like the bound row."""
        if x.shape != self._shape or x.dtype is not self._dtype:
            return None
        self._x[...] = x
        self._run(self._binding, self._options)
        return [out.copy() for out in self._outputs]


class RunFailed(RuntimeError):
    """onnxruntime could not run the model on a batch (a kernel refused the values, say)."""


def run_errors() -> tuple[type[Exception], ...]:
    """The exception types onnxruntime's compiled session raises (InvalidArgument, Fail,
    RuntimeException, ...): Exceptions, not RuntimeErrors, so INFERENCE_ERRORS would miss
    them."""
    from onnxruntime.capi import onnxruntime_pybind11_state as compiled

    found = vars(compiled).values()
    return tuple(t for t in found if isinstance(t, type) and issubclass(t, Exception))


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
