"""Checking and splitting the data a bundle is built from.

Errors say what was expected and what arrived. NaN is allowed in x (a feature may be missing
sometimes) but not a column that is NaN throughout, nor infinities; y must be one target per row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_agent.errors import BadDataError

SPLIT_SEED = 0
MIN_SPLIT_ROWS = 40


def check_features(x: Any, n_features: int | None = None) -> np.ndarray:
    """`x` as a float32 (rows, features) array; BadDataError if it cannot be one."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise BadDataError(f"x: expected numbers convertible to float32, got {exc}") from exc
    if arr.ndim != 2:
        raise BadDataError(f"x: expected a 2-D array (rows, features), got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise BadDataError(f"x: expected at least one row and one feature, got shape {arr.shape}")
    if n_features is not None and arr.shape[1] != n_features:
        raise BadDataError(
            f"x: expected {n_features} features (what the estimator was trained on), "
            f"got {arr.shape[1]}"
        )
    _check_columns(arr)
    return arr


def check_items(x: Any, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """`x` as float32 items of `shape` each, (n, *shape): windows or images, finite."""
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise BadDataError(f"x: expected numbers convertible to float32, got {exc}") from exc
    if arr.ndim != len(shape) + 1 or arr.shape[1:] != shape or len(arr) < 1:
        want = ", ".join(map(str, shape))
        raise BadDataError(
            f"x: expected {kind} items of shape (n, {want}), got an array of shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.all(np.isfinite(arr.reshape(len(arr), -1)), axis=1)))
        raise BadDataError(f"x: expected finite values, got NaN or infinity in {bad} {kind}(s)")
    return arr


def check_missing(predict: Any, x: np.ndarray, model: str) -> None:
    """A model that cannot take NaN, handed rows that hold some: one clear error naming them
    (the model's own would be a traceback's worth of advice)."""
    flat = x.reshape(len(x), -1)
    holes = ~np.isfinite(flat)
    rows = np.nonzero(holes.any(axis=1))[0]
    if not len(rows):
        return
    try:
        predict(x[rows[:1]])
    except ValueError as exc:
        columns = sorted({int(j) for j in np.nonzero(holes[rows])[1]})
        raise BadDataError(
            f"x: {len(rows)} row(s) hold missing values (NaN or empty cells; the first is row "
            f"index {int(rows[0])}, counting from 0, in column(s) {columns[:10]}), and "
            f"{model} cannot take missing values: drop or impute those rows, or put an imputer "
            "in the pipeline"
        ) from exc


def check_targets(y: Any, n_rows: int) -> np.ndarray:
    """`y` as a 1-D array of `n_rows` targets; numeric targets must be finite."""
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.ravel()
    if arr.ndim != 1:
        raise BadDataError(f"y: expected a 1-D array of {n_rows} targets, got shape {arr.shape}")
    if len(arr) != n_rows:
        raise BadDataError(f"y: expected {n_rows} targets (one per row of x), got {len(arr)}")
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise BadDataError(f"y: expected finite targets, got {bad} NaN or infinite value(s)")
    return arr


def check_feature_names(names: list[str] | None, n_features: int, default: Any = None) -> list[str]:
    """The given names (checked), else `default` (an estimator's feature_names_in_), else f0..."""
    if names is None:
        names = [str(n) for n in default] if default is not None else None
    if names is None:
        return [f"f{i}" for i in range(n_features)]
    names = list(names)
    if len(names) != n_features:
        raise BadDataError(
            f"feature_names: expected {n_features} names (one per column of x), got {len(names)}"
        )
    if not all(isinstance(n, str) and n for n in names):
        raise BadDataError(f"feature_names: expected non-empty strings, got {names!r:.120}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BadDataError(f"feature_names: expected unique names, got duplicates {dupes}")
    return names


def validation_half(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x_val, y_val): a seeded half of the rows for parity validation. Below MIN_SPLIT_ROWS
    rows a half would be too thin to mean anything, so all rows serve.

    The drift reference profile uses every row: with small windows on the device its noise
    floor is set by the reference's size, so it should not be halved."""
    _, val = halves(len(x))
    return x[val], y[val]


def halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, val): row indices of the seeded split of `n` rows, `val` the validation half;
    below MIN_SPLIT_ROWS both are every row."""
    if n < MIN_SPLIT_ROWS:
        return np.arange(n), np.arange(n)
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    return order[: n // 2], order[n // 2 :]


def finite_rows(x: np.ndarray, limit: int) -> np.ndarray:
    """Up to `limit` rows (or items) of `x` without NaN (the health-gate sample must be
    complete)."""
    return x[np.all(np.isfinite(x.reshape(len(x), -1)), axis=1)][:limit]


def _check_columns(arr: np.ndarray) -> None:
    if np.isinf(arr).any():
        cols = sorted({int(j) for j in np.nonzero(np.isinf(arr))[1]})
        raise BadDataError(
            f"x: expected finite values or NaN, got infinity (or values beyond float32 range) "
            f"in column(s) {cols}"
        )
    all_nan = np.nonzero(np.all(np.isnan(arr), axis=0))[0]
    if all_nan.size:
        raise BadDataError(
            f"x: expected at least one value per feature, got column(s) "
            f"{[int(j) for j in all_nan]} entirely NaN"
        )
