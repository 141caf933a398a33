"""scikit-learn estimator -> ONNX model (skl2onnx), with the tensor names the agent expects.

The model takes one float32 input "X" of shape [None, n_features]. Classifiers give two plain
tensors, "label" [None] and "probabilities" [None, n_classes] (no ZipMap, so no list of dicts);
regressors give "variable" [None, 1]; anomaly models give "score" [None, 1], higher = more
anomalous (converters.anomaly). An anomaly model is an outlier detector (`is_outlier_detector`:
IsolationForest, OneClassSVM, LocalOutlierFactor(novelty=True)...) or an autoencoder: an
MLPRegressor that gives back as many values as it takes in, trained on (x, x) (in a Pipeline, on
what the steps before it make of x), scored by its reconstruction error.
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
from sklearn.base import is_classifier, is_outlier_detector, is_regressor
from sklearn.exceptions import NotFittedError
from sklearn.neural_network import MLPRegressor
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from converters.anomaly import append_detector_score, append_reconstruction_error
from converters.onnx_contract import INPUT_NAME, expected_outputs, rename_outputs
from converters.quantize import quantize_onnx
from converters.source import Artifact
from edge_agent.errors import BadDataError

TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
SUPPORTED_URL = "https://onnx.ai/sklearn-onnx/supported.html"

DETECTOR, AUTOENCODER = "outlier detector", "autoencoder"

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
    """ "classification", "regression" or "anomaly"; ConversionError for anything else."""
    if anomaly_kind(estimator) is not None:
        return "anomaly"
    if is_classifier(estimator):
        return "classification"
    if is_regressor(estimator):
        return "regression"
    raise ConversionError(
        f"cannot convert {estimator_name(estimator)}: expected a classifier, a regressor, an "
        f"outlier detector (IsolationForest, OneClassSVM, LocalOutlierFactor(novelty=True)) or "
        f"an autoencoder (an MLPRegressor trained on (x, x)), or a Pipeline ending in one; "
        f"got none of these. skl2onnx's converters are listed at {SUPPORTED_URL}"
    )


def anomaly_kind(estimator: Any) -> str | None:
    """DETECTOR, AUTOENCODER (an MLPRegressor with as many outputs as inputs, more than one),
    or None for a model that is not an anomaly model."""
    final = final_estimator(estimator)
    if is_outlier_detector(final):
        return DETECTOR
    outputs = getattr(final, "n_outputs_", None)
    if isinstance(final, MLPRegressor) and outputs == final.n_features_in_ and outputs > 1:
        return AUTOENCODER
    return None


def anomaly_scores(estimator: Any, x: np.ndarray) -> np.ndarray:
    """An anomaly model's scores, higher = more anomalous: an outlier detector's
    -score_samples, an autoencoder's mean squared reconstruction error."""
    if anomaly_kind(estimator) == DETECTOR:
        return -np.asarray(estimator.score_samples(x), dtype=np.float64)
    given, reconstruction = _reconstruction(estimator, x)
    return np.mean((reconstruction - given) ** 2, axis=1)


def _reconstruction(estimator: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(what an autoencoder was given, what it gave back) for rows `x`."""
    given = np.asarray(x, dtype=np.float64)
    steps = getattr(estimator, "steps", None)
    if isinstance(steps, list) and steps:
        given = np.asarray(estimator[:-1].transform(x), dtype=np.float64)
    final = final_estimator(estimator)
    return given, np.asarray(final.predict(given), dtype=np.float64).reshape(given.shape)


def _check_anomaly_model(estimator: Any, kind: str, x: np.ndarray) -> None:
    """ConversionError for an outlier detector that cannot score new rows, or an autoencoder
    that does not reconstruct what it is given (R^2 of its reconstruction at most 0 on `x`)."""
    final = final_estimator(estimator)
    name = estimator_name(estimator)
    if kind == DETECTOR:
        if not hasattr(final, "score_samples") or not hasattr(final, "offset_"):
            raise ConversionError(
                f"cannot convert {name}: an outlier detector that scores new rows "
                f"(score_samples and offset_) was expected; {type(final).__name__} has "
                f"none{' (fit it with novelty=True)' if hasattr(final, 'novelty') else ''}"
            )
        return
    given, reconstruction = _reconstruction(estimator, x)
    spread = float(np.sum((given - given.mean(axis=0)) ** 2))
    r2 = 1 - float(np.sum((reconstruction - given) ** 2)) / spread if spread > 0 else 0.0
    if not r2 > 0:
        raise ConversionError(
            f"{name} (as many outputs as inputs, taken for an autoencoder) does not reconstruct "
            f"what it is given: R^2 {r2:.3f} on the sample; expected an MLPRegressor trained on "
            f"(x, x) (in a Pipeline, on what the steps before it make of x)"
        )


def own_anomaly_threshold(estimator: Any) -> float | None:
    """An outlier detector's threshold on -score_samples: -offset_ (where its
    decision_function crosses 0); None for an autoencoder."""
    if anomaly_kind(estimator) != DETECTOR:
        return None
    return -float(np.ravel(final_estimator(estimator).offset_)[0])


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
        self.anomaly_threshold = own_anomaly_threshold(estimator)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.task == "anomaly":
            return anomaly_scores(self.estimator, x)
        return np.asarray(self.estimator.predict(x))

    def scores(self, x: np.ndarray) -> np.ndarray | None:
        if self.task != "classification" or not hasattr(self.estimator, "predict_proba"):
            return None
        return np.asarray(self.estimator.predict_proba(x))

    def convert(self, x: np.ndarray, quantize: str) -> Artifact:
        """skl2onnx, then onnxruntime quantization calibrated on `x` when static."""
        fp32 = to_onnx_model(self.estimator, x).SerializeToString()
        return quantize_onnx(fp32, quantize, x)


def to_onnx_model(
    estimator: Any, sample_x: Any, initial_types: list[tuple[str, Any]] | None = None
) -> onnx.ModelProto:
    """Convert a fitted estimator; `sample_x` (rows, features) fixes the feature count of its
    one input "X", unless `initial_types` names the inputs (converters.categorical: one per
    column, `sample_x` then the table the estimator takes)."""
    if sample_x.ndim != 2:
        raise BadDataError(
            f"sample_x: expected a 2-D array (rows, features), got shape {sample_x.shape}"
        )
    check_fitted(estimator)
    task = task_of(estimator)
    kind = anomaly_kind(estimator)
    if kind is not None:
        _check_anomaly_model(estimator, kind, sample_x)
    try:
        with warnings.catch_warnings():
            # skl2onnx's HistGradientBoosting trees: see the protobuf pin in setup.cfg
            warnings.filterwarnings("ignore", "Field onnx.AttributeProto.ints", DeprecationWarning)
            model, topology = convert_sklearn(
                estimator,
                initial_types=initial_types
                or [(INPUT_NAME, FloatTensorType([None, int(sample_x.shape[1])]))],
                target_opset=TARGET_OPSET,
                options=_options(estimator, task),
                intermediate=True,  # the topology: where an autoencoder's input is
            )
    except (MissingShapeCalculator, MissingConverter) as exc:
        raise ConversionError(_unsupported_message(estimator, exc)) from None
    except Exception as exc:
        raise ConversionError(
            f"skl2onnx could not convert {estimator_name(estimator)}: {exc} "
            f"(supported estimators and their limits: {SUPPORTED_URL})"
        ) from exc
    if kind is not None:
        _score_output(model, topology, estimator, kind)
    if task == "classification" and not hasattr(final_estimator(estimator), "predict_proba"):
        del model.graph.output[1:]  # decision scores (LinearSVC...) are not probabilities
    # a step before the final estimator may have taken the output's name ("variable1")
    rename_outputs(model, task, estimator_name(estimator))
    _check_outputs(model, task, estimator)
    return model


def _score_output(model: onnx.ModelProto, topology: Any, estimator: Any, kind: str) -> None:
    """An anomaly model's graph brought to its one output, "score" (converters.anomaly)."""
    outputs = [o.name for o in model.graph.output]
    if kind == DETECTOR:
        if len(outputs) != 2:
            raise ConversionError(
                f"{estimator_name(estimator)}: expected skl2onnx's outputs label and scores "
                f"for an outlier detector, got {outputs}"
            )
        offset = -own_anomaly_threshold(estimator)  # type: ignore[operator]
        append_detector_score(model, outputs[1], offset)
        return
    final = final_estimator(estimator)
    fed = [
        op.inputs[0].onnx_name
        for op in topology.unordered_operator_iterator()
        if op.raw_operator is final
    ]
    tensors = {i.name for i in model.graph.input} | {o for n in model.graph.node for o in n.output}
    if len(fed) != 1 or fed[0] not in tensors or len(outputs) != 1:
        raise ConversionError(
            f"{estimator_name(estimator)}: cannot find the autoencoder's input in the ONNX "
            f"graph skl2onnx produced (outputs {outputs})"
        )
    append_reconstruction_error(model, outputs[0], fed[0], int(final.n_outputs_))


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
