"""TFLite models on the device: LiteRT (ai-edge-litert), or tflite-runtime where only that exists.

Imports nothing but numpy at module level; the interpreter package is imported when a model is
opened. The model takes one input of shape [batch, n_features] (or [batch, *item], e.g. an
image's [batch, H, W, C]) and gives one output of shape [batch, k]: class probabilities
(k == number of classes), a single sigmoid probability of classes[1] (k == 1, two classes), a
regression value or an anomaly score (k == 1). Full-integer models (int8 or uint8 input/output)
are fed float32 rows quantized with the input tensor's scale and zero point, and their output
is dequantized, so callers always see float32.

The batch dimension follows the rows passed in: the input is resized (and tensors re-allocated)
only when the batch size changes, so a steady stream of same-sized batches costs one
set_tensor/invoke/get_tensor each.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_agent.errors import BadDataError, BundleRejected
from edge_agent.protocol.reasons import Reason

TASKS = ("classification", "regression", "anomaly")
VALUE_TASKS = ("regression", "anomaly")  # one number per row: a value, a score
# The TFLite runtimes a device profile may name ([runtime] tflite in firmware_configs/): what
# each is, for people. A conversion for a profile is validated on the runtime it names
# (converters/runtimes/), so a model that runtime cannot load is never shipped to it.
TFLITE_RUNTIMES = {
    "litert": "ai-edge-litert, the current LiteRT (numpy 2)",
    "tflite-runtime 2.14": "tflite-runtime 2.14 on numpy<2 (edgefleet[tflite]: older boards, "
    "Raspberry Pi OS, Jetson Nano); it loads older op versions only",
}
# the installed distribution behind each interpreter module, for runtime_version
_DISTRIBUTIONS = (
    ("ai_edge_litert", "ai-edge-litert", "litert"),
    ("tflite_runtime", "tflite-runtime", "tflite-runtime"),
)
_INSTALL_HINT = (
    "install edgefleet[litert] (or edgefleet[tflite] on numpy<2 systems such as Raspberry Pi OS)"
)


def interpreter_class() -> Any:
    """LiteRT's Interpreter, else tflite-runtime's; BundleRejected("runtime-missing") if neither."""
    try:
        from ai_edge_litert.interpreter import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
            Interpreter,
        )
    except ImportError:
        try:
            from tflite_runtime.interpreter import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
                Interpreter,
            )
        except ImportError as exc:
            raise BundleRejected(
                Reason.RUNTIME_MISSING,
                f"this model needs a TFLite runtime and neither ai-edge-litert nor "
                f"tflite-runtime is installed: {_INSTALL_HINT}",
            ) from exc
    return Interpreter


def runtime_version() -> str | None:
    """The TFLite runtime this process would open models with, as "litert 1.4.0" or
    "tflite-runtime 2.14.0" (the same preference as interpreter_class); None if neither."""
    # here, not at the top: importlib.metadata (with csv, email and zipfile's readers) is 1.6 MB
    # of the agent's resident memory, and the agent imports this module for its settings only
    from importlib import metadata

    for module, distribution, name in _DISTRIBUTIONS:
        try:
            importlib.import_module(f"{module}.interpreter")
        except ImportError:
            continue
        try:
            return f"{name} {metadata.version(distribution)}"
        except metadata.PackageNotFoundError:
            return name
    return None


def runtime_mismatch(profile: str, installed: str | None) -> str | None:
    """Why TFLite models converted for a profile naming `profile` (one of TFLITE_RUNTIMES)
    may not load on a device whose runtime is `installed` (runtime_version()); None if they
    will. A conversion is validated on the profile's runtime: LiteRT loads what any of them
    loads, tflite-runtime 2.14 or newer what 2.14 loads."""
    if installed is None:
        return f"the profile's TFLite runtime is {profile} and none is installed: {_INSTALL_HINT}"
    name, _, version = installed.partition(" ")
    if name == "litert":
        return None
    if profile == "litert":
        return (
            f"the profile's TFLite runtime is litert and this device has {installed}, which "
            "may not load the newer operator versions LiteRT conversions use: install "
            "edgefleet[litert], or give the device a profile naming tflite-runtime 2.14"
        )
    try:
        have = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        have = ()
    if have < (2, 14):
        return (
            f"the profile's TFLite runtime is {profile} and this device has {installed}, "
            "older than the models converted for it are checked on: install edgefleet[tflite]"
        )
    return None


def open_interpreter(model_bytes: bytes, threads: int = 1) -> Any:
    """An Interpreter with tensors allocated; BundleRejected("bad-model") if it cannot load."""
    if not model_bytes:
        raise BundleRejected(Reason.BAD_MODEL, "the TFLite model is empty (0 bytes)")
    interpreter_cls = interpreter_class()
    try:
        interp = interpreter_cls(model_content=bytes(model_bytes), num_threads=max(1, threads))
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise BundleRejected(
            Reason.BAD_MODEL, f"the TFLite runtime cannot load the model: {exc}"
        ) from exc
    return interp


def output_width(interp: Any) -> int:
    """k of the first output's shape [batch, k] (1 for a [batch] output)."""
    detail = interp.get_output_details()[0]
    shape = [int(d) for d in detail.get("shape_signature", detail["shape"])]
    return shape[1] if len(shape) == 2 else 1


class TfliteRuntime:
    """One TFLite model, ready to run; implements edge_agent.inference.runtime.Runtime.

    Attributes read by the hub's converters: `n_features` (None for an input of more than one
    dimension per item), `item_shape`, `n_outputs` (k), `input_dtype` (float32, int8 or uint8).
    """

    def __init__(
        self, model_bytes: bytes, task: str, classes: Sequence[Any], threads: int = 1
    ) -> None:
        if task not in TASKS:
            raise BundleRejected(Reason.BAD_CARD, f"task {task!r} is not one of {list(TASKS)}")
        interp = open_interpreter(model_bytes, threads)
        inputs = interp.get_input_details()
        outputs = interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BundleRejected(
                Reason.BAD_MODEL,
                f"expected a TFLite model with one input and one output, "
                f"got {len(inputs)} inputs and {len(outputs)} outputs",
            )
        inp, out = inputs[0], outputs[0]
        in_shape = [int(d) for d in inp.get("shape_signature", inp["shape"])]
        out_shape = [int(d) for d in out.get("shape_signature", out["shape"])]
        if len(in_shape) < 2 or min(in_shape[1:]) < 1:
            raise BundleRejected(
                Reason.BAD_MODEL,
                f"expected an input of shape [batch, n_features] or [batch, *item] of known "
                f"sizes, got {in_shape}",
            )
        if len(out_shape) not in (1, 2):
            raise BundleRejected(
                Reason.BAD_MODEL, f"expected an output of shape [batch, k], got {out_shape}"
            )
        self.item_shape = tuple(in_shape[1:])
        self.n_features = in_shape[1] if len(in_shape) == 2 else None
        self.n_outputs = output_width(interp)
        self.input_dtype = np.dtype(inp["dtype"])
        self.task = task
        self._classes = np.asarray(list(classes))
        self._sigmoid = False
        k = self.n_outputs
        if task in VALUE_TASKS and k != 1:
            raise BundleRejected(
                Reason.BAD_MODEL,
                f"a {task} model must give one value per row, this one gives {k}",
            )
        if task == "classification":
            if k == 1 and len(self._classes) == 2:
                self._sigmoid = True
            elif k < 2 or k != len(self._classes):
                raise BundleRejected(
                    Reason.BAD_MODEL,
                    f"the model gives {k} output(s) per row but the card lists "
                    f"{len(self._classes)} classes; expected one probability per class, "
                    f"or a single sigmoid output for two classes",
                )

        self._interp = interp
        self._in_index = int(inp["index"])
        self._out_index = int(out["index"])
        self._set = interp.set_tensor
        self._invoke = interp.invoke
        self._get = interp.get_tensor
        self._batch = int(interp.get_input_details()[0]["shape"][0])
        self._in_q = _quantization(inp)
        self._out_q = _quantization(out)
        if self._in_q is not None:
            info = np.iinfo(self.input_dtype)
            self._in_range = (float(info.min), float(info.max))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.labels_of(self._run(x))

    def scores(self, x: np.ndarray) -> np.ndarray | None:
        return None if self.task in VALUE_TASKS else self.probabilities_of(self._run(x))

    def predict_with_scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = self._run(x)
        scores = None if self.task in VALUE_TASKS else self.probabilities_of(out)
        return self.labels_of(out), scores

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """(n, *item_shape) items -> the model's (n, k) outputs, float32 (dequantized)."""
        return self._run(x)

    def labels_of(self, out: np.ndarray) -> np.ndarray:
        """(n, k) outputs -> (n,) labels (classification) or values (regression, anomaly)."""
        if self.task in VALUE_TASKS:
            return out.reshape(len(out))
        if self._sigmoid:
            return self._classes[(out[:, 0] >= 0.5).astype(np.intp)]
        return self._classes[out.argmax(axis=1)]

    def probabilities_of(self, out: np.ndarray) -> np.ndarray:
        """(n, k) classifier outputs -> (n, n_classes) probabilities."""
        if self._sigmoid:
            p = out[:, 0]
            return np.stack([1.0 - p, p], axis=1)
        return out

    def _run(self, x: np.ndarray) -> np.ndarray:
        """(n, *item_shape) items -> (n, k) float32 outputs."""
        if x.shape[1:] != self.item_shape:
            what = (
                f"rows of {self.n_features} features"
                if self.n_features is not None
                else f"items of shape {self.item_shape}"
            )
            raise BadDataError(f"expected {what}, got an array of shape {x.shape}")
        n = x.shape[0]
        if n == 0:
            return np.empty((0, self.n_outputs), dtype=np.float32)
        if n != self._batch:
            self._interp.resize_tensor_input(self._in_index, [n, *self.item_shape])
            self._interp.allocate_tensors()
            self._batch = n
        if self._in_q is None:
            feed = x if x.dtype == self.input_dtype else x.astype(self.input_dtype)
        else:
            scale, zero = self._in_q
            q = np.rint(np.asarray(x, dtype=np.float32) / scale)
            q += zero
            np.clip(q, *self._in_range, out=q)
            feed = q.astype(self.input_dtype)
        self._set(self._in_index, np.ascontiguousarray(feed))
        self._invoke()
        out = self._get(self._out_index)
        if self._out_q is not None:
            scale, zero = self._out_q
            out = (out.astype(np.float32) - zero) * np.float32(scale)
        elif out.dtype != np.float32:
            out = out.astype(np.float32)
        return out.reshape(n, self.n_outputs)


def _quantization(detail: dict[str, Any]) -> tuple[float, float] | None:
    """(scale, zero_point) of an integer tensor; None for a float tensor."""
    if not np.issubdtype(np.dtype(detail["dtype"]), np.integer):
        return None
    scale, zero = detail.get("quantization", (0.0, 0))
    if not scale:
        raise BundleRejected(
            Reason.BAD_MODEL,
            f"tensor {detail.get('name')!r} is {np.dtype(detail['dtype']).name} "
            "without quantization parameters; expected float32 or a quantized int8/uint8 tensor",
        )
    return float(scale), float(zero)
