"""Reading what an engineer hands the converter: a trained model and a data sample.

Errors say which file, where in it, what was expected and what was found.
"""

from __future__ import annotations

import csv
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from converters.onnx_input import load_onnx
from converters.sklearn_onnx import SklearnSource
from converters.source import SourceModel
from edge_agent.errors import BadDataError, ConfigError

SKLEARN_SUFFIXES = (".joblib", ".pkl", ".pickle")
KERAS_SUFFIXES = (".keras", ".h5")


def load_model(path: Path, task: str | None = None) -> SourceModel:
    """The model in `path`, by its suffix: a scikit-learn estimator (joblib or pickle), a Keras
    model, or an ONNX or TFLite file. `task` overrides what a file-format model's outputs say."""
    suffix = path.suffix.lower()
    if suffix in SKLEARN_SUFFIXES:
        return SklearnSource(load_estimator(path))
    if suffix == ".onnx":
        return load_onnx(path, task)
    if suffix in KERAS_SUFFIXES or suffix == ".tflite":
        from converters import keras_tflite  # imports tensorflow only when a model needs it

        if suffix == ".tflite":
            return keras_tflite.load_tflite(path, task, None)
        return keras_tflite.load_keras(path, task=task)
    expected = ", ".join([*SKLEARN_SUFFIXES, *KERAS_SUFFIXES, ".onnx", ".tflite"])
    raise ConfigError(f"{path}: expected a model file ending in one of {expected}, got {suffix!r}")


def load_estimator(path: Path) -> Any:
    """A pickled or joblib-dumped scikit-learn estimator (only load files you trust)."""
    import joblib

    if not path.is_file():
        raise ConfigError(f"{path}: no such model file")
    try:
        model = joblib.load(path)
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError) as exc:
        raise BadDataError(
            f"{path}: expected a pickled or joblib scikit-learn estimator, could not load it "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    except (ModuleNotFoundError, AttributeError) as exc:
        raise BadDataError(
            f"{path}: the pickle needs code that is not installed here ({exc})"
        ) from exc
    if not hasattr(model, "predict"):
        raise BadDataError(
            f"{path}: expected a scikit-learn estimator with predict(), got {type(model).__name__}"
        )
    return model


def load_table(
    path: Path, label: str | None, labels_path: Path | None = None
) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """(x, y or None, feature names or None) from a .csv with a header or a .npy array."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such data file")
    if path.suffix == ".npy":
        x = _load_npy(path)
        y = _load_npy(labels_path) if labels_path else None
        if label:
            raise ConfigError(f"{path}: --label names a CSV column; for .npy use --labels FILE")
        return x, y, None
    if path.suffix == ".csv":
        if labels_path:
            raise ConfigError(
                f"{path}: --labels is for .npy data; name the CSV column with --label"
            )
        return _load_csv(path, label)
    raise ConfigError(f"{path}: expected a .csv file with a header or a .npy file")


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (ValueError, OSError, EOFError) as exc:
        raise BadDataError(f"{path}: expected a numpy .npy array ({exc})") from exc


def _load_csv(path: Path, label: str | None) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as exc:
        raise BadDataError(f"{path}: expected UTF-8 text, got undecodable bytes") from exc
    if len(rows) < 2:
        raise BadDataError(f"{path}: expected a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if label is not None and label not in header:
        raise ConfigError(f"{path}: --label {label!r} is not a column; columns are {header}")
    feature_cols = [i for i, h in enumerate(header) if h != label]
    x = np.empty((len(rows) - 1, len(feature_cols)), dtype=np.float32)
    y: list[str] = []
    for r, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise BadDataError(
                f"{path}:{r}: expected {len(header)} fields like the header, got {len(row)}"
            )
        for j, i in enumerate(feature_cols):
            try:
                x[r - 2, j] = float(row[i]) if row[i].strip() else np.nan
            except ValueError as exc:
                raise BadDataError(
                    f"{path}:{r}, column {header[i]!r}: expected a number, got {row[i]!r}"
                ) from exc
        if label is not None:
            y.append(row[header.index(label)])
    names = [header[i] for i in feature_cols]
    return x, (_labels(y) if label is not None else None), names


def _labels(values: list[str]) -> np.ndarray:
    """Numeric labels become numbers; anything else stays text."""
    try:
        numbers = np.asarray([float(v) for v in values])
    except ValueError:
        return np.asarray(values)
    return numbers.astype(np.int64) if np.all(numbers == np.round(numbers)) else numbers
