"""The category texts a fitted scikit-learn pipeline's encoders know, per input column.

A card's categories are what the device can send the model. Read from the sample alone, a
category the encoder was fit on but the sample lacks (a rare one) would be missing from the
card, and the device would send it as "unknown": a different prediction than scikit-learn's.
So the card lists the encoder's categories too (`widen`): the sample's first, in their order
(the sample's codes keep their meaning), then each text only the encoder knows, in the
encoder's order.

Where an encoder sits: the estimator itself (OneHotEncoder, OrdinalEncoder ... anything with
`categories_`, one array per column it was fit on), a ColumnTransformer's transformer (its
columns found by the indices the fitted transformer keeps, else by its column spec), or a
Pipeline step reached through steps that keep their columns (SimpleImputer, StandardScaler).
Only texts are taken; a NaN or number category is not a text a device sends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_agent.errors import BadDataError
from edge_agent.protocol.input_spec import MAX_CATEGORIES, MAX_CATEGORY_TEXT, InputSpec, row_spec


def encoder_categories(estimator: Any, columns: Sequence[str]) -> dict[str, list[str]]:
    """{column: the texts its encoders know, in their order} for `estimator` fitted on a table
    of `columns` (in the order it was fit on); columns without an encoder are left out."""
    found: dict[str, list[str]] = {}
    _walk(estimator, list(columns), found)
    return found


def _walk(est: Any, columns: list[str], found: dict[str, list[str]]) -> None:
    if est is None or isinstance(est, str):  # "drop", "passthrough"
        return
    steps = getattr(est, "steps", None)
    if isinstance(steps, list):  # a Pipeline: its first steps see the columns
        for _, step in steps:
            _walk(step, columns, found)
            if not _keeps_columns(step, columns):
                return
        return
    fitted = getattr(est, "transformers_", None)
    if isinstance(fitted, list):  # a fitted ColumnTransformer
        indices = getattr(est, "_transformer_to_input_indices", None) or {}
        for name, trans, spec in fitted:
            at = indices.get(name)
            picked = _picked(spec, columns) if at is None else [columns[i] for i in at]
            if picked is not None:
                _walk(trans, picked, found)
        return
    cats = getattr(est, "categories_", None)
    if isinstance(cats, list) and len(cats) == len(columns):
        for name, known in zip(columns, cats, strict=True):
            texts = found.setdefault(name, [])
            texts += [t for t in np.asarray(known, dtype=object).tolist() if _text(t, texts)]


def _text(value: Any, seen: list[str]) -> bool:
    return isinstance(value, str) and value not in seen


def _keeps_columns(step: Any, columns: list[str]) -> bool:
    """Whether a fitted step gives out the columns it takes (an imputer, a scaler)."""
    if step is None or step == "passthrough":
        return True
    names = getattr(step, "get_feature_names_out", None)
    if names is None:
        return False
    try:
        return [str(n) for n in names(columns)] == columns
    except (ValueError, TypeError, AttributeError):  # sklearn's for names it cannot give
        return False


def _picked(spec: Any, columns: list[str]) -> list[str] | None:
    """The columns a ColumnTransformer's column spec picks: names, indices, a slice or a mask;
    None for what it cannot tell here (a callable selector)."""
    if isinstance(spec, str | int | np.integer):
        spec = [spec]
    if isinstance(spec, slice):
        spec = list(range(len(columns)))[spec] if not isinstance(spec.start, str) else None
    if spec is None or callable(spec):
        return None
    values = list(np.asarray(spec).tolist())
    if values and all(isinstance(v, bool) for v in values):
        return [c for c, keep in zip(columns, values, strict=False) if keep]
    if all(isinstance(v, int) for v in values):
        return [columns[i] for i in values]
    if all(isinstance(v, str) for v in values) and set(values) <= set(columns):
        return list(values)
    return None


def widen(spec: InputSpec, known: Mapping[str, Sequence[str]]) -> InputSpec:
    """`spec` with each categorical feature's categories followed by the texts `known` adds
    (those a device can send: without surrounding spaces, not empty); BadDataError for a
    text or a count the card cannot carry."""
    if not any(name in known for name in spec.categories):
        return spec
    out: dict[str, list[str]] = {}
    for name, sample in spec.categories.items():
        extra = [t for t in known.get(name, ()) if t not in sample and t and t == t.strip()]
        long = next((t for t in extra if len(t) > MAX_CATEGORY_TEXT), None)
        if long is not None:
            raise BadDataError(
                f"column {name!r}: the encoder knows the category {long[:MAX_CATEGORY_TEXT]!r}..."
                f" of {len(long)} characters; a card carries texts of at most "
                f"{MAX_CATEGORY_TEXT}"
            )
        texts = [*sample, *extra]
        if len(texts) > MAX_CATEGORIES:
            raise BadDataError(
                f"column {name!r}: expected at most {MAX_CATEGORIES} categories, got "
                f"{len(texts)} ({len(sample)} in the sample, {len(extra)} more the encoder "
                "knows)"
            )
        out[name] = texts
    return row_spec(list(spec.features), out)


def added(before: InputSpec, after: InputSpec) -> dict[str, list[str]]:
    """{feature: the categories `after` lists beyond `before`}, for those with any."""
    return {
        name: list(texts[len(before.categories.get(name, ())) :])
        for name, texts in after.categories.items()
        if len(texts) > len(before.categories.get(name, ()))
    }
