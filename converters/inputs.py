"""Reading what an engineer hands the converter: a trained model and a data sample.

Errors say which file, where in it, what was expected and what was found.
"""

from __future__ import annotations

import csv
import pickle
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from converters.onnx_input import load_onnx
from converters.sklearn_onnx import SklearnSource
from converters.source import SourceModel
from edge_agent.errors import BadDataError, ConfigError
from edge_agent.protocol.input_spec import MAX_CATEGORIES, MAX_CATEGORY_TEXT

SKLEARN_SUFFIXES = (".joblib", ".pkl", ".pickle")
KERAS_SUFFIXES = (".keras", ".h5")


def load_model(path: Path, task: str | None = None, target: str | None = None) -> SourceModel:
    """The model in `path`, by its suffix: a scikit-learn estimator (joblib or pickle), a Keras
    model, or an ONNX or TFLite file. `task` overrides what a file-format model's outputs say;
    a TFLite conversion is validated on the TFLite runtime `target` (default: the default
    profile's, converters.runtimes.targets)."""
    suffix = path.suffix.lower()
    if suffix in SKLEARN_SUFFIXES:
        return SklearnSource(load_estimator(path))
    if suffix == ".onnx":
        return load_onnx(path, task)
    if suffix in KERAS_SUFFIXES or suffix == ".tflite":
        from converters import keras_tflite  # imports tensorflow only when a model needs it

        if suffix == ".tflite":
            return keras_tflite.load_tflite(path, task, None, target=target)
        return keras_tflite.load_keras(path, task=task, target=target)
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


class Table(NamedTuple):
    """What a data file holds: features `x` (rows, features), labels `y` or None, the
    features' names (None: the file does not name them), and the categorical features'
    categories, {name: sorted texts}, whose cells are in `x` as their index, with where each
    one's first text is, {name: (line, text)}, for a model that turns out to take numbers."""

    x: np.ndarray
    y: np.ndarray | None
    names: list[str] | None
    categories: dict[str, list[str]]
    first_texts: dict[str, tuple[int, str]]


def load_table(path: Path, label: str | None, labels_path: Path | None = None) -> Table:
    """The features (and labels) of a .csv or a .npy array. A CSV whose first row is all
    numbers has no header: its features have no names (None) and `label` is the label column's
    index. A CSV column whose non-empty cells are not all numbers is categorical: its
    categories are its distinct texts (at most MAX_CATEGORIES), sorted, each cell in `x` as
    its category's index (an empty cell is NaN, missing, as in a column of numbers)."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such data file")
    if path.suffix == ".npy":
        x = _load_npy(path)
        y = _load_npy(labels_path) if labels_path else None
        if label:
            raise ConfigError(f"{path}: --label names a CSV column; for .npy use --labels FILE")
        return Table(x, y, None, {}, {})
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


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def has_header(first_row: list[str]) -> bool:
    """A CSV's first row is a header unless every cell is a number or empty (then it is data,
    and the features are named f0, f1, ... as for .npy samples)."""
    cells = [c.strip() for c in first_row]
    return not any(cells) or not all(_is_number(c) for c in cells if c)


def data_like_header(header: list[str] | None) -> str | None:
    """A hint for a header row that holds numbers: most likely a file without a header whose
    text column (a category, a text label) made its first row read as one. None otherwise."""
    numbers = [c for c in header or [] if c.strip() and _is_number(c)]
    if not numbers:
        return None
    shown = ", ".join(repr(c) for c in numbers[:3]) + (", ..." if len(numbers) > 3 else "")
    return (
        f"line 1, read as the header, holds the numbers {shown}: the first line looks like "
        "data; add a header line naming the columns"
    )


def _label_index(path: Path, label: str, width: int) -> int:
    """--label for a CSV without a header: the label column's index, 0 to width-1."""
    if label.isdigit() and int(label) < width:
        return int(label)
    raise ConfigError(
        f"{path}: --label {label!r}: the file has no header (its first row is all numbers), "
        f"so name the label column by its index, 0 to {width - 1}"
    )


def read_csv_rows(path: Path) -> list[list[str]]:
    """The rows of a CSV file, one per line; a text with a comma is quoted ("north, upper", a
    quote in it doubled). BadDataError naming the line for bad quoting: a quote not closed on
    its line, or text after a closing quote."""
    rows: list[list[str]] = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f, strict=True)
            while True:
                start = reader.line_num + 1
                try:
                    row = next(reader)
                except StopIteration:
                    return rows
                except csv.Error as exc:
                    raise BadDataError(_bad_quoting(path, start, reader.line_num, exc)) from exc
                if reader.line_num != start:  # a quoted field ran on to the next lines
                    raise BadDataError(_bad_quoting(path, start, reader.line_num, None))
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise BadDataError(f"{path}: expected UTF-8 text, got undecodable bytes") from exc


def _bad_quoting(path: Path, start: int, end: int, exc: csv.Error | None) -> str:
    if exc is None:
        got = f"a quote opened on this line and closed only on line {end}"
    elif "expected after" in str(exc):  # csv's "',' expected after '"'"
        got = "text after a closing quote"
    elif "unexpected end of data" in str(exc):
        got = "a quote opened on this line and never closed"
    else:  # a NUL byte, a field over csv's size limit
        return f"{path}:{start}: expected CSV text, got what Python's csv module refuses: {exc}"
    return (
        f"{path}:{start}: expected each quoted field to close on its line, followed by a comma "
        f'or the line\'s end (like 1,"north, upper",2), got {got}'
    )


def _load_csv(path: Path, label: str | None) -> Table:
    """The table of a CSV file: names None when it has no header row."""
    rows = read_csv_rows(path)
    if not rows:
        raise BadDataError(f"{path}: expected a header row and at least one data row, got none")
    headed = has_header(rows[0])
    if headed and len(rows) < 2:
        raise BadDataError(f"{path}: expected a header row and at least one data row")
    width = len(rows[0])
    header = [h.strip() for h in rows[0]] if headed else [f"column {i}" for i in range(width)]
    if label is not None and headed and label not in header:
        hint = data_like_header(header)
        raise ConfigError(
            f"{path}: --label {label!r} is not a column; columns are {header}"
            + (f" (hint: {hint})" if hint else "")
        )
    label_at = (
        None
        if label is None
        else (header.index(label) if headed else _label_index(path, label, width))
    )
    feature_cols = [i for i in range(width) if i != label_at]
    data = rows[1:] if headed else rows
    first = 2 if headed else 1  # the file's line number of data[0]
    y: list[str] = []
    like = "like the header" if headed else "like the first row"
    for r, row in enumerate(data, start=first):
        if len(row) != width:
            raise BadDataError(f"{path}:{r}: expected {width} fields {like}, got {len(row)}")
        if label_at is not None:
            if not row[label_at].strip():
                raise BadDataError(
                    f"{path}:{r}, column {header[label_at]!r}: expected a label, got an empty "
                    "cell (drop the row, or give it its label)"
                )
            y.append(row[label_at])
    x = np.empty((len(data), len(feature_cols)), dtype=np.float32)
    categories: dict[str, list[str]] = {}
    first_texts: dict[str, tuple[int, str]] = {}
    for j, i in enumerate(feature_cols):
        cells = [row[i].strip() for row in data]
        texts = _categories(path, header[i], cells, first)
        if texts is None:
            x[:, j] = [float(c) if c else np.nan for c in cells]
        else:
            categories[header[i]] = texts
            r = next(r for r, c in enumerate(cells) if c and not _is_number(c))
            first_texts[header[i]] = (first + r, cells[r])
            code = {t: k for k, t in enumerate(texts)}
            x[:, j] = [code[c] if c else np.nan for c in cells]
    names = [header[i] for i in feature_cols] if headed else None
    labels = _labels(y) if label_at is not None else None
    return Table(x, labels, names, categories, first_texts)


def _categories(path: Path, column: str, cells: list[str], first: int) -> list[str] | None:
    """None for a column of numbers (and empty cells); else its categories, sorted: the
    distinct texts of a column whose non-empty cells are not all numbers."""
    texts = sorted({c for c in cells if c})
    if all(_is_number(t) for t in texts):
        return None
    if len(texts) > MAX_CATEGORIES:
        line = first + next(r for r, c in enumerate(cells) if c and not _is_number(c))
        raise BadDataError(
            f"{path}, column {column!r}: expected a column of numbers, or of at most "
            f"{MAX_CATEGORIES} category texts, got {len(texts)} distinct texts (the first that "
            f"is not a number is {cells[line - first]!r} on line {line})"
        )
    long = next((t for t in texts if len(t) > MAX_CATEGORY_TEXT), None)
    if long is not None:
        raise BadDataError(
            f"{path}, column {column!r}: expected category texts of at most "
            f"{MAX_CATEGORY_TEXT} characters, got {len(long)}: {long[:MAX_CATEGORY_TEXT]!r}..."
        )
    return texts


def _labels(values: list[str]) -> np.ndarray:
    """Numeric labels become numbers; anything else stays text."""
    try:
        numbers = np.asarray([float(v) for v in values])
    except ValueError:
        return np.asarray(values)
    return numbers.astype(np.int64) if np.all(numbers == np.round(numbers)) else numbers
