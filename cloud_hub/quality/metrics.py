"""Quality metrics from joined labels, pure: values in, rows out, each value with a 95% interval.

A classifier (by its card's task) gets:

- accuracy, with the Wilson score interval of a binomial proportion (right labels out of n):
  close to its nominal coverage even for few labels or an accuracy near 1, where the normal
  approximation (p +- z sqrt(p(1-p)/n)) is far too narrow;
- precision, recall and F1, each the unweighted mean over the classes (macro), computed as
  scikit-learn does (`average="macro"`, `zero_division=0`: the classes among the labels or the
  predictions, a class never predicted has precision 0). Their interval is a percentile
  bootstrap: the metrics depend on the rows only through the confusion matrix, so a resample
  of the n rows is a multinomial draw of n over its cells, BOOTSTRAP resamples from a seeded
  generator (the same labels always give the same interval).

An anomaly model (by its card) gets the same four, of its flags (a score above the card's
threshold) against the labels read as flags (`edge_agent.protocol.card.anomaly_label`: 1/0,
"anomaly"/"normal", "true"/"false"; any other label is left out): accuracy with the Wilson
interval, and precision, recall and F1 of the anomaly class alone (not a mean over the two
classes: the normal class's would hide how few anomalies are caught), with the same bootstrap.

A regressor gets:

- MAE with the normal approximation of a mean: mean |e| +- z s/sqrt(n), s the standard
  deviation of |e| (central limit theorem; fine from a few dozen labels);
- RMSE: the same normal interval for the mean squared error, square-rooted at both ends
  (clipped at 0), so it is not symmetric around the RMSE.

A row is one model version and one group (`by`: the whole `fleet`, a `device`, or a `cohort`:
the fleet, each group and each tag, as fleet drift forms them: cloud_hub.drift.fleet), and with
`bucket_s` one time bucket of when the predictions were made.

The accuracy floor (`Floors`): a classifier's row alerts when the upper end of its 99% Wilson
interval is below the floor, that is when the labels leave little doubt that the accuracy is
under it: at an accuracy exactly at the floor a look alerts with a chance of about 0.5%, above
it less, so a healthy model is not paged, while a model well under the floor alerts after a
few dozen labels (all wrong: after 5). Few labels never alert on their own: their interval is
too wide.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import field
from typing import Any

import numpy as np

from cloud_hub.quality.labels import JoinedLabel
from edge_agent.errors import ConfigError
from edge_agent.protocol.card import Anomaly, anomaly_label
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.messages import ModelRef, check_model_name
from edge_agent.protocol.records import Scalar

Z95 = 1.959963984540054  # two-sided 95%
Z99 = 2.5758293035489004  # two-sided 99%: the floor's one-sided 0.5%
BOOTSTRAP = 400  # resamples of a bootstrap interval
CLASSIFICATION, REGRESSION, ANOMALY = "classification", "regression", "anomaly"
BY = ("version", "device", "cohort")
CLASSIFIER_METRICS = ("accuracy", "precision", "recall", "f1")
REGRESSOR_METRICS = ("rmse", "mae")
METRICS = CLASSIFIER_METRICS + REGRESSOR_METRICS


@frozen
class Interval:
    """A metric's value and its interval (low, high), both None where undefined (one label)."""

    value: float
    low: float | None
    high: float | None

    def to_json(self) -> dict[str, float | None]:
        return {"value": self.value, "low": self.low, "high": self.high}

    def covers(self, truth: float) -> bool:
        return self.low is not None and self.high is not None and self.low <= truth <= self.high


def wilson(right: int, n: int, z: float = Z95) -> Interval:
    """The share `right`/`n` with its Wilson score interval (n >= 1)."""
    if n < 1 or not 0 <= right <= n:
        raise ValueError(f"wilson: expected 0 <= right <= n and n >= 1, got {right}/{n}")
    p = right / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def class_key(value: Scalar) -> str:
    """A class label as compared: numbers and numeric strings by their value (2, 2.0 and "2"
    are one class), other strings as they are."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return str(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number) and number.is_integer():
            return str(int(number))
        return repr(number)
    return str(value)


def number_of(value: Scalar) -> float | None:
    """A regression label or prediction as a number (a numeric string too); None if it is not."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


# ---- classifiers ------------------------------------------------------------------------------
def _macro(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Macro precision, recall and F1 of confusion matrices (..., K, K), rows true, columns
    predicted; over the classes present in each (as labels or as predictions)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    predicted = cm.sum(axis=-2).astype(np.float64)
    true = cm.sum(axis=-1).astype(np.float64)
    present = (predicted + true) > 0
    classes = present.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(true > 0, tp / true, 0.0)
        f1 = np.where(predicted + true > 0, 2 * tp / (predicted + true), 0.0)
    macro = [(m * present).sum(axis=-1) / np.maximum(classes, 1) for m in (precision, recall, f1)]
    return macro[0], macro[1], macro[2]


def _anomaly_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 of class 1 (the anomalies) of 2 x 2 confusion matrices."""
    tp = cm[..., 1, 1].astype(np.float64)
    predicted, true = cm[..., :, 1].sum(axis=-1), cm[..., 1, :].sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(true > 0, tp / true, 0.0)
        f1 = np.where(predicted + true > 0, 2 * tp / (predicted + true), 0.0)
    return precision, recall, f1


def classification_metrics(
    labels: Sequence[Scalar], predictions: Sequence[Scalar], seed: int = 0
) -> dict[str, Interval]:
    """accuracy (Wilson), macro precision, recall and F1 (bootstrap) of n >= 1 labelled rows."""
    truth = [class_key(v) for v in labels]
    guess = [class_key(v) for v in predictions]
    classes = sorted(set(truth) | set(guess))
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, ([index[t] for t in truth], [index[g] for g in guess]), 1)
    return _confusion_metrics(cm, _macro, seed)


def anomaly_metrics(
    truth: Sequence[bool], flags: Sequence[bool], seed: int = 0
) -> dict[str, Interval]:
    """accuracy (Wilson), precision, recall and F1 of the anomaly flags (bootstrap) of n >= 1
    labelled rows."""
    cm = np.zeros((2, 2), dtype=np.int64)
    np.add.at(cm, (np.asarray(truth, dtype=np.intp), np.asarray(flags, dtype=np.intp)), 1)
    return _confusion_metrics(cm, _anomaly_class, seed)


def _confusion_metrics(
    cm: np.ndarray,
    measure: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
    seed: int,
) -> dict[str, Interval]:
    """accuracy (Wilson) and `measure`'s precision, recall and F1 (bootstrap) of a K x K
    confusion matrix (rows true, columns predicted)."""
    n, k = int(cm.sum()), len(cm)
    out = {"accuracy": wilson(int(np.trace(cm)), n)}
    point = measure(cm)
    if n < 2:
        for name, value in zip(("precision", "recall", "f1"), point, strict=True):
            out[name] = Interval(float(value), None, None)
        return out
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, cm.ravel() / n, size=BOOTSTRAP).reshape(BOOTSTRAP, k, k)
    for name, value, boot in zip(("precision", "recall", "f1"), point, measure(draws), strict=True):
        low, high = np.quantile(boot, [0.025, 0.975])
        out[name] = Interval(float(value), float(low), float(high))
    return out


# ---- regressors -------------------------------------------------------------------------------
def regression_metrics(
    labels: Sequence[float], predictions: Sequence[float]
) -> dict[str, Interval]:
    """RMSE and MAE (normal approximations, see the module) of n >= 1 labelled rows."""
    errors = np.asarray(predictions, dtype=np.float64) - np.asarray(labels, dtype=np.float64)
    n = len(errors)
    absolute, squared = np.abs(errors), errors**2
    mae, mse = float(absolute.mean()), float(squared.mean())
    if n < 2:
        return {"rmse": Interval(math.sqrt(mse), None, None), "mae": Interval(mae, None, None)}
    half_abs = Z95 * float(absolute.std(ddof=1)) / math.sqrt(n)
    half_sq = Z95 * float(squared.std(ddof=1)) / math.sqrt(n)
    return {
        "rmse": Interval(
            math.sqrt(mse), math.sqrt(max(0.0, mse - half_sq)), math.sqrt(mse + half_sq)
        ),
        "mae": Interval(mae, max(0.0, mae - half_abs), mae + half_abs),
    }


# ---- the floor --------------------------------------------------------------------------------
@frozen
class Floors:
    """Accuracy floors: `default` for every classifier, `per_model` by model name (NAME) or
    version (NAME@VERSION), the most specific first. None: no floor."""

    default: float | None = None
    per_model: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for where, value in [("default", self.default), *self.per_model.items()]:
            if value is not None and not 0 < value <= 1:
                raise ConfigError(
                    f"accuracy floor {where}: expected a share above 0 and at most 1, got {value}"
                )

    def of(self, model: ModelRef) -> float | None:
        for key in (str(model), model.name):
            if key in self.per_model:
                return self.per_model[key]
        return self.default

    def to_json(self) -> dict[str, Any]:
        return {"default": self.default, "per_model": dict(self.per_model)}

    @classmethod
    def from_json(cls, obj: object) -> Floors:
        if not isinstance(obj, dict):
            return cls()
        return cls(obj.get("default"), dict(obj.get("per_model") or {}))

    @classmethod
    def parse(cls, values: Iterable[str]) -> Floors:
        """`--accuracy-floor 0.9` (every classifier), `--accuracy-floor tumor=0.95` or
        `tumor@2=0.95` (one model or version); ConfigError naming the bad value."""
        default: float | None = None
        per_model: dict[str, float] = {}
        for text in values:
            model, sep, share = text.rpartition("=")
            expected = "a share like 0.9, or MODEL=0.9 / MODEL@VERSION=0.9"
            try:
                value = float(share)
                if sep:
                    name, at, version = model.partition("@")
                    check_model_name(name, "model")
                    if at and not version.isdigit():
                        raise ValueError(version)
            except Exception as exc:
                raise ConfigError(f"--accuracy-floor: expected {expected}, got {text!r}") from exc
            if not 0 < value <= 1:
                raise ConfigError(
                    f"--accuracy-floor: expected a share above 0 and at most 1, got {text!r}"
                )
            if sep:
                per_model[model] = value
            else:
                default = value
        return cls(default, per_model)


def below_floor(right: int, n: int, floor: float | None) -> bool:
    """Whether the labels leave little doubt that the accuracy is under `floor`: the upper end
    of the 99% Wilson interval of `right`/`n` is below it (see the module)."""
    if floor is None or n < 1:
        return False
    high = wilson(right, n, Z99).high
    return high is not None and high < floor


# ---- rows -------------------------------------------------------------------------------------
def guess_task(predictions: Iterable[Scalar]) -> str:
    """A model's task from its predictions, for a version whose card the hub cannot read: any
    class label (a string, an integer) makes it a classifier, only numbers with a fraction a
    regressor."""
    values = list(predictions)
    if values and all(isinstance(v, float) for v in values):
        return REGRESSION
    return CLASSIFICATION


@frozen
class Query:
    """Which rows: group `by` version (the fleet), device or cohort; with `bucket_s`, one row
    per bucket of that many seconds of prediction time."""

    by: str = "version"
    bucket_s: float | None = None

    def __post_init__(self) -> None:
        if self.by not in BY:
            raise ConfigError(f"--by: expected one of {', '.join(BY)}, got {self.by!r}")
        if self.bucket_s is not None and not 0 < self.bucket_s < math.inf:
            raise ConfigError(f"--bucket: expected a duration above 0, got {self.bucket_s}s")


def quality_rows(
    joined: Sequence[JoinedLabel],
    tasks: Mapping[ModelRef, str],
    query: Query,
    cohorts: Callable[[str], Sequence[str]],
    floors: Floors,
    anomalies: Mapping[ModelRef, Anomaly] | None = None,
) -> list[dict[str, Any]]:
    """One row per (model version, group, bucket) with labels: counts, each metric of its task
    with its interval (None for the other task's), the floor and whether it alerts.
    `cohorts(device)` names a device's cohorts (used with by="cohort"); `anomalies` how each
    anomaly model's score is read (from its card)."""
    groups: dict[tuple[str, int, str, float | None], list[JoinedLabel]] = {}
    for j in joined:
        if query.by == "device":
            keys: Sequence[str] = (j.device,)
        elif query.by == "cohort":
            keys = cohorts(j.device)
        else:
            keys = ("fleet",)
        bucket = None
        if query.bucket_s is not None:
            when = j.predicted or j.received
            bucket = math.floor(when / query.bucket_s) * query.bucket_s
        for key in keys:
            groups.setdefault((j.model.name, j.model.version, key, bucket), []).append(j)
    rows = []
    for (name, version, key, bucket), items in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3] or 0.0)
    ):
        model = ModelRef(name, version)
        task = tasks.get(model) or guess_task(j.prediction for j in items)
        anomaly = (anomalies or {}).get(model)
        rows.append(_row(model, task, query.by, key, bucket, items, floors.of(model), anomaly))
    return rows


def _row(
    model: ModelRef,
    task: str,
    by: str,
    key: str,
    bucket: float | None,
    items: Sequence[JoinedLabel],
    floor: float | None,
    anomaly: Anomaly | None = None,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "model": model.name,
        "version": model.version,
        "task": task,
        "by": by,
        "group": key,
        "bucket": bucket,
        "labels": len(items),
        "used": 0,
        **dict.fromkeys(METRICS),
        "floor": floor if task == CLASSIFICATION else None,
        "alert": False,
    }
    if task == CLASSIFICATION:
        truth = [j.label for j in items]
        guess = [j.prediction for j in items]
        metrics = classification_metrics(truth, guess)
        row["used"] = len(items)
        right = sum(class_key(t) == class_key(g) for t, g in zip(truth, guess, strict=True))
        row["alert"] = below_floor(right, len(items), row["floor"])
    elif task == ANOMALY:
        if anomaly is None:  # its threshold unknown: no flags to measure
            return row
        read = [(anomaly_label(j.label), number_of(j.prediction)) for j in items]
        flagged = [(t, s) for t, s in read if t is not None and s is not None]
        row["used"] = len(flagged)  # a label that says neither anomaly nor normal: left out
        if not flagged:
            return row
        scores = np.asarray([s for _, s in flagged])
        metrics = anomaly_metrics([t for t, _ in flagged], anomaly.flags(scores).tolist())
    else:
        pairs = [(number_of(j.label), number_of(j.prediction)) for j in items]
        usable = [(t, p) for t, p in pairs if t is not None and p is not None]
        row["used"] = len(usable)  # a class name for a regressor is no number: left out
        if not usable:
            return row
        metrics = regression_metrics([t for t, _ in usable], [p for _, p in usable])
    for name, interval in metrics.items():
        row[name] = interval.to_json()
    return row
