"""Trained model in, deployable bundle out: pure transforms, no network.

    build_bundle(estimator, x, y, name=..., version=..., out=...)  # the whole chain

or step by step: to_onnx_model -> quantize_dynamic_int8 -> validation_report / check_parity ->
build_card -> write_bundle. Every error is a BadDataError (ConversionError, ParityError, ...).
Importing this package loads skl2onnx (about 2 s); callers that only sometimes convert should
import it lazily.
"""

from __future__ import annotations

from converters.bundle import write_bundle
from converters.card import build_card
from converters.pipeline import BuildReport, build_bundle
from converters.quantize import QuantizationError, quantize_dynamic_int8
from converters.sklearn_onnx import ConversionError, to_onnx_model
from converters.validate import ParityError, check_parity, validation_report

__all__ = [
    "BuildReport",
    "ConversionError",
    "ParityError",
    "QuantizationError",
    "build_bundle",
    "build_card",
    "check_parity",
    "quantize_dynamic_int8",
    "to_onnx_model",
    "validation_report",
    "write_bundle",
]
