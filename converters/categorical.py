"""A scikit-learn pipeline that encodes string columns itself, deployed to take category codes.

The device reads a category's text from a sensor line and hands the model its index in the
card's `input.categories` (edge_agent.protocol.input_spec): one float32 input "X" [batch,
features], as every row model has. The pipeline was trained on texts (a ColumnTransformer with
a OneHotEncoder, over a pandas DataFrame with named columns or an array with column indices), so:

- `predict` (for parity, the threshold, the reference predictions) turns codes back into the
  texts and gives the pipeline the table it was trained on: a DataFrame in the order of its
  `feature_names_in_` (pandas needed), else an object array in the card's column order;
- `convert` has skl2onnx convert the pipeline with one input per column (FloatTensorType
  [None, 1] for a number, StringTensorType [None, 1] for a category: skl2onnx's way for
  ColumnTransformer pipelines), then puts a small graph in front that takes "X", splits its
  columns, passes the numbers through and maps each category code back to its text (Cast to
  int64, then an ai.onnx.ml LabelEncoder); the unknown code, len(categories), and anything
  else that is not a code (NaN, a missing value), becomes UNKNOWN_TEXT, which no pipeline was
  trained on. A OneHotEncoder(handle_unknown="ignore") reads it as all zeros, as
  scikit-learn reads a text it did not see; one that raises on unknown texts gives a graph
  that fails on them, and the conversion report says so.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from skl2onnx.common.data_types import FloatTensorType, StringTensorType

from converters.encoder_categories import encoder_categories, widen
from converters.onnx_contract import INPUT_NAME, rename
from converters.quantize import quantize_onnx
from converters.sklearn_onnx import SklearnSource, to_onnx_model
from converters.source import Artifact, SourceModel
from edge_agent.errors import BadDataError
from edge_agent.protocol.input_spec import InputSpec, category_text

UNKNOWN_TEXT = ""  # what the graph feeds the pipeline for an unknown code: never a category
ML_DOMAIN = "ai.onnx.ml"
LABEL_ENCODER_OPSET = 2  # the first whose LabelEncoder maps int64 keys to strings
UNKNOWN_NOTE = (
    "a text not among the card's categories makes the model fail (its encoder raises on "
    'unknown categories, as scikit-learn does): the device rejects such lines as "inference-'
    'error"; OneHotEncoder(handle_unknown="ignore") reads them as no category instead'
)


class TextsRefused(BadDataError):
    """A model that takes numbers only, given a sample with text columns."""


def categorical_source(source: SourceModel, spec: InputSpec) -> CategoricalRows:
    """`source` as a model of category codes, for a row spec with categories; BadDataError
    for a model that cannot take texts (only scikit-learn pipelines are given them). Its
    `spec` lists, after the sample's categories, those its encoders know that the sample
    lacks (converters.encoder_categories)."""
    if not isinstance(source, SklearnSource):
        raise BadDataError(
            f"{source.description}: the sample has text columns "
            f"({', '.join(spec.categories)}), which only a scikit-learn pipeline that encodes "
            "them (a ColumnTransformer with a OneHotEncoder) can take; encode them as numbers "
            "before training, or train such a pipeline"
        )
    return CategoricalRows(source, spec)


class CategoricalRows:
    """`inner`, trained on texts, as a model of rows whose categories are codes: the codes of
    `spec` widened by the categories the fitted encoders know (the sample's keep theirs)."""

    def __init__(self, inner: SklearnSource, spec: InputSpec) -> None:
        self.inner = inner
        self.columns = _columns(inner, spec)
        self.spec = widen(spec, encoder_categories(inner.estimator, self.columns))
        self.framework = inner.framework
        self.description = inner.description
        self.task = inner.task
        self.n_features: int | None = len(spec.features)
        self.classes: list[Any] = inner.classes
        self.feature_names: list[str] | None = list(spec.features)
        self.anomaly_threshold = inner.anomaly_threshold

    def table(self, x: np.ndarray) -> Any:
        """Rows of codes -> what the pipeline was trained on (a DataFrame, or an object array)."""
        return decoded_table(x, self.spec, self.columns, self.inner.feature_names is not None)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._run(lambda: self.inner.predict(self.table(x)))

    def scores(self, x: np.ndarray) -> np.ndarray | None:
        return self._run(lambda: self.inner.scores(self.table(x)))

    def _run(self, call: Any) -> Any:
        try:
            return call()
        except ValueError as exc:
            if "could not convert string to float" in str(exc):  # numpy's, through sklearn
                raise TextsRefused(
                    f"{self.description} takes numbers only; the columns "
                    f"{list(self.spec.categories)} hold texts (a column of texts is "
                    "categorical: train a pipeline that encodes it, e.g. a ColumnTransformer "
                    "with a OneHotEncoder)"
                ) from exc
            raise BadDataError(
                f"{self.description} cannot take the sample's rows with their texts: {exc}"
            ) from exc

    def convert(self, x: np.ndarray, quantize: str) -> Artifact:
        """skl2onnx with one input per column, the decoding graph in front, then quantized."""
        self.predict(x[:1])  # TextsRefused for a model of numbers, before skl2onnx says less
        types = [
            (
                name,
                StringTensorType([None, 1])
                if name in self.spec.categories
                else FloatTensorType([None, 1]),
            )
            for name in self.columns
        ]
        model = to_onnx_model(self.inner.estimator, self.table(x[:1]), types)
        fp32 = decode_categories(model, self.spec, self.columns).SerializeToString()
        artifact = quantize_onnx(fp32, quantize, x)
        if not takes_unknown(fp32, self.spec):
            note = "; ".join(n for n in (artifact.note, UNKNOWN_NOTE) if n)
            artifact = dataclasses.replace(artifact, note=note)
        return artifact


def _columns(inner: SklearnSource, spec: InputSpec) -> list[str]:
    """The pipeline's columns in the order it was trained on: its `feature_names_in_` (a
    DataFrame; each must be one of the card's features), else the card's features."""
    trained = inner.feature_names
    if trained is None:
        return list(spec.features)
    if sorted(trained) != sorted(spec.features):
        missing = [n for n in trained if n not in spec.features]
        extra = [n for n in spec.features if n not in trained]
        raise BadDataError(
            f"{inner.description} was trained on the columns {trained}; the sample's columns "
            f"are {list(spec.features)} (missing {missing}, not trained on {extra})"
        )
    return list(trained)


def decoded_table(x: np.ndarray, spec: InputSpec, columns: list[str], frame: bool) -> Any:
    """(n, features) rows in the card's order, categories as codes -> the pipeline's table,
    its columns in the order `columns`: a pandas DataFrame when `frame` (the pipeline was fit
    on one), else an object array; numbers as float64, texts as str (None where missing)."""
    at = {name: j for j, name in enumerate(spec.features)}
    values: dict[str, np.ndarray] = {}
    for name in columns:
        col = np.asarray(x[:, at[name]], dtype=np.float64)
        cats = spec.categories.get(name)
        values[name] = col if cats is None else category_texts(col, cats)
    if frame:
        try:
            import pandas as pd
        except ModuleNotFoundError as exc:
            raise BadDataError(
                "the pipeline was trained on a pandas DataFrame with named columns: install "
                "pandas to convert it"
            ) from exc
        return pd.DataFrame(values, columns=columns)
    table = np.empty((len(x), len(columns)), dtype=object)
    for j, name in enumerate(columns):
        table[:, j] = values[name]
    return table


def category_texts(codes: np.ndarray, categories: tuple[str, ...]) -> np.ndarray:
    """Codes -> texts (an object array); anything but a category's code -> None."""
    return np.array([category_text(categories, float(c)) for c in codes], dtype=object)


def decode_categories(
    model: onnx.ModelProto, spec: InputSpec, columns: list[str]
) -> onnx.ModelProto:
    """`model`, whose inputs are one [None, 1] tensor per column (named `columns`), fed from
    one float input "X" [None, len(spec.features)] in the card's order: numbers as they are,
    category codes mapped to their texts (UNKNOWN_TEXT for any other value)."""
    graph = model.graph
    given = {i.name for i in graph.input}
    if not given <= set(columns):
        raise BadDataError(
            f"the converted graph's inputs {sorted(given)} are not the columns {columns}"
        )
    inner = {}
    for j, name in enumerate(columns):
        inner[name] = f"decode_column_{j}"
        if name in given:
            rename(graph, name, inner[name])
    del graph.input[:]  # every one of them is a column, fed from "X" now
    width = len(spec.features)
    graph.input.append(helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, width]))
    at = {name: j for j, name in enumerate(spec.features)}
    split = [inner[name] for name in spec.features]  # a number goes to its column as it is
    nodes = []
    for name, cats in spec.categories.items():
        j = at[name]
        split[j] = f"decode_code_{j}"
        nodes += [
            helper.make_node("Cast", [split[j]], [f"decode_int_{j}"], to=TensorProto.INT64),
            helper.make_node(
                "LabelEncoder",
                [f"decode_int_{j}"],
                [inner[name]],
                name=f"decode_category_{j}",
                domain=ML_DOMAIN,
                keys_int64s=list(range(len(cats))),
                values_strings=list(cats),
                default_string=UNKNOWN_TEXT,
            ),
        ]
    sizes = "decode_split_sizes"
    graph.initializer.append(numpy_helper.from_array(np.ones(width, np.int64), sizes))
    nodes.insert(0, helper.make_node("Split", [INPUT_NAME, sizes], split, axis=1))
    for node in reversed(nodes):
        graph.node.insert(0, node)
    ml = [op for op in model.opset_import if op.domain == ML_DOMAIN]
    if not ml:
        model.opset_import.append(helper.make_opsetid(ML_DOMAIN, LABEL_ENCODER_OPSET))
    elif ml[0].version < LABEL_ENCODER_OPSET:  # v2 only changed LabelEncoder, adding int keys
        ml[0].version = LABEL_ENCODER_OPSET
    onnx.checker.check_model(model)
    return model


def takes_unknown(model_bytes: bytes, spec: InputSpec) -> bool:
    """Whether the graph runs on a row whose every category is the unknown code."""
    row = np.zeros((1, len(spec.features)), np.float32)
    for j, name in enumerate(spec.features):
        if name in spec.categories:
            row[0, j] = len(spec.categories[name])
    try:
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        session.run(None, {INPUT_NAME: row})
    except Exception:  # onnxruntime raises its own exception types, not exported stably
        return False
    return True
