"""Keras model -> TFLite model (float32, float16, dynamic-range or full-integer int8).

TensorFlow is optional (`pip install edgefleet[tf]`) and imported only when a Keras model is
involved, so this module imports without it. A `.tflite` file handed over as the input is wrapped
by the device's own `TfliteRuntime`, so it is validated by exactly the code a device runs.

TensorFlow writes to stderr from C++ (absl "I0000 ..." lines written before absl logging is
initialised, which ignore TF_CPP_MIN_LOG_LEVEL; oneDNN notices; converter progress lines) and
to stdout from Python (Keras' "Saved artifact at ..." when exporting). All TensorFlow work here
runs inside `_quiet()`, which points file descriptors 1 and 2 at a temporary file; the captured
text is written back to stderr only when a conversion fails, where it may explain why.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from converters.runtimes.device_run import DeviceRun
from converters.runtimes.targets import (
    check_runtime,
    is_prepared,
    profile_runtime,
    run_on,
)
from converters.source import QUANTIZE_MODES, TASKS, Artifact, growth_note
from converters.validate import (
    MAX_BEYOND,
    QUANTIZE_TOLERANCE,
    compare_outputs,
    output_moves,
    outputs_problem,
    value_spread,
)
from edge_agent.errors import BadDataError, BundleRejected, ConfigError
from edge_agent.inference.tflite import VALUE_TASKS, TfliteRuntime, open_interpreter, output_width
from firmware_configs import DEFAULT_PROFILE

REPRESENTATIVE_ROWS = 200
TFLITE_AS_IS = (
    "a .tflite input ships as it is (TFLite models are not re-quantized; quantize the Keras "
    "model instead)"
)
_TF_HINT = "Keras models need TensorFlow: pip install edgefleet[tf]"
_SUPPORTED_OUTPUTS = (
    "supported outputs are one Dense-style output of shape (batch, k): softmax over k > 1 units "
    "(classification), 1 sigmoid unit (binary classification), 1 unit with any other "
    "activation (regression), or as many units as inputs (an autoencoder: its reconstruction "
    "error is an anomaly score)"
)


class _Captured:
    text = ""


@contextlib.contextmanager
def _quiet(replay_on_error: bool = False) -> Iterator[_Captured]:
    """Swallow what TensorFlow prints (Python and C++, stdout and stderr) and its warnings.

    The captured text is left in the yielded object; with `replay_on_error` it is also written to
    stderr if the body raises. File descriptors are process-wide: meant for the hub CLI, not for
    code that other threads print from at the same time.
    """
    captured = _Captured()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()  # type: ignore[union-attr]
    saved: list[tuple[int, int]] = []
    failed = False
    with tempfile.TemporaryFile() as sink:
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
            except OSError:
                continue  # a closed descriptor: nothing to silence there
            os.dup2(sink.fileno(), fd)
        python_text = _StringSink()
        try:
            with (
                contextlib.redirect_stdout(python_text),
                contextlib.redirect_stderr(python_text),
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("ignore")
                yield captured
        except BaseException:
            failed = True
            raise
        finally:
            for stream in (sys.__stdout__, sys.__stderr__):
                with contextlib.suppress(Exception):
                    stream.flush()  # type: ignore[union-attr]
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            _rehome_log_handlers(python_text)
            sink.seek(0)
            captured.text = python_text.getvalue() + sink.read().decode("utf-8", "replace")
            if failed and replay_on_error and captured.text.strip():
                sys.stderr.write(captured.text)
                sys.stderr.flush()


def _rehome_log_handlers(sink: object) -> None:
    """Point logging handlers created inside `_quiet` (TensorFlow's and absl's, made on import,
    which keep the sys.stderr of that moment) back at the real stderr."""
    loggers: list[Any] = [logging.getLogger()]
    loggers += [lg for lg in logging.Logger.manager.loggerDict.values() if hasattr(lg, "handlers")]
    for logger in loggers:
        for handler in logger.handlers:
            for h in (handler, getattr(handler, "python_handler", None)):
                if isinstance(h, logging.StreamHandler) and h.stream is sink:
                    h.setStream(sys.stderr)


class _StringSink(io.StringIO):
    """Collects Python-level output; survives a close() from a handler that captured it."""

    def close(self) -> None:
        pass


def _one_line(exc: BaseException) -> str:
    """The first meaningful line of an exception message, without traceback text."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "File ")):
            return f"{type(exc).__name__}: {line[:300]}"
    return type(exc).__name__


def _tensorflow() -> Any:
    """The tensorflow module, imported quietly; ConfigError if it is not installed."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        with _quiet():
            import tensorflow as tf  # type: ignore[import-untyped,import-not-found,unused-ignore]

            tf.get_logger().setLevel("ERROR")
    except ImportError as exc:
        raise ConfigError(f"{_TF_HINT} ({exc})") from exc
    return tf


def _keras() -> Any:
    _tensorflow()
    try:
        with _quiet():
            import keras  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError as exc:
        raise ConfigError(f"{_TF_HINT} ({exc})") from exc
    return keras


# --- Keras source -----------------------------------------------------------------------------


def load_keras(
    path: Path,
    task: str | None = None,
    classes: list[Any] | None = None,
    target: str | None = None,
) -> KerasSource:
    """A Keras v3 `.keras` model file (loaded without its training config), to be converted
    for devices running the TFLite runtime `target` (default: the default profile's)."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such model file")
    keras = _keras()
    try:
        with _quiet():
            model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises anything from zipfile, h5py, json, its own code
        raise BadDataError(
            f"{path}: expected a Keras {path.suffix or '.keras'} model, could not load it "
            f"({_one_line(exc)})"
        ) from exc
    return KerasSource(model, task=task, classes=classes, origin=str(path), target=target)


class KerasSource:
    """A Keras model as a `SourceModel`: tabular input (batch, n_features), or items such as
    images (batch, H, W, C) (`item_shape`); one output. Its TFLite conversion is validated on
    the TFLite runtime `target` (converters.runtimes; default: the default profile's)."""

    framework = "keras"

    def __init__(
        self,
        model: Any,
        task: str | None = None,
        classes: list[Any] | None = None,
        origin: str = "the Keras model",
        target: str | None = None,
    ) -> None:
        self.target = target_runtime(target)
        self.model = model
        self.feature_names: list[str] | None = None
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise BadDataError(
                f"{origin}: expected a model with one input and one output, got "
                f"{len(model.inputs)} inputs and {len(model.outputs)} outputs"
            )
        in_shape = tuple(model.inputs[0].shape)
        if len(in_shape) < 2 or None in in_shape[1:]:
            raise BadDataError(
                f"{origin}: expected an input of shape (batch, n_features) for tabular rows, or "
                f"(batch, *item) with known sizes (an image: (batch, H, W, C)), got {in_shape}"
            )
        self.item_shape = tuple(int(d) for d in in_shape[1:])
        self.n_features: int | None = self.item_shape[0] if len(self.item_shape) == 1 else None
        out_shape = tuple(model.outputs[0].shape)
        if len(out_shape) != 2 or out_shape[1] is None:
            raise BadDataError(f"{origin}: output shape {out_shape}; {_SUPPORTED_OUTPUTS}")
        k = int(out_shape[1])
        activation = _output_activation(model)
        self.task, self.classes = _task_and_classes(
            origin, k, activation, task, classes, self.n_features
        )
        self.description = describe_keras(model)
        if self.task == "anomaly" and k > 1:  # an autoencoder: scored by what it gets wrong
            self.model = reconstruction_error(model)
            self.description += " -> reconstruction error"
        self._sigmoid = self.task == "classification" and k == 1

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = self._run(x)
        if self.task in VALUE_TASKS:
            return out.reshape(len(out))
        labels = np.asarray(self.classes)
        if self._sigmoid:
            return labels[(out[:, 0] >= 0.5).astype(np.intp)]
        return labels[out.argmax(axis=1)]

    def scores(self, x: np.ndarray) -> np.ndarray | None:
        if self.task in VALUE_TASKS:
            return None
        out = self._run(x)
        if self._sigmoid:
            return np.stack([1.0 - out[:, 0], out[:, 0]], axis=1)
        return out

    def convert(self, x: np.ndarray, quantize: str) -> Artifact:
        """The TFLite artifact (see keras_artifact); static int8 calibrates on rows of `x`."""
        return keras_artifact(self, x, quantize, self.target)

    def _run(self, x: np.ndarray) -> np.ndarray:
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        with _quiet():
            out = self.model.predict(x32, batch_size=256, verbose=0)
        return np.asarray(out, dtype=np.float32).reshape(len(x32), -1)


def describe_keras(model: Any) -> str:
    """E.g. "Sequential(Dense, Dropout, Dense)": the model class and its layer types."""
    layers = [type(layer).__name__ for layer in model.layers]
    layers = [name for name in layers if name != "InputLayer"]
    if len(layers) > 8:
        layers = [*layers[:7], f"... {len(layers) - 7} more"]
    return f"{type(model).__name__}({', '.join(layers)})"


def _output_activation(model: Any) -> str:
    """The name of the activation applied last ("softmax", "sigmoid", "linear", ...)."""
    last = model.layers[-1] if model.layers else None
    name = type(last).__name__
    if name == "Softmax":
        return "softmax"
    activation = getattr(last, "activation", None)
    if activation is None:
        return "none"
    return str(getattr(activation, "__name__", activation))


def reconstruction_error(model: Any) -> Any:
    """An autoencoder wrapped so that its one output is its anomaly score, (batch, 1): the
    mean over features of the squared difference between what it gives back and what it was
    given (TFLite builtins: SUB, MUL, MEAN)."""
    keras = _keras()
    given = keras.Input(tuple(model.inputs[0].shape[1:]))
    error = keras.layers.Lambda(
        lambda pair: keras.ops.mean(keras.ops.square(pair[0] - pair[1]), axis=1, keepdims=True),
        name="reconstruction_error",
    )
    return keras.Model(given, error([model(given), given]))


def _task_and_classes(
    origin: str,
    k: int,
    activation: str,
    task: str | None,
    classes: list[Any] | None,
    n_features: int | None = None,
) -> tuple[str, list[Any]]:
    """The task (an output as wide as the input, not softmax, is an autoencoder's: anomaly)
    and the class labels of a classifier."""
    if task is not None and task not in TASKS:
        raise ConfigError(f"task {task!r} is not one of {list(TASKS)}")
    if task is None:
        if classes is not None or (k > 1 and activation == "softmax"):
            task = "classification"
        elif k > 1 and k == n_features:
            task = "anomaly"
        elif k == 1:
            task = "classification" if activation == "sigmoid" else "regression"
        else:
            raise BadDataError(
                f"{origin}: the last layer gives {k} units with activation {activation!r}; "
                f"{_SUPPORTED_OUTPUTS}. For a model whose output already is probabilities, "
                f"give the task and classes explicitly"
            )
    if task == "regression":
        if k != 1:
            raise BadDataError(
                f"{origin}: a regression model must give one value per row, this one gives {k}"
            )
        return task, []
    if task == "anomaly":
        if k not in (1, n_features):
            raise BadDataError(
                f"{origin}: an anomaly model gives one score per row, or (an autoencoder) as "
                f"many values as it takes in ({n_features}); this one gives {k}"
            )
        return task, []
    default = list(range(k)) if k > 1 else [0, 1]
    labels = list(classes) if classes is not None else default
    if len(labels) != len(default):
        raise BadDataError(
            f"{origin}: the model gives {k} output(s) per row, which means "
            f"{len(default)} classes, but {len(labels)} class labels were given"
        )
    return task, labels


# --- TFLite source ----------------------------------------------------------------------------


class TfliteSource:
    """A `.tflite` file as a `SourceModel`, run by the device's own TfliteRuntime."""

    framework = "tflite"

    def __init__(
        self,
        runtime: TfliteRuntime,
        classes: list[Any],
        model_bytes: bytes,
        target: str | None = None,
    ) -> None:
        self.target = target_runtime(target)
        self.runtime = runtime
        self.model_bytes = model_bytes
        self.task = runtime.task
        self.classes = classes
        self.n_features: int | None = runtime.n_features
        self.item_shape = runtime.item_shape
        self.feature_names: list[str] | None = None
        takes = (
            f"{runtime.n_features} {runtime.input_dtype.name} features"
            if runtime.n_features is not None
            else f"{'x'.join(map(str, runtime.item_shape))} {runtime.input_dtype.name} input"
        )
        self.description = (
            f"TFLite model ({takes} -> "
            f"{runtime.n_outputs} output{'s' if runtime.n_outputs != 1 else ''})"
        )

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.runtime.predict(x)

    def scores(self, x: np.ndarray) -> np.ndarray | None:
        return self.runtime.scores(x)

    def convert(self, x: np.ndarray, quantize: str) -> Artifact:
        """The file as it is: a TFLite model is not re-quantized (quantize its Keras model)."""
        if quantize not in QUANTIZE_MODES:
            raise ConfigError(
                f"unknown quantization mode {quantize!r}; expected one of {list(QUANTIZE_MODES)}"
            )
        note = "" if quantize == "none" else TFLITE_AS_IS
        rows = check_rows(x, self.item_shape)
        validated_on, stage = "", None
        if is_prepared(self.target):
            validated_on, stage = self._check_on_target(rows)
        else:
            note = "; ".join(filter(None, [note, _unchecked(self.target, "shipped as it is")]))
        return Artifact(
            "litert",
            "model.tflite",
            self.model_bytes,
            self.model_bytes,
            quantize,
            note,
            validated_on=validated_on,
            op_set="as given",
            on_target=stage,
        )

    def _check_on_target(self, rows: np.ndarray) -> tuple[str, dict[str, Any] | None]:
        """The target runtime's version and its outputs' comparison with the hub's; refused
        in one line where it does not load the file or answers otherwise."""
        hub = self.runtime.outputs(rows)
        run = run_on(self.target, self.model_bytes, rows, self.task, self.classes)
        if run.error is not None:
            raise BadDataError(
                f"this .tflite model does not load on {self.target} (the runtime the target "
                f"profile names): {_load_error(run.error)}; a .tflite input ships as it is, so "
                f"convert its Keras model instead (edgehub picks an op set {self.target} loads)"
            )
        # a given file may be quantized whatever `quantize` says: held to int8's tolerance
        stage = _compare_on_target(self.task, self.runtime, hub, run, "dynamic")
        problem = _target_problem(self.task, "dynamic", run, stage)
        if problem is not None:
            raise BadDataError(f"this .tflite model on {self.target}: {problem}")
        return run.runtime, stage


def load_tflite(
    path: Path,
    task: str | None = None,
    classes: list[Any] | None = None,
    target: str | None = None,
) -> TfliteSource:
    """A `.tflite` model file. Without `task`: k > 1 outputs per row is a classifier of classes
    range(k), one output a regressor (a binary sigmoid model needs task="classification")."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such model file")
    if task is not None and task not in TASKS:
        raise ConfigError(f"task {task!r} is not one of {list(TASKS)}")
    model_bytes = path.read_bytes()
    try:
        with _quiet():
            k = output_width(open_interpreter(model_bytes))
            if task is None:
                task = "classification" if k > 1 or classes is not None else "regression"
            labels: list[Any] = []
            if task == "classification":
                labels = (
                    list(classes) if classes is not None else list(range(k) if k > 1 else [0, 1])
                )
            runtime = TfliteRuntime(model_bytes, task, labels, 1)
    except BundleRejected as exc:
        if exc.reason == "runtime-missing":
            raise ConfigError(f"{path}: {exc.detail}") from exc
        raise BadDataError(f"{path}: expected a TFLite .tflite model: {exc.detail}") from exc
    return TfliteSource(runtime, labels, model_bytes, target)


# --- conversion -------------------------------------------------------------------------------


def keras_artifact(
    source: KerasSource, x_rep: np.ndarray, quantize: str, target: str | None = None
) -> Artifact:
    """`source` as a TFLite model: float32 ("none"), or quantized by `quantize`, in an op set
    the TFLite runtime `target` loads (default: the default profile's runtime).

    "dynamic": int8 weights, float activations (no data needed). "float16": float16 weights.
    "static": full-integer int8 (int8 input and output too), calibrated on up to
    REPRESENTATIVE_ROWS NaN-free rows of `x_rep`.

    Each conversion is opened by `target` (an older one in its cached environment) and run on
    up to REPRESENTATIVE_ROWS rows of `x_rep`; where it does not load (newer op versions:
    per-channel int8 Dense weights make FULLY_CONNECTED version 12, which tflite-runtime 2.14
    does not have) the next op set of OP_SETS is tried, and its outputs must agree with the
    hub runtime's on the same model within what the quantization allows. BadDataError, naming
    the runtime and what it could not load, when no op set serves.
    """
    if quantize not in QUANTIZE_MODES:
        raise ConfigError(
            f"unknown quantization mode {quantize!r}; expected one of {list(QUANTIZE_MODES)}"
        )
    target = target_runtime(target)
    tf = _tensorflow()
    float_bytes = _convert(tf, source, "none", lambda converter: None)
    rows = representative_rows(x_rep, source.item_shape) if quantize == "static" else None
    mode = {"none": None, "dynamic": _dynamic(tf), "float16": _float16(tf)}.get(quantize)
    configure = _static(tf, rows) if rows is not None else mode
    check = check_rows(x_rep, source.item_shape)
    refused: list[str] = []
    # not prepared on this hub: unchecked, in the op set older runtimes load (the last tried)
    prepared = is_prepared(target)
    for op_set, tweak in OP_SETS[quantize] if prepared else OP_SETS[quantize][-1:]:
        if configure is None:
            model_bytes = float_bytes
        else:
            model_bytes = _convert(tf, source, quantize, _then(configure, tweak))
        notes = _check_converted(source, model_bytes, quantize, rows)
        if not prepared:
            notes.append(_unchecked(target, f"shipped the {op_set} op set, the most conservative"))
            return Artifact(
                "litert",
                "model.tflite",
                float_bytes,
                model_bytes,
                quantize,
                "; ".join(notes),
                op_set=op_set,
            )
        hub = _hub_runtime(source, model_bytes)
        run = run_on(target, model_bytes, check, source.task, source.classes)
        if run.error is not None:
            refused.append(f"the {op_set} op set ({_load_error(run.error)})")
            continue
        stage = None
        if hub is not None:
            stage = _compare_on_target(source.task, hub, hub.outputs(check), run, quantize)
            problem = _target_problem(source.task, quantize, run, stage)
            if problem is not None:
                refused.append(f"the {op_set} op set ({problem})")
                continue
        if refused:
            notes.append(f"{target} refused {'; '.join(refused)}: shipped with the {op_set} op set")
        grown = growth_note(quantize, len(float_bytes), len(model_bytes))
        if grown and not notes:  # a note above already says why quantization did little
            notes.append(grown)
        return Artifact(
            runtime="litert",
            model_file="model.tflite",
            float_bytes=float_bytes,
            model_bytes=model_bytes,
            quantize=quantize,
            note="; ".join(notes),
            validated_on=run.runtime,
            op_set=op_set,
            on_target=stage,
        )
    raise BadDataError(
        f"the TFLite conversion of {source.description} (quantize={quantize}) does not run on "
        f"{target}, the runtime the target profile names, in any op set tried: "
        f"{'; '.join(refused)}"
    )


# The op sets a conversion tries, in order, until the target runtime loads one: the converter's
# default, then per-tensor int8 weights for Dense layers (FULLY_CONNECTED version 9 instead of
# 12, which tflite-runtime 2.14 lacks), then per-tensor weights everywhere (convolutions too).
def _per_tensor_dense(converter: Any) -> None:
    converter._experimental_disable_per_channel_quantization_for_dense_layers = True


def _per_tensor(converter: Any) -> None:
    converter._experimental_disable_per_channel = True
    converter._experimental_disable_per_channel_quantization_for_dense_layers = True


_INT8_OP_SETS: tuple[tuple[str, Callable[[Any], None] | None], ...] = (
    ("default (per-channel int8 weights)", None),
    ("per-tensor int8 Dense weights", _per_tensor_dense),
    ("per-tensor int8 weights", _per_tensor),
)
OP_SETS: dict[str, tuple[tuple[str, Callable[[Any], None] | None], ...]] = {
    "none": (("default", None),),
    "float16": (("default", None),),
    "dynamic": _INT8_OP_SETS,
    "static": _INT8_OP_SETS,
}


def _then(
    configure: Callable[[Any], None], tweak: Callable[[Any], None] | None
) -> Callable[[Any], None]:
    def both(converter: Any) -> None:
        configure(converter)
        if tweak is not None:
            tweak(converter)

    return both


def _unchecked(target: str, shipped: str) -> str:
    return (
        f"not checked on {target}, the runtime the target profile names: it is not prepared "
        f"on this hub (`edgehub runtimes prepare` once); {shipped}"
    )


def target_runtime(target: str | None) -> str:
    """`target` checked, else the TFLite runtime of the default profile."""
    return check_runtime(target) if target is not None else profile_runtime(DEFAULT_PROFILE)


def check_rows(x: np.ndarray, item_shape: tuple[int, ...]) -> np.ndarray:
    """Up to REPRESENTATIVE_ROWS rows of `x` to run on the target runtime (one row of zeros
    where `x` has no usable row: the model must still load and run)."""
    try:
        return representative_rows(x, item_shape)
    except BadDataError:
        return np.zeros((1, *item_shape), dtype=np.float32)


def _hub_runtime(source: KerasSource, model_bytes: bytes) -> TfliteRuntime | None:
    """The model on the hub's own runtime (None where the hub has none: the validation says so)."""
    try:
        with _quiet():
            return TfliteRuntime(model_bytes, source.task, source.classes, 1)
    except BundleRejected:
        return None


_OP_VERSION = re.compile(r"Didn't find op for builtin opcode '(\w+)' version '(\d+)'")


def _load_error(error: str) -> str:
    """The runtime's reason, shortened to the op and version it lacks where it says so."""
    found = _OP_VERSION.search(error)
    if found:
        return f"it has no {found[1]} version {found[2]}"
    return error.strip().splitlines()[0][:300] if error.strip() else "it refused the model"


def _target_problem(task: str, quantize: str, run: DeviceRun, stage: dict[str, Any]) -> str | None:
    """What the target runtime's outputs got wrong, in one line (None if they agree)."""
    report = {"task": task, "quantize": quantize, "validated_on": run.runtime, "target": stage}
    return outputs_problem(report, "target")


def _compare_on_target(
    task: str, hub: TfliteRuntime, hub_out: np.ndarray, run: DeviceRun, quantize: str
) -> dict[str, Any]:
    """The target runtime's outputs against the hub runtime's on the same model and rows, as a
    stage of the validation report (tolerance: what `quantize` allows)."""
    got = np.asarray(run.outputs, dtype=np.float32).reshape(hub_out.shape)
    want = hub.labels_of(hub_out)
    if task == "classification":
        scores = (hub.probabilities_of(hub_out), hub.probabilities_of(got))
        moved = output_moves(task, want, hub.labels_of(got), *scores)
        spread = None
    else:
        spread = value_spread(want)
        moved = output_moves(task, want, hub.labels_of(got), spread=spread)
    return compare_outputs(
        task, moved, QUANTIZE_TOLERANCE[quantize], MAX_BEYOND["quantization"], spread=spread
    )


def representative_rows(x: np.ndarray, item_shape: tuple[int, ...]) -> np.ndarray:
    """Up to REPRESENTATIVE_ROWS NaN-free float32 rows (or items) of `x`, spread evenly."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[1:] != item_shape:
        raise BadDataError(
            f"static quantization needs calibration items of shape (n, "
            f"{', '.join(map(str, item_shape))}), got an array of shape {x.shape}"
        )
    x = x[~np.isnan(x.reshape(len(x), -1)).any(axis=1)]
    if len(x) == 0:
        raise BadDataError(
            "static quantization needs calibration rows without NaN, and every row has one"
        )
    if len(x) > REPRESENTATIVE_ROWS:
        x = x[np.linspace(0, len(x) - 1, REPRESENTATIVE_ROWS).round().astype(np.intp)]
    return np.ascontiguousarray(x)


def _dynamic(tf: Any) -> Callable[[Any], None]:
    def configure(converter: Any) -> None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

    return configure


def _float16(tf: Any) -> Callable[[Any], None]:
    def configure(converter: Any) -> None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]

    return configure


def _static(tf: Any, rows: np.ndarray) -> Callable[[Any], None]:
    def representative() -> Iterator[list[np.ndarray]]:
        for row in rows:
            yield [row[None, :]]

    def configure(converter: Any) -> None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8

    return configure


def _convert(tf: Any, source: KerasSource, mode: str, configure: Callable[[Any], None]) -> bytes:
    try:
        with _quiet(replay_on_error=True):
            converter = tf.lite.TFLiteConverter.from_keras_model(source.model)
            configure(converter)
            return bytes(converter.convert())
    except Exception as exc:  # the converter raises ConverterError, ValueError, RuntimeError...
        raise BadDataError(
            f"cannot convert {source.description} to TFLite (quantize={mode}): "
            f"{_converter_reason(exc)}"
        ) from exc


_MISSING_OP = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")
_UNQUANTIZABLE_OP = re.compile(r"Quantization not yet supported for op: '?([\w.]+)")


def _converter_reason(exc: BaseException) -> str:
    """One line for a converter failure; the MLIR dump behind it is replayed on stderr."""
    text = str(exc)
    missing = list(dict.fromkeys(_MISSING_OP.findall(text)))
    if missing:
        return (
            f"the model uses TensorFlow op(s) {', '.join(missing)} that TFLite's builtin "
            f"runtime does not have (devices run builtin ops only)"
        )
    unquantizable = list(dict.fromkeys(_UNQUANTIZABLE_OP.findall(text)))
    if unquantizable:
        return (
            f"full-integer quantization does not support op(s) {', '.join(unquantizable)}: "
            f"use quantize=dynamic or float16"
        )
    return _one_line(exc)


def _check_converted(
    source: KerasSource, model_bytes: bytes, mode: str, rows: np.ndarray | None
) -> list[str]:
    """Open the converted model in the device runtime (BadDataError if it does not load) and
    return notes on what the quantization did not do.

    Runs quietly: LiteRT prints a one-time "Created TensorFlow Lite XNNPACK delegate" line on
    the first model a process opens, which would otherwise show up during validation."""
    try:
        with _quiet():
            TfliteRuntime(model_bytes, source.task, source.classes, 1)
            interp = open_interpreter(model_bytes)
    except BundleRejected as exc:
        if exc.reason == "runtime-missing":
            return []  # the hub may convert without a runtime; validation will say so
        raise BadDataError(
            f"the TFLite conversion of {source.description} (quantize={mode}) does not load: "
            f"{exc.detail}"
        ) from exc
    notes: list[str] = []
    if mode == "dynamic" and not any(
        np.dtype(t["dtype"]) == np.int8 for t in interp.get_tensor_details()
    ):
        notes.append(
            "no weight tensor is large enough for dynamic-range quantization (TFLite quantizes "
            "weights of 1024 elements or more): the weights stay float32"
        )
    if mode == "static" and rows is not None and rows.ndim == 2:  # rows of features
        scale = float(interp.get_input_details()[0]["quantization"][0])
        note = _coarse_input_note(rows, scale)
        if note:
            notes.append(note)
    return notes


COARSE_INPUT_STEPS = 16


def _coarse_input_note(rows: np.ndarray, scale: float) -> str:
    """A warning when the int8 input's single scale leaves features with few distinct steps.

    Full-integer models quantize the whole input row with one (scale, zero_point): features on
    very different scales (raw units, a Normalization layer inside the model) lose the small
    ones entirely."""
    if scale <= 0:
        return ""
    steps = (rows.max(axis=0) - rows.min(axis=0)) / scale
    coarse = [int(i) for i in np.flatnonzero((steps < COARSE_INPUT_STEPS) & (steps > 0))]
    if not coarse:
        return ""
    shown = ", ".join(str(i) for i in coarse[:8]) + (", ..." if len(coarse) > 8 else "")
    return (
        f"the int8 input uses one scale ({scale:.4g}) for all features, and {len(coarse)} "
        f"feature(s) (0-based column {shown}) span fewer than {COARSE_INPUT_STEPS} of its 256 "
        f"steps, so they lose most of their information: feed features on similar scales "
        f"(standardize them before the model) or use quantize=dynamic"
    )
