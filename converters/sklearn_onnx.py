"""scikit-learn estimator -> ONNX model (skl2onnx), with the tensor names the agent expects.

The model takes one float32 input "X" of shape [None, n_features]. Classifiers give two plain
tensors, "label" [None] and "probabilities" [None, n_classes] (no ZipMap, so no list of dicts);
regressors give "variable" [None, 1].
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import onnx
from skl2onnx import convert_sklearn
from skl2onnx._supported_operators import sklearn_operator_name_map
from skl2onnx.common._registration import get_converter
from skl2onnx.common.data_types import FloatTensorType
from skl2onnx.common.exceptions import MissingConverter, MissingShapeCalculator
from sklearn.base import is_classifier, is_regressor
from sklearn.exceptions import NotFittedError
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from converters.onnx_contract import INPUT_NAME, expected_outputs, rename_outputs
from converters.quantize import quantize_onnx
from converters.source import Artifact
from edge_agent.errors import BadDataError

TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
SUPPORTED_URL = "https://onnx.ai/sklearn-onnx/supported.html"

_CLASS_IN_MESSAGE = re.compile(r"<class '([\w.]+)'>")


class ConversionError(BadDataError):
    """An estimator that cannot become an ONNX model (unsupported, unfitted, unknown task)."""


def estimator_name(estimator: Any) -> str:
    """A readable name: the class, or the chain of step classes of a Pipeline."""
    steps = getattr(estimator, "steps", None)
    if isinstance(steps, list) and steps:
        inner = ", ".join(estimator_name(step) for _, step in steps)
        return f"{type(estimator).__name__}({inner})"
    return type(estimator).__name__


def task_of(estimator: Any) -> str:
    """ "classification" or "regression"; ConversionError for anything else."""
    if is_classifier(estimator):
        return "classification"
    if is_regressor(estimator):
        return "regression"
    raise ConversionError(
        f"cannot convert {estimator_name(estimator)}: expected a classifier or regressor "
        f"(or a Pipeline ending in one), got neither. Supported estimators are listed at "
        f"{SUPPORTED_URL}"
    )


def final_estimator(estimator: Any) -> Any:
    """The last step of a (possibly nested) Pipeline; the estimator itself otherwise."""
    while isinstance(getattr(estimator, "steps", None), list) and estimator.steps:
        estimator = estimator.steps[-1][1]
    return estimator


def check_fitted(estimator: Any) -> None:
    try:
        check_is_fitted(estimator)
    except NotFittedError as exc:
        raise ConversionError(
            f"{estimator_name(estimator)} is not fitted: train it (call fit) before converting"
        ) from exc
    except TypeError as exc:
        raise ConversionError(
            f"expected a scikit-learn estimator, got {type(estimator).__name__}"
        ) from exc


class SklearnSource:
    """A fitted scikit-learn estimator (or Pipeline) as the source of a conversion."""

    framework = "scikit-learn"

    def __init__(self, estimator: Any) -> None:
        check_fitted(estimator)
        self.estimator = estimator
        self.task = task_of(estimator)
        self.description = estimator_name(estimator)
        n = getattr(estimator, "n_features_in_", None)
        self.n_features = int(n) if n is not None else None
        classes = getattr(estimator, "classes_", None) if self.task == "classification" else None
        self.classes: list[Any] = list(classes) if classes is not None else []
        names = getattr(estimator, "feature_names_in_", None)
        self.feature_names = [str(n) for n in names] if names is not None else None

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.estimator.predict(x))

    def scores(self, x: np.ndarray) -> np.ndarray | None:
        if self.task != "classification" or not hasattr(self.estimator, "predict_proba"):
            return None
        return np.asarray(self.estimator.predict_proba(x))

    def convert(self, x: np.ndarray, quantize: str) -> Artifact:
        """skl2onnx, then onnxruntime quantization calibrated on `x` when static."""
        fp32 = to_onnx_model(self.estimator, x).SerializeToString()
        return quantize_onnx(fp32, quantize, x)


def to_onnx_model(estimator: Any, sample_x: np.ndarray) -> onnx.ModelProto:
    """Convert a fitted estimator; `sample_x` (rows, features) fixes the feature count."""
    if sample_x.ndim != 2:
        raise BadDataError(
            f"sample_x: expected a 2-D array (rows, features), got shape {sample_x.shape}"
        )
    check_fitted(estimator)
    task = task_of(estimator)
    try:
        with warnings.catch_warnings():
            # skl2onnx's HistGradientBoosting trees: see the protobuf pin in setup.cfg
            warnings.filterwarnings("ignore", "Field onnx.AttributeProto.ints", DeprecationWarning)
            model = convert_sklearn(
                estimator,
                initial_types=[(INPUT_NAME, FloatTensorType([None, int(sample_x.shape[1])]))],
                target_opset=TARGET_OPSET,
                options=_options(estimator, task),
            )
    except (MissingShapeCalculator, MissingConverter) as exc:
        raise ConversionError(_unsupported_message(estimator, exc)) from None
    except Exception as exc:
        raise ConversionError(
            f"skl2onnx could not convert {estimator_name(estimator)}: {exc} "
            f"(supported estimators and their limits: {SUPPORTED_URL})"
        ) from exc
    if task == "classification" and not hasattr(final_estimator(estimator), "predict_proba"):
        del model.graph.output[1:]  # decision scores (LinearSVC...) are not probabilities
    # a step before the final estimator may have taken the output's name ("variable1")
    rename_outputs(model, task, estimator_name(estimator))
    _check_outputs(model, task, estimator)
    return model


def _options(estimator: Any, task: str) -> dict[Any, dict[str, Any]]:
    """StandardScaler as plain Sub/Div (typed, so static quantization can range what follows),
    and classifier probabilities as a plain tensor where the converter has a ZipMap to drop."""
    options: dict[Any, dict[str, Any]] = {StandardScaler: {"div": "div"}}
    final = final_estimator(estimator)
    if task == "classification" and "zipmap" in _allowed_options(final):
        options[id(final)] = {"zipmap": False}
    return options


def _allowed_options(estimator: Any) -> dict[str, Any]:
    try:
        alias = sklearn_operator_name_map[type(estimator)]
        return dict(get_converter(alias).get_allowed_options() or {})
    except (KeyError, ValueError):
        return {}  # no converter: convert_sklearn says so, naming the estimator


def _unsupported_message(estimator: Any, exc: Exception) -> str:
    found = _CLASS_IN_MESSAGE.search(str(exc))
    culprit = found.group(1).rsplit(".", 1)[-1] if found else type(estimator).__name__
    where = "" if culprit == type(estimator).__name__ else f" (inside {estimator_name(estimator)})"
    return (
        f"cannot convert {culprit}{where} to ONNX: skl2onnx has no converter for it. "
        f"Supported estimators are listed at {SUPPORTED_URL} "
        f"(or call skl2onnx.supported_converters())"
    )


def _check_outputs(model: onnx.ModelProto, task: str, estimator: Any) -> None:
    got = [o.name for o in model.graph.output]
    want = expected_outputs(task)[: len(got)]
    if not got or got != want:
        raise ConversionError(
            f"{estimator_name(estimator)}: expected ONNX outputs {want}, skl2onnx produced {got}"
        )
