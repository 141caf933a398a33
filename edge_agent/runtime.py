"""Runtimes behind one interface: a model's bytes in, predictions out.

onnxruntime is the default; LiteRT (ai-edge-litert) and tflite-runtime are optional plugins
imported only when a card asks for them.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from edge_agent.errors import BundleRejected, ConfigError
from edge_agent.protocol.card import ModelCard


class Runtime(Protocol):
    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, n_features) float32 -> (n,) labels or values."""
        ...


class OnnxRuntime:
    def __init__(self, model_bytes: bytes, card: ModelCard, threads: int = 1) -> None:
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
            raise BundleRejected("bad-model", f"onnxruntime cannot load the model: {exc}") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise BundleRejected("bad-model", f"expected one model input, got {len(inputs)}")
        self._input = inputs[0].name
        self._output = self._session.get_outputs()[0].name
        self._run = self._session.run

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._run([self._output], {self._input: x})[0]).reshape(len(x))


def load_runtime(card: ModelCard, model_bytes: bytes, threads: int = 1) -> Runtime:
    if card.runtime == "onnxruntime":
        return OnnxRuntime(model_bytes, card, threads)
    raise ConfigError(
        f"model {card.model}: runtime {card.runtime!r} is not installed on this device; "
        "install edgefleet[litert] for TFLite models"
    )
