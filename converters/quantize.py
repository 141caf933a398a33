"""Dynamic int8 quantization of an ONNX model (onnxruntime.quantization), bytes in, bytes out.

Weights of MatMul/Conv nodes become int8 (QInt8); activations are quantized on the fly at run
time, so no calibration data is needed. The model is pre-processed first
(`quant_pre_process`: ONNX shape inference and onnxruntime's basic graph optimizations), which
also tags it so onnxruntime does not log its "Please consider to run pre-processing" warning.

Symbolic shape inference is skipped: it needs sympy and only helps transformer-style models with
symbolic dimensions, not the small tabular graphs skl2onnx produces. A model without any
quantizable weight (trees, linear models exported as ai.onnx.ml ops) is returned unchanged.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

from edge_agent.errors import BadDataError

_WEIGHT_OPS = frozenset({"MatMul", "Conv"})
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


def quantize_dynamic_int8(model_bytes: bytes) -> bytes:
    """Serialized fp32 ONNX model -> serialized model with int8 weights (unchanged: see above)."""
    model = _load(model_bytes)
    if not has_quantizable_weights(model):
        return model_bytes
    with tempfile.TemporaryDirectory(prefix="edgefleet-quant-") as tmp:
        src, pre, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(model_bytes)
        try:
            quant_pre_process(src, pre, skip_symbolic_shape=True)
            quantize_dynamic(
                pre,
                out,
                weight_type=QuantType.QInt8,
                # skl2onnx's ai.onnx.ml ops (Scaler...) carry no inferred types downstream;
                # every float tensor in these graphs is float32.
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        except Exception as exc:
            raise QuantizationError(f"onnxruntime could not quantize the model: {exc}") from exc
        quantized = onnx.load(out)
    _prune_opsets(quantized)
    return quantized.SerializeToString()


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
