"""The model card: the contract between the converter that writes it and the agent that reads it.

It travels inside the bundle and is covered by the bundle's signature. It holds the input schema
the agent validates sensor lines against, a sample with expected outputs for the health gate, and
the drift reference profile (per-feature quantile bins, and a bounded sorted reference sample for
the Kolmogorov-Smirnov statistic) the agent's drift monitors compare to, and for a classifier
built with true labels, the calibration of its confidence (`Calibration`, card version 2) from
which the agent estimates its accuracy without labels.
An anomaly model's card (task "anomaly") says how its score is read (`Anomaly`): one convention
for every kind of model, a score above the card's threshold is anomalous.
Bucketing is defined here once (`bucket_counts`), and so is applying the calibration
(`Calibration.expected`), so the reference and the live side agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import field
from itertools import pairwise
from typing import Any

import numpy as np

from edge_agent.errors import BundleRejected, MessageError
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.input_spec import InputSpec, parse_input_spec, row_spec
from edge_agent.protocol.messages import ModelRef, field_of
from edge_agent.protocol.reasons import Reason

CARD_VERSION = 2  # 2: reference.confidence (optional); version 1 cards are still read
INPUT_CARD_VERSION = 3  # 3: input kinds other than a row (edge_agent.protocol.input_spec)
CARD_VERSIONS = (1, 2, 3)
# A sample too large for the card (large images) travels as this bundle member, a float32 .npy
# of (items, *input shape) whose sha256 the signed card names.
SAMPLE_MEMBER = "sample.npy"
MAX_SAMPLE_ITEMS = 64
TASKS = ("classification", "regression", "anomaly")
RUNTIMES = ("onnxruntime", "litert")
KS_POINTS = 200  # reference order statistics per feature for KS: its ECDF is off by <= 1/199
MAX_KS_POINTS = 1000  # what a card may carry at most
THRESHOLD_KEYS = ("psi_warn", "psi_alert", "ks_warn", "ks_alert", "range_warn", "range_alert")
MAX_CALIBRATION_BINS = 50  # what a card's confidence calibration may carry at most
CALIBRATION_KEYS = ("edges", "accuracy", "expected_accuracy", "rows")
LINEAGE_KEYS = ("parent", "data_sha256", "data_rows", "dataset", "trigger", "conversion")
MAX_LINEAGE_TEXT = 300
ANOMALY_KEYS = ("threshold", "direction", "rate")
ANOMALY_DIRECTIONS = ("higher",)  # the one convention: a higher score is more anomalous
ANOMALY_LABELS = {"anomaly": True, "normal": False, "true": True, "false": False}


def quantile_edges(values: np.ndarray, bins: int) -> list[float]:
    """Interior cut points of `bins` equal-mass bins, each placed halfway between two observed
    values, so that small noise on a discrete feature (integer counts, a few levels) does not
    flip values across an edge. Duplicates collapse."""
    finite = np.sort(values[np.isfinite(values)])
    if finite.size < 2:
        return []
    qs = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1])
    above = np.searchsorted(finite, qs, side="right")
    above = above[(above > 0) & (above < finite.size)]
    edges = (finite[above - 1] + finite[above]) / 2
    return [float(e) for e in unique_sorted(edges)]


def unique_sorted(values: np.ndarray) -> np.ndarray:
    """np.unique(values) (sorted, NaNs as one), without numpy.ma: numpy 2's np.unique asks
    np.ma.is_masked, and importing numpy.ma costs the agent about 1 MB of resident memory."""
    s = np.sort(values, axis=None)
    keep = np.ones(s.size, dtype=bool)
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    nan = np.isnan(s)
    keep[1:] &= ~(nan[1:] & nan[:-1])
    return s[keep]


def bucket_counts(values: np.ndarray, edges: list[float] | np.ndarray) -> np.ndarray:
    """Counts per bin: bin i holds edges[i-1] < v <= edges[i]; len(edges)+1 bins. NaN ignored."""
    finite = values[np.isfinite(values)]
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), finite, side="left")
    return np.bincount(idx, minlength=len(edges) + 1)


def ks_reference(values: np.ndarray, points: int = KS_POINTS) -> list[float]:
    """A bounded sorted reference sample for the KS statistic: every finite value when there
    are at most `points`, else `points` order statistics at evenly spaced ranks (the smallest
    and the largest included). The two-sample KS statistic against it is exact."""
    finite = np.sort(values[np.isfinite(values)])
    if finite.size > points:
        finite = finite[np.round(np.linspace(0, finite.size - 1, points)).astype(np.int64)]
    return [float(v) for v in finite]


@frozen
class FeatureProfile:
    name: str
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    mean: float
    std: float
    missing_rate: float
    min: float
    max: float
    ks: tuple[float, ...] = ()  # sorted reference sample; empty in cards built before it existed

    def to_json(self) -> dict[str, Any]:
        return {
            "ks": list(self.ks),
            "name": self.name,
            "edges": list(self.edges),
            "counts": list(self.counts),
            "mean": self.mean,
            "std": self.std,
            "missing_rate": self.missing_rate,
            "min": self.min,
            "max": self.max,
        }


def category_edges(categories: Sequence[str]) -> list[float]:
    """A categorical feature's bins: one per category code (0, 1, ...), the last one for the
    unknown code len(categories): edges at i + 0.5."""
    return [i + 0.5 for i in range(len(categories))]


def feature_profiles(
    x: np.ndarray,
    names: list[str],
    bins: int = 10,
    categories: Mapping[str, Sequence[str]] | None = None,
) -> list[FeatureProfile]:
    """The reference profile of a 2-D reference sample, one entry per column. A categorical
    feature (named in `categories`, its values category codes) is profiled over its
    categories (`category_edges`), without a KS sample: drift tests it as categories."""
    profiles = []
    categories = categories or {}
    for j, name in enumerate(names):
        col = x[:, j].astype(np.float64)
        finite = col[np.isfinite(col)]
        cats = categories.get(name)
        edges = category_edges(cats) if cats is not None else quantile_edges(col, bins)
        profiles.append(
            FeatureProfile(
                name=name,
                edges=tuple(edges),
                counts=tuple(int(c) for c in bucket_counts(col, edges)),
                mean=float(finite.mean()) if finite.size else 0.0,
                std=float(finite.std()) if finite.size else 0.0,
                missing_rate=float(1 - finite.size / max(1, col.size)),
                min=float(finite.min()) if finite.size else 0.0,
                max=float(finite.max()) if finite.size else 0.0,
                ks=tuple(ks_reference(col)) if cats is None else (),
            )
        )
    return profiles


def confidence(scores: np.ndarray) -> np.ndarray:
    """(n, n_classes) class probabilities -> (n,) the model's confidence: the largest one."""
    return np.asarray(scores).max(axis=1)


@frozen
class Calibration:
    """A classifier's confidence (its largest class probability) -> the probability that its
    label is right: a step function, non-decreasing, fit at conversion on labeled rows.

    Confidence c falls in bin i when edges[i-1] < c <= edges[i] (as `bucket_counts`), and
    `accuracy[i]` is that bin's probability of being right. `expected_accuracy` is the mean of
    it over the card's reference rows, `rows` how many labeled rows it was fit on."""

    edges: tuple[float, ...]
    accuracy: tuple[float, ...]
    expected_accuracy: float
    rows: int

    def expected(self, scores: np.ndarray) -> np.ndarray:
        """(n, n_classes) probabilities -> (n,) probability that each row's label is right."""
        at = np.searchsorted(np.asarray(self.edges), confidence(scores), side="left")
        return np.asarray(self.accuracy)[at]

    def to_json(self) -> dict[str, Any]:
        return {
            "edges": list(self.edges),
            "accuracy": list(self.accuracy),
            "expected_accuracy": self.expected_accuracy,
            "rows": self.rows,
        }


@frozen
class Anomaly:
    """How an anomaly model's output is read: the model gives a score per row, higher = more
    anomalous (`direction` "higher", the one convention), and a row whose score is above
    `threshold` is an anomaly. `rate` is the share of the card's reference rows that were (what
    the drift monitor compares a window's anomaly rate with)."""

    threshold: float
    rate: float
    direction: str = "higher"

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """(n,) or (n, 1) scores -> (n,) booleans: anomalous or not."""
        return np.asarray(scores, dtype=np.float64).reshape(-1) > self.threshold

    def to_json(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "direction": self.direction, "rate": self.rate}


def anomaly_label(value: object) -> bool | None:
    """Ground truth for an anomaly model as a flag: 1 or true or "anomaly" is an anomaly, 0 or
    false or "normal" is not (numbers as text and any letter case too); None for anything else
    (scikit-learn's -1/1 among them: which one is the anomaly is not said by the value)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ANOMALY_LABELS:
            return ANOMALY_LABELS[text]
        try:
            value = float(text)
        except ValueError:
            return None
    if isinstance(value, int | float | np.integer | np.floating) and value in (0, 1):
        return bool(value == 1)
    return None


@frozen
class SampleFile:
    """card.sample.file: the health-gate sample as a bundle member, not inline values."""

    name: str
    sha256: str
    items: int


@frozen
class ModelCard:
    model: ModelRef
    task: str
    framework: str
    runtime: str
    model_file: str
    input_name: str
    features: tuple[FeatureProfile, ...]
    classes: tuple[Any, ...]
    prediction_counts: tuple[int, ...]
    sample_inputs: tuple[tuple[float, ...], ...]
    sample_outputs: tuple[Any, ...]
    max_latency_ms: float
    min_agreement: float
    max_error_rate: float  # share of sample rows allowed to fail or give a non-finite output
    validation: dict[str, Any]
    raw: dict[str, Any]
    thresholds: dict[str, float] = field(default_factory=dict)  # the card's own drift thresholds
    version: int = CARD_VERSION  # the card_version it was written as
    confidence: Calibration | None = None  # classifiers built with labels, card version >= 2
    lineage: dict[str, Any] | None = None  # retrained models: parent, training data, trigger
    input: InputSpec = field(default_factory=lambda: row_spec([]))  # what the device feeds it
    anomaly: Anomaly | None = None  # task "anomaly": how its score is read
    sample_file: SampleFile | None = None  # the sample is a bundle member (large inputs)
    # that member's items, attached by edge_agent.update.bundle.read_bundle once checked
    sample_array: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def n_features(self) -> int:
        """Values drift watches per item (the reference's features), not the model's input
        size: that is `input.size`."""
        return len(self.features)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def sample_items(self) -> np.ndarray:
        """The card's sample as the model takes it: (n, *input.shape) float32."""
        if self.sample_file is not None:
            if self.sample_array is None:
                raise MessageError(
                    f"card.sample: expected the bundle member {self.sample_file.name} read "
                    "with the card (edge_agent.update.bundle.read_bundle), got the card alone"
                )
            return self.sample_array
        x = np.asarray(self.sample_inputs, dtype=np.float32)
        return x.reshape(len(self.sample_inputs), *self.input.shape)


def _floats(value: object, where: str) -> list[float]:
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        raise MessageError(f"{where}: expected a list of finite numbers, got {value!r:.80}")
    return [float(v) for v in value]


def _rate(value: object, where: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        raise MessageError(f"{where}: expected a number from 0 to 1, got {value!r:.80}")
    return float(value)


def parse_card(obj: object) -> ModelCard:
    """A card dict (from card.json) -> ModelCard; BundleRejected('bad-card') if it is malformed."""
    try:
        return _parse_card(obj)
    except MessageError as exc:
        raise BundleRejected(Reason.BAD_CARD, str(exc)) from exc


def _parse_card(obj: object) -> ModelCard:
    where = "card"
    if not isinstance(obj, dict):
        raise MessageError(f"{where}: expected an object, got {type(obj).__name__}")
    version = field_of(obj, "card_version", int, where)
    if version not in CARD_VERSIONS:
        raise MessageError(f"{where}.card_version: expected one of {CARD_VERSIONS}, got {version}")
    model = ModelRef(field_of(obj, "name", str, where), field_of(obj, "version", int, where))
    task = field_of(obj, "task", str, where)
    if task not in TASKS:
        raise MessageError(f"{where}.task: expected one of {TASKS}, got {task!r}")
    runtime = field_of(obj, "runtime", str, where)
    if runtime not in RUNTIMES:
        raise MessageError(f"{where}.runtime: expected one of {RUNTIMES}, got {runtime!r}")
    model_file = field_of(obj, "model_file", str, where)
    if (
        not model_file
        or "/" in model_file
        or model_file.startswith(".")
        or (model_file == "card.json")
    ):
        raise MessageError(f"{where}.model_file: expected a plain file name, got {model_file!r}")
    inp = field_of(obj, "input", dict, where)
    ref = field_of(obj, "reference", dict, where)
    feats = []
    for i, f in enumerate(field_of(ref, "features", list, f"{where}.reference")):
        at = f"{where}.reference.features[{i}]"
        if not isinstance(f, dict):
            raise MessageError(f"{at}: expected an object")
        edges = _floats(f.get("edges"), f"{at}.edges")
        counts = f.get("counts")
        if not isinstance(counts, list) or len(counts) != len(edges) + 1:
            raise MessageError(f"{at}.counts: expected {len(edges) + 1} counts, got {counts!r:.60}")
        ks = _floats(f.get("ks", []), f"{at}.ks")
        if len(ks) > MAX_KS_POINTS or ks != sorted(ks):
            raise MessageError(
                f"{at}.ks: expected at most {MAX_KS_POINTS} numbers in ascending order, "
                f"got {len(ks)} {'sorted' if ks == sorted(ks) else 'unsorted'}"
            )
        feats.append(
            FeatureProfile(
                name=field_of(f, "name", str, at),
                edges=tuple(edges),
                counts=tuple(int(c) for c in counts),
                mean=float(field_of(f, "mean", (int, float), at)),
                std=float(field_of(f, "std", (int, float), at)),
                missing_rate=float(field_of(f, "missing_rate", (int, float), at)),
                min=float(field_of(f, "min", (int, float), at)),
                max=float(field_of(f, "max", (int, float), at)),
                ks=tuple(ks),
            )
        )
    if not feats:
        raise MessageError(f"{where}.reference.features: expected at least one feature")
    preds = field_of(ref, "predictions", dict, f"{where}.reference")
    confidence = None
    if "confidence" in ref:
        at = f"{where}.reference.confidence"
        if version < 2 or task != "classification":
            raise MessageError(
                f"{at}: expected only in a classifier's card of version 2 or later, "
                f"got one in a {task} card of version {version}"
            )
        confidence = _calibration(ref["confidence"], at)
    spec = parse_input_spec(inp, f"{where}.input", [f.name for f in feats])
    if spec.kind != "row" and version < INPUT_CARD_VERSION:
        raise MessageError(
            f"{where}.card_version: expected {INPUT_CARD_VERSION} or later for a {spec.kind} "
            f"input, got {version}"
        )
    sample = field_of(obj, "sample", dict, where)
    rows: tuple[tuple[float, ...], ...] = ()
    sample_file = None
    if "file" in sample:
        sample_file = _sample_file(sample, version, model_file, f"{where}.sample")
        items = sample_file.items
    else:
        inputs = field_of(sample, "inputs", list, f"{where}.sample")
        rows = tuple(tuple(_floats(r, f"{where}.sample.inputs[{i}]")) for i, r in enumerate(inputs))
        if any(len(r) != spec.size for r in rows):
            raise MessageError(
                f"{where}.sample.inputs: expected items of {spec.size} values (the model's "
                f"{spec.kind} input, flattened)"
            )
        items = len(rows)
    outputs = field_of(sample, "outputs", list, f"{where}.sample")
    if len(outputs) != items:
        raise MessageError(f"{where}.sample.outputs: expected {items} outputs, got {len(outputs)}")
    health = field_of(obj, "health", dict, where)
    return ModelCard(
        model=model,
        task=task,
        framework=str(obj.get("framework", "")),
        runtime=runtime,
        model_file=model_file,
        input_name=field_of(inp, "name", str, f"{where}.input"),
        features=tuple(feats),
        classes=tuple(field_of(obj, "classes", list, where)) if task == "classification" else (),
        prediction_counts=tuple(int(c) for c in field_of(preds, "counts", list, "predictions")),
        sample_inputs=rows,
        sample_outputs=tuple(outputs),
        max_latency_ms=float(field_of(health, "max_latency_ms", (int, float), f"{where}.health")),
        min_agreement=float(field_of(health, "min_agreement", (int, float), f"{where}.health")),
        max_error_rate=_rate(health.get("max_error_rate", 0.0), f"{where}.health.max_error_rate"),
        validation=obj.get("validation", {}) if isinstance(obj.get("validation"), dict) else {},
        raw=obj,
        thresholds=_thresholds(obj.get("drift", {}), f"{where}.drift"),
        version=version,
        confidence=confidence,
        lineage=_lineage(obj["lineage"], f"{where}.lineage") if "lineage" in obj else None,
        input=spec,
        anomaly=_anomaly(obj.get("anomaly"), task, f"{where}.anomaly"),
        sample_file=sample_file,
    )


def _sample_file(sample: dict[str, Any], version: int, model_file: str, where: str) -> SampleFile:
    """card.sample {"file": "sample.npy", "sha256": HEX, "items": N, "outputs": [...]}."""
    if version < INPUT_CARD_VERSION:
        raise MessageError(
            f"{where}.file: expected card_version {INPUT_CARD_VERSION} or later, got {version}"
        )
    if "inputs" in sample:
        raise MessageError(f"{where}: expected either inputs or a file, got both")
    name = field_of(sample, "file", str, where)
    if name != SAMPLE_MEMBER:
        raise MessageError(f"{where}.file: expected {SAMPLE_MEMBER!r}, got {name!r:.80}")
    digest = field_of(sample, "sha256", str, where)
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise MessageError(f"{where}.sha256: expected 64 lowercase hex digits, got {digest!r:.80}")
    items = field_of(sample, "items", int, where)
    if isinstance(items, bool) or not 1 <= items <= MAX_SAMPLE_ITEMS:
        raise MessageError(f"{where}.items: expected 1 to {MAX_SAMPLE_ITEMS}, got {items!r}")
    return SampleFile(name, digest, items)


def _anomaly(obj: object, task: str, where: str) -> Anomaly | None:
    """card.anomaly, in an anomaly model's card only: {"threshold": 0.52, "direction":
    "higher", "rate": 0.01}."""
    if task != "anomaly":
        if obj is not None:
            raise MessageError(
                f"{where}: expected only in an anomaly model's card, got one in a {task} card"
            )
        return None
    if not isinstance(obj, dict):
        raise MessageError(
            f"{where}: expected an object with the score's threshold and direction, "
            f"got {type(obj).__name__ if obj is not None else 'none'}"
        )
    unknown = sorted(set(obj) - set(ANOMALY_KEYS))
    if unknown:
        raise MessageError(f"{where}: unknown key {unknown[0]!r}, expected {ANOMALY_KEYS}")
    threshold = obj.get("threshold")
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not math.isfinite(threshold)
    ):
        raise MessageError(f"{where}.threshold: expected a finite number, got {threshold!r:.40}")
    direction = obj.get("direction")
    if direction not in ANOMALY_DIRECTIONS:
        raise MessageError(
            f"{where}.direction: expected one of {ANOMALY_DIRECTIONS} (a score above the "
            f"threshold is anomalous), got {direction!r:.40}"
        )
    rate = _rate(obj.get("rate"), f"{where}.rate")
    return Anomaly(float(threshold), rate, str(direction))


def _lineage(obj: object, where: str) -> dict[str, Any]:
    """card.lineage (optional, any card version): where a retrained model came from, as
    {"parent": "tumor@1", "data_sha256": "...", "data_rows": 812, "dataset": "...",
    "trigger": "...", "conversion": "..."}; each key optional, texts bounded."""
    if not isinstance(obj, dict):
        raise MessageError(f"{where}: expected an object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(LINEAGE_KEYS))
    if unknown:
        raise MessageError(f"{where}: unknown key {unknown[0]!r}, expected {LINEAGE_KEYS}")
    for key, value in obj.items():
        if key == "data_rows":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise MessageError(f"{where}.data_rows: expected a count, got {value!r:.40}")
        elif not isinstance(value, str) or len(value) > MAX_LINEAGE_TEXT:
            raise MessageError(
                f"{where}.{key}: expected text of at most {MAX_LINEAGE_TEXT} characters, "
                f"got {value!r:.40}"
            )
    return dict(obj)


def _calibration(obj: object, where: str) -> Calibration:
    """reference.confidence: {"edges": [...], "accuracy": [...], "expected_accuracy": 0.93,
    "rows": 285}, edges ascending within 0..1, one accuracy more than edges, non-decreasing."""
    if not isinstance(obj, dict):
        raise MessageError(f"{where}: expected an object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(CALIBRATION_KEYS))
    if unknown:
        raise MessageError(f"{where}: unknown key {unknown[0]!r}, expected {CALIBRATION_KEYS}")
    edges = _floats(field_of(obj, "edges", list, where), f"{where}.edges")
    if len(edges) >= MAX_CALIBRATION_BINS or any(not 0 <= e <= 1 for e in edges):
        raise MessageError(
            f"{where}.edges: expected fewer than {MAX_CALIBRATION_BINS} numbers from 0 to 1, "
            f"got {edges!r:.80}"
        )
    if any(b <= a for a, b in pairwise(edges)):
        raise MessageError(f"{where}.edges: expected strictly ascending numbers, got {edges!r:.80}")
    accuracy = _floats(field_of(obj, "accuracy", list, where), f"{where}.accuracy")
    if len(accuracy) != len(edges) + 1 or any(not 0 <= a <= 1 for a in accuracy):
        raise MessageError(
            f"{where}.accuracy: expected {len(edges) + 1} numbers from 0 to 1 (one per bin), "
            f"got {accuracy!r:.80}"
        )
    if any(b < a for a, b in pairwise(accuracy)):
        raise MessageError(
            f"{where}.accuracy: expected non-decreasing numbers (more confident, more often "
            f"right), got {accuracy!r:.80}"
        )
    expected = _rate(
        field_of(obj, "expected_accuracy", (int, float), where), f"{where}.expected_accuracy"
    )
    rows = field_of(obj, "rows", int, where)
    if rows < 1:
        raise MessageError(f"{where}.rows: expected a count of 1 or more, got {rows}")
    return Calibration(tuple(edges), tuple(accuracy), expected, rows)


def _thresholds(obj: object, where: str) -> dict[str, float]:
    """The card's optional drift thresholds: {"psi_warn": 0.1, "psi_alert": 0.25, ...}."""
    if not isinstance(obj, dict):
        raise MessageError(f"{where}: expected an object, got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if key not in THRESHOLD_KEYS:
            raise MessageError(f"{where}: unknown key {key!r}, expected one of {THRESHOLD_KEYS}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise MessageError(f"{where}.{key}: expected a positive number, got {value!r:.40}")
        out[key] = float(value)
    for name in ("psi", "ks", "range"):
        warn, alert = out.get(f"{name}_warn"), out.get(f"{name}_alert")
        if warn is not None and alert is not None and warn >= alert:
            raise MessageError(f"{where}: expected {name}_warn below {name}_alert, got {out}")
    return out
