"""int8 quantization of an ONNX model with onnxruntime.quantization, bytes in, bytes out.

dynamic: weights of MatMul/Conv nodes become int8 (QInt8); activations are quantized on the fly
at run time, so no calibration data is needed.
static: QDQ format, weights int8 and activations uint8 (onnxruntime's recommended U8S8 on CPU),
with activation ranges calibrated (MinMax) on the sample rows.

Either way the weights take 7 of the 8 bits (`reduce_range`: values within -64..64). An x86
CPU without VNNI (AVX2 or AVX-512 alone: many gateways and mini PCs) multiplies uint8
activations by int8 weights with VPMADDUBSW, whose 16-bit sum of two products saturates when
both weights of a pair are large; onnxruntime then answers differently there than on a CPU with
VNNI or on ARM. With |w| <= 64 no pair can saturate (2 * 255 * 64 < 2**15), so a model checked
on the hub answers the same on every device. Measured on an AVX2 machine: a small autoencoder's
largest score error went from 5.5% of its largest score with 8-bit weights to 0.5%.

Either way the model is pre-processed first
(`quant_pre_process`: ONNX shape inference and onnxruntime's basic graph optimizations), which
also tags it so onnxruntime does not log its "Please consider to run pre-processing" warning.

Symbolic shape inference is skipped: it needs sympy and only helps transformer-style models with
symbolic dimensions, not the small tabular graphs skl2onnx produces. A model without any
quantizable weight (trees, linear models exported as ai.onnx.ml ops) is returned unchanged.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)

from converters.source import Artifact, growth_note
from edge_agent.errors import BadDataError, ConfigError

ONNX_MODES = ("none", "dynamic", "static")
CALIBRATION_ROWS = 512
CALIBRATION_BATCH = 64
RUNTIME = "onnxruntime"
MODEL_FILE = "model.onnx"
UNCHANGED = (
    "no MatMul/Gemm/Conv weights to quantize (linear models and trees export as ai.onnx.ml "
    "operators): shipped as float32"
)

_WEIGHT_OPS = frozenset({"MatMul", "Gemm", "Conv"})
_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})


class QuantizationError(BadDataError):
    """A model onnxruntime could not quantize."""


def has_quantizable_weights(model: onnx.ModelProto) -> bool:
    """True if some MatMul/Conv node takes a constant weight (what dynamic quantization touches)."""
    weights = {init.name for init in model.graph.initializer}
    return any(
        node.domain in _DEFAULT_DOMAINS
        and node.op_type in _WEIGHT_OPS
        and any(name in weights for name in node.input)
        for node in model.graph.node
    )


def quantize_onnx(fp32: bytes, mode: str, x: np.ndarray) -> Artifact:
    """The deployable artifact for a float32 ONNX model: `mode` is one of ONNX_MODES; `x` are
    the sample rows static quantization calibrates on."""
    if mode not in ONNX_MODES:
        raise ConfigError(
            f"quantize: expected one of {ONNX_MODES} for an ONNX model, got {mode!r}"
            + (" (float16 is for Keras models converted to TFLite)" if mode == "float16" else "")
        )
    if mode == "none":
        return Artifact(RUNTIME, MODEL_FILE, fp32, fp32, mode)
    if not has_quantizable_weights(_load(fp32)):
        return Artifact(RUNTIME, MODEL_FILE, fp32, fp32, mode, UNCHANGED)
    model = quantize_dynamic_int8(fp32) if mode == "dynamic" else quantize_static_int8(fp32, x)
    return Artifact(
        RUNTIME, MODEL_FILE, fp32, model, mode, growth_note(mode, len(fp32), len(model))
    )


def quantize_dynamic_int8(model_bytes: bytes) -> bytes:
    """Serialized fp32 ONNX model -> serialized model with int8 weights (unchanged: see above)."""
    if not has_quantizable_weights(_load(model_bytes)):
        return model_bytes
    # skl2onnx's ai.onnx.ml ops (Scaler...) carry no inferred types downstream; every float
    # tensor in these graphs is float32.
    return _quantize(
        model_bytes,
        lambda pre, out: quantize_dynamic(
            pre,
            out,
            weight_type=QuantType.QInt8,
            reduce_range=True,  # 7-bit weights: no saturation on x86 without VNNI (see above)
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        ),
    )


def quantize_static_int8(model_bytes: bytes, x: np.ndarray) -> bytes:
    """QDQ int8 with activation ranges calibrated on the complete rows of `x`."""
    complete = np.all(np.isfinite(x.reshape(len(x), -1)), axis=1)  # rows, or items
    rows = np.ascontiguousarray(x[complete][:CALIBRATION_ROWS], np.float32)
    if len(rows) == 0:
        raise QuantizationError(
            "static quantization needs calibration rows without NaN; the sample has none"
        )
    if not has_quantizable_weights(_load(model_bytes)):
        return model_bytes
    input_name = _load(model_bytes).graph.input[0].name
    return _quantize(
        model_bytes,
        lambda pre, out: quantize_static(
            pre,
            out,
            _Calibration(input_name, rows),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            reduce_range=True,  # 7-bit weights: no saturation on x86 without VNNI (see above)
            calibrate_method=CalibrationMethod.MinMax,
            # only what carries weights: the size win is there, and the probability head
            # (Softmax feeding ai.onnx.ml ops) stays float, which calibration cannot range
            op_types_to_quantize=sorted(_WEIGHT_OPS),
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        ),
    )


class _Calibration(CalibrationDataReader):
    """The sample rows, in batches, as onnxruntime's calibrator reads them."""

    def __init__(self, input_name: str, rows: np.ndarray) -> None:
        self._batches: Iterator[np.ndarray] = (
            rows[i : i + CALIBRATION_BATCH] for i in range(0, len(rows), CALIBRATION_BATCH)
        )
        self._name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._name: batch}


def _quantize(model_bytes: bytes, run: Callable[[Path, Path], None]) -> bytes:
    """Pre-process, then `run(pre, out)`; the result with unused opset imports dropped."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-quant-") as tmp:
        src, pre, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(model_bytes)
        try:
            with _quiet():
                quant_pre_process(src, pre, skip_symbolic_shape=True)
                run(pre, out)
        except Exception as exc:
            raise QuantizationError(f"onnxruntime could not quantize the model: {exc}") from exc
        quantized = onnx.load(out)
    _prune_opsets(quantized)
    return quantized.SerializeToString()


@contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization warns through the root logger about tensors it skips on
    purpose (the ai.onnx.ml tail), and its calibration sessions log pruned initializers; a
    user converting a model should see our report, not that."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)
        logging.disable(previous)


def _load(model_bytes: bytes) -> onnx.ModelProto:
    try:
        return onnx.load_from_string(model_bytes)
    except Exception as exc:
        raise QuantizationError(
            f"expected a serialized ONNX model, got undecodable bytes: {exc}"
        ) from exc


def _prune_opsets(model: onnx.ModelProto) -> None:
    """Drop opset imports no node uses (the optimizer lists every domain onnxruntime knows)."""
    used = _node_domains(model.graph) | _DEFAULT_DOMAINS
    keep = [op for op in model.opset_import if op.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _node_domains(graph: onnx.GraphProto) -> set[str]:
    domains = set()
    for node in graph.node:
        domains.add(node.domain)
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs:
                domains |= _node_domains(sub)
    return domains
