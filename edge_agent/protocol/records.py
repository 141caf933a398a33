"""The bodies of the records a device sends, typed: what `Batch.records[i].body` holds.

The envelope (`edge_agent.protocol.messages`: device, boot, seq, ts) is checked by
`decode_batch`; the body inside is one of these, by the topic it came on:

- `telemetry`: a `TelemetryWindow` (one window of inference, naming its rows by prediction id
  with the model's prediction for each: `WindowRows`), or a `RawSample` (a sampled raw row, a
  body with `raw`: edge_agent.uplink.sampling);
- `drift`: a `DriftReport` (one drift window: edge_agent.drift.monitor);
- `events`: a `DeviceEvent` (offered, verified, rejected, ..., with a `ShadowReport` for a
  shadow-report);
- `labels`: `Labels`, ground truth for earlier predictions (a device or a person sends them).

The status's `stats` is a `DeviceStats`. Each type has an encoder, `to_body()`, which the
producer uses (so a body is assembled in one place), and a lenient decoder, `from_body(body,
where)`: keys it does not know are ignored (a newer agent may add some), fields an older agent
did not send take their defaults, and a field of the wrong type (null where a number is
expected, a string for a count, NaN) raises MessageError naming where, the field, what was
expected and what arrived. null is accepted only where a field may be null (`X | None`).

`decode(kind, body, where)` picks the type by the record's kind; the hub decodes every body once
on ingest and again (the same way) when it reads stored ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import field, fields
from typing import Any, ClassVar, TypeVar

from edge_agent.errors import MessageError
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.ids import parse_prediction_id
from edge_agent.protocol.inputs import InputState, decode_inputs
from edge_agent.protocol.messages import (
    EVENTS,
    MAX_INT,
    ModelRef,
    Status,
    StorageCondition,
    decode_status,
)

T = TypeVar("T")
DRIFT_STATUSES = ("ok", "warn", "alert")
MAX_LABELS = 10_000  # labels in one record
MAX_WINDOW_ROWS = 10_000  # rows of one telemetry window (the agent's telemetry.window_rows)
Scalar = str | int | float | bool | None  # a prediction or a label, as JSON holds it


# ---- reading fields leniently ---------------------------------------------------------------
def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _wrong(where: str, expected: str, value: object) -> MessageError:
    return MessageError(f"{where}: expected {expected}, got {_type_name(value)} {value!r:.60}")


def _object(value: object, where: str, required: tuple[str, ...] = ()) -> Mapping[str, Any]:
    """`value` as a JSON object holding at least the `required` fields."""
    if type(value) is not dict and not isinstance(value, Mapping):  # JSON's are dicts: no ABC
        raise _wrong(where, "an object", value)
    for key in required:
        if key not in value:
            raise MessageError(f"{where}: missing field {key!r}")
    return value


def _plain(record: Any) -> dict[str, Any]:
    """The body of a record whose fields are all plain JSON values, in field order."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


def _finite(value: object, where: str) -> float:
    if type(value) is float and math.isfinite(value):  # the common case, first
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong(where, "a number", value)
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise _wrong(where, "a finite number", value)
    return number


def _whole(value: object, where: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_INT:  # an int, not a bool (a subclass)
        raise _wrong(where, f"a count from 0 to {MAX_INT}", value)
    return value


def _rate(value: object, where: str) -> float:
    number = _finite(value, where)
    if not 0 <= number <= 1:
        raise _wrong(where, "a number from 0 to 1", value)
    return number


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _wrong(where, "a string", value)
    return value


def _flag(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise _wrong(where, "true or false", value)
    return value


def _scalar(value: object, where: str) -> Scalar:
    if value is not None and not isinstance(value, str | int | float | bool):
        raise _wrong(where, "a string, number, true, false or null", value)
    if isinstance(value, float) and not math.isfinite(value):
        raise _wrong(where, "a finite number", value)
    return value


def _get(
    obj: Mapping[str, Any], key: str, where: str, read: Callable[[object, str], T], default: T
) -> T:
    """obj[key] read by `read`; `default` when absent (null is a value, checked by `read`)."""
    return _named(read, obj[key], where, key) if key in obj else default


def _maybe(
    obj: Mapping[str, Any], key: str, where: str, read: Callable[[object, str], T]
) -> T | None:
    """obj[key] read by `read`; None when absent or null."""
    value = obj.get(key)
    return None if value is None else _named(read, value, where, key)


def _named(read: Callable[[object, str], T], value: object, where: str, key: object) -> T:
    """`read(value, f"{where}.{key}")`, with the name made only when reading fails: readers are
    pure, so the first try is handed `where` alone and a failure is read again to say where.
    A field's name is a string made per field and record: not making them reads a telemetry
    window 10-15% faster (measured side by side with the module before)."""
    try:
        return read(value, where)
    except MessageError:
        pass
    return read(value, f"{where}.{key}")


def _map(read: Callable[[object, str], T]) -> Callable[[object, str], dict[str, T]]:
    """A reader of {name: value} objects whose values `read` reads."""

    def read_map(value: object, where: str) -> dict[str, T]:
        items = _object(value, where).items()
        try:  # as _named: each value's name made only to say where one fails
            return {str(k): read(v, where) for k, v in items}
        except MessageError:
            pass
        return {str(k): read(v, f"{where}.{k}") for k, v in items}

    return read_map


def _list(read: Callable[[object, str], T]) -> Callable[[object, str], tuple[T, ...]]:
    def read_list(value: object, where: str) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise _wrong(where, "a list", value)
        try:  # as _named: each item's place named only to say where one fails
            return tuple([read(v, where) for v in value])
        except MessageError:
            pass
        return tuple(read(v, f"{where}[{i}]") for i, v in enumerate(value))

    return read_list


_numbers = _map(_finite)
_counts = _map(_whole)
_texts = _list(_text)


def _prediction_id(value: object, where: str) -> str:
    return str(parse_prediction_id(value, where))


def _model(value: object, where: str) -> ModelRef:
    return ModelRef.from_json(value, where)


def _storage(value: object, where: str) -> StorageCondition:
    return StorageCondition.from_json(value, where)


def _model_json(model: ModelRef | None) -> dict[str, Any] | None:
    return model.to_json() if model is not None else None


# ---- telemetry ------------------------------------------------------------------------------
@frozen
class WindowInputs:
    """A telemetry window's `inputs`: every source folded into one (edge_agent.protocol.inputs):
    the sums of `lost` and `reopened`, the longest `idle_s`, whether any has `no_input`."""

    lost: int = 0
    reopened: int = 0
    idle_s: float = 0.0
    no_input: bool = False

    @classmethod
    def of(cls, states: Iterable[InputState]) -> WindowInputs:
        states = list(states)
        return cls(
            lost=sum(s.lost for s in states),
            reopened=sum(s.reopened for s in states),
            idle_s=max((s.idle_s for s in states), default=0.0),
            no_input=any(s.no_input for s in states),
        )

    def to_body(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_body(cls, body: object, where: str) -> WindowInputs:
        obj = _object(body, where)
        return cls(
            lost=_get(obj, "lost", where, _whole, 0),
            reopened=_get(obj, "reopened", where, _whole, 0),
            idle_s=_get(obj, "idle_s", where, _finite, 0.0),
            no_input=_get(obj, "no_input", where, _flag, False),
        )


@frozen
class WindowRows:
    """The ids of a window's rows and what the model predicted for each: the window's `count`
    rows are `{device}/{boot}/{first}` ... `{device}/{boot}/{first + count - 1}`
    (edge_agent.protocol.ids), and `predictions[i]` is the model's output for row `first + i`
    (a class label or a value). `predictions` is None when the agent sends none
    (`[telemetry] predictions = false`); then the hub knows the ids, not the outputs."""

    boot: int
    first: int
    predictions: tuple[Scalar, ...] | None = None

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"boot": self.boot, "first": self.first}
        if self.predictions is not None:
            body["predictions"] = list(self.predictions)
        return body

    @classmethod
    def from_body(cls, body: object, where: str) -> WindowRows:
        obj = _object(body, where, ("boot", "first"))
        raw = obj.get("predictions")
        if raw is not None and isinstance(raw, list) and len(raw) > MAX_WINDOW_ROWS:
            raise MessageError(
                f"{where}.predictions: expected at most {MAX_WINDOW_ROWS} rows, got {len(raw)}"
            )
        return cls(
            boot=_whole(obj["boot"], f"{where}.boot"),
            first=_whole(obj["first"], f"{where}.first"),
            predictions=_maybe(obj, "predictions", where, _list(_scalar)),
        )


@frozen
class TelemetryWindow:
    """One window of inference (edge_agent.uplink.telemetry.Window), stamped with the model that
    handled all of it (None: no model). `latency_ms` holds p50/p95/p99 of the rows, `errors`
    the rejected lines per reason, `predictions` the rows per predicted label. The agent adds
    `resources` (edge_agent.system.resources), `inputs`, `dropped` (records its buffer
    dropped past its caps, per kind, ever) and `storage` (while its disk refused writes);
    absent when None. `rows` (`WindowRows`) names the window's rows by id, with each one's
    prediction: absent from agents before prediction ids, and from windows of no inferred row.
    A window holds at most MAX_WINDOW_ROWS rows when it has `rows`. `anomalies` counts the rows an
    anomaly model flagged (its score above the card's threshold); absent for other models.
    `lines` counts the sensor lines a window model's framer took (a window is made of many);
    absent where each line is one inference."""

    KIND: ClassVar[str] = "telemetry"

    window_s: float = 0.0
    model: ModelRef | None = None
    count: int = 0
    latency_ms: Mapping[str, float] = field(default_factory=dict)
    errors: Mapping[str, int] = field(default_factory=dict)
    predictions: Mapping[str, int] = field(default_factory=dict)
    resources: Mapping[str, float] | None = None
    inputs: WindowInputs | None = None
    dropped: Mapping[str, int] | None = None
    storage: StorageCondition | None = None
    rows: WindowRows | None = None
    anomalies: int | None = None
    lines: int | None = None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def inputs_taken(self) -> int:
        """What the error rate divides by: the lines taken, or for a model that infers one
        per line, its inferences."""
        return self.count if self.lines is None else self.lines

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "window_s": self.window_s,
            "model": _model_json(self.model),
            "count": self.count,
            "latency_ms": dict(self.latency_ms),
            "errors": dict(self.errors),
            "predictions": dict(self.predictions),
        }
        if self.resources is not None:
            body["resources"] = dict(self.resources)
        if self.inputs is not None:
            body["inputs"] = self.inputs.to_body()
        if self.dropped is not None:
            body["dropped"] = dict(self.dropped)
        if self.storage is not None:
            body["storage"] = self.storage.to_json()
        if self.rows is not None:
            body["rows"] = self.rows.to_body()
        if self.anomalies is not None:
            body["anomalies"] = self.anomalies
        if self.lines is not None:
            body["lines"] = self.lines
        return body

    @classmethod
    def from_body(cls, body: object, where: str) -> TelemetryWindow:
        obj = _object(body, where)
        window = cls(
            window_s=_get(obj, "window_s", where, _finite, 0.0),
            model=_maybe(obj, "model", where, _model),
            count=_get(obj, "count", where, _whole, 0),
            latency_ms=_get(obj, "latency_ms", where, _numbers, {}),
            errors=_get(obj, "errors", where, _counts, {}),
            predictions=_get(obj, "predictions", where, _counts, {}),
            resources=_maybe(obj, "resources", where, _numbers),
            inputs=_maybe(obj, "inputs", where, WindowInputs.from_body),
            dropped=_maybe(obj, "dropped", where, _counts),
            storage=_maybe(obj, "storage", where, _storage),
            rows=_maybe(obj, "rows", where, WindowRows.from_body),
            anomalies=_maybe(obj, "anomalies", where, _whole),
            lines=_maybe(obj, "lines", where, _whole),
        )
        if window.anomalies is not None and window.anomalies > window.count:
            raise MessageError(
                f"{where}.anomalies: expected at most the window's {window.count} rows, "
                f"got {window.anomalies}"
            )
        rows = window.rows
        if rows is not None:
            if window.count > MAX_WINDOW_ROWS or rows.first + window.count > MAX_INT:
                raise MessageError(
                    f"{where}.rows: expected a window of at most {MAX_WINDOW_ROWS} rows "
                    f"numbered below {MAX_INT}, got {window.count} rows from {rows.first}"
                )
            if rows.predictions is not None and len(rows.predictions) != window.count:
                raise MessageError(
                    f"{where}.rows.predictions: expected one per row ({window.count}), "
                    f"got {len(rows.predictions)}"
                )
        return window


@frozen
class RawSample:
    """A sampled raw row with its prediction (edge_agent.uplink.sampling), a telemetry record of its
    own: `{"raw": {"model": ..., "features": {name: value or null}, "prediction": ...,
    "id": "pi-01/3/1520"}}`. `id` is the row's prediction id (edge_agent.protocol.ids); None
    from agents before prediction ids."""

    KIND: ClassVar[str] = "telemetry"

    model: ModelRef
    features: Mapping[str, float | None]
    prediction: Scalar
    id: str | None = None

    def to_body(self) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "model": self.model.to_json(),
            "features": dict(self.features),
            "prediction": self.prediction,
        }
        if self.id is not None:
            raw["id"] = self.id
        return {"raw": raw}

    @classmethod
    def from_body(cls, body: object, where: str) -> RawSample:
        at = f"{where}.raw"
        raw = _object(_object(body, where).get("raw"), at, ("model",))
        features = _object(raw.get("features", {}), f"{at}.features")
        return cls(
            model=_model(raw["model"], f"{at}.model"),
            features={
                str(k): None if v is None else _finite(v, f"{at}.features.{k}")
                for k, v in features.items()
            },
            prediction=_scalar(raw.get("prediction"), f"{at}.prediction"),
            id=_maybe(raw, "id", at, _prediction_id),
        )


# ---- drift ----------------------------------------------------------------------------------
@frozen
class DriftLevels:
    """The family p-values under which a window warns and alerts: 0 < alert < warn < 1."""

    warn: float
    alert: float

    def to_body(self) -> dict[str, float]:
        return {"warn": self.warn, "alert": self.alert}

    def as_dict(self) -> dict[str, float]:
        return self.to_body()

    @classmethod
    def from_body(cls, body: object, where: str) -> DriftLevels:
        obj = _object(body, where, ("warn", "alert"))
        levels = {}
        for key in ("warn", "alert"):
            value = _finite(obj[key], f"{where}.{key}")
            if not 0 < value < 1:
                raise _wrong(f"{where}.{key}", "a level above 0 and below 1", obj[key])
            levels[key] = value
        if not levels["alert"] < levels["warn"]:
            raise MessageError(
                f"{where}: expected alert below warn, got warn {levels['warn']} "
                f"and alert {levels['alert']}"
            )
        return cls(levels["warn"], levels["alert"])


@frozen
class PredictionDrift:
    """The model's output in a drift window: PSI and JS against the card's prediction profile,
    the chi-square p-value, and the window's counts per class (or per bin of a regressor)."""

    psi: float = 0.0
    js: float = 0.0
    p: float | None = None
    counts: Mapping[str, int] = field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        return {"psi": self.psi, "js": self.js, "p": self.p, "counts": dict(self.counts)}

    @classmethod
    def from_body(cls, body: object, where: str) -> PredictionDrift:
        obj = _object(body, where)
        return cls(
            psi=_get(obj, "psi", where, _finite, 0.0),
            js=_get(obj, "js", where, _finite, 0.0),
            p=_maybe(obj, "p", where, _rate),
            counts=_get(obj, "counts", where, _counts, {}),
        )


@frozen
class AccuracyEstimate:
    """A window's accuracy estimated without labels (edge_agent.drift.monitor): `expected`, the
    card's `reference` and the `change`; `rows` scored and `sum` of their calibrated
    confidences (what the hub adds up across windows and devices)."""

    expected: float
    reference: float
    change: float
    rows: int
    sum: float

    def to_body(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_body(cls, body: object, where: str) -> AccuracyEstimate:
        obj = _object(body, where, ("reference", "rows", "sum"))
        rows = _whole(obj["rows"], f"{where}.rows")
        total = _finite(obj["sum"], f"{where}.sum")
        if rows < 1 or not 0 <= total <= rows:
            raise MessageError(
                f"{where}: expected 1 or more rows and a sum from 0 to rows, "
                f"got rows {rows} and sum {total}"
            )
        reference = _rate(obj["reference"], f"{where}.reference")
        expected = _get(obj, "expected", where, _rate, total / rows)
        return cls(
            expected=expected,
            reference=reference,
            change=_get(obj, "change", where, _finite, expected - reference),
            rows=rows,
            sum=total,
        )


@frozen
class AnomalyRate:
    """An anomaly model's drift window (edge_agent.drift.monitor): `anomalies` of its `rows`
    flagged (score above the card's threshold), their `rate`, the card's `reference` rate, and
    `p`, how sure the window is that the rate rose above the reference's (Fisher's exact test,
    one-sided)."""

    rows: int
    anomalies: int
    rate: float
    reference: float
    p: float

    def to_body(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_body(cls, body: object, where: str) -> AnomalyRate:
        obj = _object(body, where, ("rows", "anomalies", "reference"))
        rows = _whole(obj["rows"], f"{where}.rows")
        anomalies = _whole(obj["anomalies"], f"{where}.anomalies")
        if rows < 1 or anomalies > rows:
            raise MessageError(
                f"{where}: expected 1 or more rows and at most as many anomalies, "
                f"got {anomalies} anomalies of {rows} rows"
            )
        return cls(
            rows=rows,
            anomalies=anomalies,
            rate=_get(obj, "rate", where, _rate, anomalies / rows),
            reference=_rate(obj["reference"], f"{where}.reference"),
            p=_get(obj, "p", where, _rate, 1.0),
        )


def _bins(value: object, where: str) -> tuple[int, ...]:
    return _list(_whole)(value, where)


@frozen
class WindowCounts:
    """A drift window's rows and, per feature, its counts over the card's quantile bins."""

    rows: int
    bins: Mapping[str, tuple[int, ...]]

    def to_body(self) -> dict[str, Any]:
        return {"rows": self.rows, "bins": {k: list(v) for k, v in self.bins.items()}}

    @classmethod
    def from_body(cls, body: object, where: str) -> WindowCounts:
        obj = _object(body, where, ("rows",))
        return cls(
            rows=_whole(obj["rows"], f"{where}.rows"),
            bins=_get(obj, "bins", where, _map(_bins), {}),
        )


@frozen
class CategoryCounts:
    """A categorical feature's drift window by its texts: rows per category (those the window
    saw), and rows whose text was none of the card's categories."""

    counts: Mapping[str, int]
    unknown: int = 0

    def to_body(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "unknown": self.unknown}

    @classmethod
    def from_body(cls, body: object, where: str) -> CategoryCounts:
        obj = _object(body, where)
        return cls(
            counts=_get(obj, "counts", where, _map(_whole), {}),
            unknown=_get(obj, "unknown", where, _whole, 0),
        )


@frozen
class Capture:
    """The latest inputs of an alerting window, when the device's profile allows it."""

    features: tuple[str, ...]
    rows: tuple[tuple[float, ...], ...]

    def to_body(self) -> dict[str, Any]:
        return {"features": list(self.features), "rows": [list(r) for r in self.rows]}

    @classmethod
    def from_body(cls, body: object, where: str) -> Capture:
        obj = _object(body, where)
        none: tuple[Any, ...] = ()
        features = _get(obj, "features", where, _texts, none)
        rows = _get(obj, "rows", where, _list(_list(_finite)), none)
        for i, row in enumerate(rows):
            if len(row) != len(features):
                raise MessageError(
                    f"{where}.rows[{i}]: expected {len(features)} values (one per feature), "
                    f"got {len(row)}"
                )
        return cls(features, rows)


def _status(value: object, where: str) -> str:
    if value not in DRIFT_STATUSES:
        raise _wrong(where, f"one of {', '.join(DRIFT_STATUSES)}", value)
    return str(value)


@frozen
class DriftReport:
    """One drift window (edge_agent.drift.monitor says what each field means).

    Older agents sent less: before p-values a report had only `psi`, `max_psi`,
    `worst_feature` and a `status` from fixed PSI bands (then `p`, `levels` and `scale` are
    None); before `moved` existed, `moved` is None (`features_moved` falls back on the worst
    feature of a window that was not ok); before window counts, `counts` is None. `anomaly`
    is there for an anomaly model only, `categories` for a model with categorical features."""

    KIND: ClassVar[str] = "drift"

    model: ModelRef | None = None
    window: int = 0
    status: str = "ok"
    p: float | None = None
    scale: int | None = None
    levels: DriftLevels | None = None
    psi: Mapping[str, float] = field(default_factory=dict)
    max_psi: float = 0.0
    worst_feature: str | None = None
    p_values: Mapping[str, float] = field(default_factory=dict)
    q: Mapping[str, float] = field(default_factory=dict)
    ks: Mapping[str, float] = field(default_factory=dict)
    js: Mapping[str, float] = field(default_factory=dict)
    out_of_range: Mapping[str, float] = field(default_factory=dict)
    missing: Mapping[str, float] = field(default_factory=dict)
    missing_rows: int = 0
    prediction: PredictionDrift | None = None
    accuracy: AccuracyEstimate | None = None
    anomaly: AnomalyRate | None = None
    moved: tuple[str, ...] | None = None
    counts: WindowCounts | None = None
    notes: tuple[str, ...] = ()
    capture: Capture | None = None
    categories: Mapping[str, CategoryCounts] = field(default_factory=dict)
    sampled_from: int | None = None  # rows the window was drawn from, when the rate floor sampled

    @property
    def features_moved(self) -> tuple[str, ...]:
        """The features that moved; for a report from before `moved`, the worst feature of a
        window that warned or alerted."""
        if self.moved is not None:
            return self.moved
        if self.status != "ok" and self.worst_feature is not None:
            return (self.worst_feature,)
        return ()

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": _model_json(self.model),
            "window": self.window,
            "status": self.status,
            "p": self.p,
            "scale": self.scale,
            "levels": self.levels.to_body() if self.levels is not None else None,
            "psi": dict(self.psi),
            "max_psi": self.max_psi,
            "worst_feature": self.worst_feature,
            "p_values": dict(self.p_values),
            "q": dict(self.q),
            "ks": dict(self.ks),
            "js": dict(self.js),
            "out_of_range": dict(self.out_of_range),
            "missing": dict(self.missing),
            "missing_rows": self.missing_rows,
            "prediction": self.prediction.to_body() if self.prediction is not None else None,
            "accuracy": self.accuracy.to_body() if self.accuracy is not None else None,
            "moved": list(self.moved) if self.moved is not None else None,
            "counts": self.counts.to_body() if self.counts is not None else None,
        }
        if self.notes:
            body["notes"] = list(self.notes)
        if self.capture is not None:
            body["capture"] = self.capture.to_body()
        if self.anomaly is not None:
            body["anomaly"] = self.anomaly.to_body()
        if self.categories:
            body["categories"] = {k: v.to_body() for k, v in self.categories.items()}
        if self.sampled_from is not None:
            body["sampled_from"] = self.sampled_from
        return body

    @classmethod
    def from_body(cls, body: object, where: str) -> DriftReport:
        obj = _object(body, where)
        psi: dict[str, float] = _get(obj, "psi", where, _numbers, {})
        return cls(
            model=_maybe(obj, "model", where, _model),
            window=_get(obj, "window", where, _whole, 0),
            status=_get(obj, "status", where, _status, "ok"),
            p=_maybe(obj, "p", where, _rate),
            scale=_maybe(obj, "scale", where, _whole),
            levels=_maybe(obj, "levels", where, DriftLevels.from_body),
            psi=psi,
            max_psi=_get(obj, "max_psi", where, _finite, max(psi.values(), default=0.0)),
            worst_feature=_maybe(obj, "worst_feature", where, _text),
            p_values=_get(obj, "p_values", where, _map(_rate), {}),
            q=_get(obj, "q", where, _map(_rate), {}),
            ks=_get(obj, "ks", where, _numbers, {}),
            js=_get(obj, "js", where, _numbers, {}),
            out_of_range=_get(obj, "out_of_range", where, _numbers, {}),
            missing=_get(obj, "missing", where, _numbers, {}),
            missing_rows=_get(obj, "missing_rows", where, _whole, 0),
            prediction=_maybe(obj, "prediction", where, PredictionDrift.from_body),
            accuracy=_maybe(obj, "accuracy", where, AccuracyEstimate.from_body),
            moved=_maybe(obj, "moved", where, _texts),
            counts=_maybe(obj, "counts", where, WindowCounts.from_body),
            notes=_get(obj, "notes", where, _texts, ()),
            capture=_maybe(obj, "capture", where, Capture.from_body),
            anomaly=_maybe(obj, "anomaly", where, AnomalyRate.from_body),
            categories=_get(obj, "categories", where, _map(CategoryCounts.from_body), {}),
            sampled_from=_maybe(obj, "sampled_from", where, _whole),
        )


# ---- events ---------------------------------------------------------------------------------
@frozen
class ShadowReport:
    """A shadow run's comparison over `rows` live rows (edge_agent.inference.shadow): the share
    on which the candidate agreed with the serving model (`current`), the rows it failed on, and the
    latency percentiles of both (`latency_ms`: {"current": {...}, "candidate": {...}})."""

    current: ModelRef | None
    rows: int
    agreement: float
    errors: int = 0
    latency_ms: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        return {
            "current": _model_json(self.current),
            "rows": self.rows,
            "agreement": self.agreement,
            "errors": self.errors,
            "latency_ms": {k: dict(v) for k, v in self.latency_ms.items()},
        }

    @classmethod
    def from_body(cls, body: object, where: str) -> ShadowReport:
        obj = _object(body, where, ("rows", "agreement"))
        return cls(
            current=_maybe(obj, "current", where, _model),
            rows=_whole(obj["rows"], f"{where}.rows"),
            agreement=_rate(obj["agreement"], f"{where}.agreement"),
            errors=_get(obj, "errors", where, _whole, 0),
            latency_ms=_get(obj, "latency_ms", where, _map(_numbers), {}),
        )


def _event(value: object, where: str) -> str:
    if value not in EVENTS:
        raise _wrong(where, f"one of {', '.join(EVENTS)}", value)
    return str(value)


@frozen
class DeviceEvent:
    """What the updater did about a model (EVENTS), for which rollout, and why; a
    shadow-report carries its `ShadowReport`."""

    KIND: ClassVar[str] = "events"

    event: str
    model: ModelRef | None = None
    reason: str = ""
    rollout: str | None = None
    shadow: ShadowReport | None = None

    def __post_init__(self) -> None:
        _event(self.event, "event")

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "event": self.event,
            "model": _model_json(self.model),
            "reason": self.reason,
            "rollout": self.rollout,
        }
        if self.shadow is not None:
            body["shadow"] = self.shadow.to_body()
        return body

    @classmethod
    def from_body(cls, body: object, where: str) -> DeviceEvent:
        obj = _object(body, where, ("event",))
        return cls(
            event=_event(obj["event"], f"{where}.event"),
            model=_maybe(obj, "model", where, _model),
            reason=_maybe(obj, "reason", where, _text) or "",
            rollout=_maybe(obj, "rollout", where, _text),
            shadow=_maybe(obj, "shadow", where, ShadowReport.from_body),
        )


# ---- labels ---------------------------------------------------------------------------------
@frozen
class Labels:
    """Ground truth for earlier predictions, on dev/{id}/labels: (prediction id, true label)
    pairs, sent by the device or by a person who knows the answer."""

    KIND: ClassVar[str] = "labels"

    labels: tuple[tuple[str, Scalar], ...]

    def to_body(self) -> dict[str, Any]:
        return {"labels": [{"prediction": p, "label": label} for p, label in self.labels]}

    @classmethod
    def from_body(cls, body: object, where: str) -> Labels:
        obj = _object(body, where)
        raw = obj.get("labels")
        if not isinstance(raw, list):
            raise _wrong(f"{where}.labels", "a list of {prediction, label}", raw)
        if len(raw) > MAX_LABELS:
            raise MessageError(
                f"{where}.labels: expected at most {MAX_LABELS} labels, got {len(raw)}"
            )
        pairs = []
        for i, item in enumerate(raw):
            at = f"{where}.labels[{i}]"
            entry = _object(item, at)
            if "prediction" not in entry or "label" not in entry:
                raise MessageError(f"{at}: expected both 'prediction' and 'label'")
            pairs.append(
                (
                    _text(entry["prediction"], f"{at}.prediction"),
                    _scalar(entry["label"], f"{at}.label"),
                )
            )
        return cls(tuple(pairs))


# ---- the status's stats ---------------------------------------------------------------------
@frozen
class DeviceStats:
    """`stats` of a device's status: since it started, the rows it inferred, the lines it
    rejected per reason, latency percentiles, records sent per kind, buffered now and dropped
    past the caps, messages it rejected, its storage (a StorageCondition) and its inputs."""

    inferences: int = 0
    rejected: Mapping[str, int] = field(default_factory=dict)
    latency_ms: Mapping[str, float] = field(default_factory=dict)
    sent: Mapping[str, int] = field(default_factory=dict)
    buffered: int = 0
    dropped: Mapping[str, int] = field(default_factory=dict)
    bad_messages: int = 0
    storage: StorageCondition | None = None
    inputs: tuple[InputState, ...] = ()

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "inferences": self.inferences,
            "rejected": dict(self.rejected),
            "latency_ms": dict(self.latency_ms),
            "sent": dict(self.sent),
            "buffered": self.buffered,
            "dropped": dict(self.dropped),
            "bad_messages": self.bad_messages,
        }
        if self.storage is not None:
            body["storage"] = self.storage.to_json()
        body["inputs"] = [s.to_json() for s in self.inputs]
        return body

    @classmethod
    def from_body(cls, body: object, where: str) -> DeviceStats:
        obj = _object(body, where)
        return cls(
            inferences=_get(obj, "inferences", where, _whole, 0),
            rejected=_get(obj, "rejected", where, _counts, {}),
            latency_ms=_get(obj, "latency_ms", where, _numbers, {}),
            sent=_get(obj, "sent", where, _counts, {}),
            buffered=_get(obj, "buffered", where, _whole, 0),
            dropped=_get(obj, "dropped", where, _counts, {}),
            bad_messages=_get(obj, "bad_messages", where, _whole, 0),
            storage=_maybe(obj, "storage", where, _storage),
            inputs=_get(obj, "inputs", where, decode_inputs, ()),
        )


# ---- by kind --------------------------------------------------------------------------------
Body = TelemetryWindow | RawSample | DriftReport | DeviceEvent | Labels
KINDS = ("telemetry", "drift", "events", "labels")


def decode(kind: str, body: object, where: str) -> Body:
    """A record body of `kind` (the topic it came on) -> its type; MessageError if it does not
    decode. A telemetry body with `raw` is a RawSample, any other a TelemetryWindow."""
    if kind == "telemetry":
        if isinstance(body, Mapping) and "raw" in body:
            return RawSample.from_body(body, where)
        return TelemetryWindow.from_body(body, where)
    if kind == "drift":
        return DriftReport.from_body(body, where)
    if kind == "events":
        return DeviceEvent.from_body(body, where)
    if kind == "labels":
        return Labels.from_body(body, where)
    raise MessageError(f"{where}: expected a record kind of {', '.join(KINDS)}, got {kind!r}")


def decode_checked_status(payload: bytes) -> Status:
    """A device's status with its `stats` checked as `DeviceStats` (kept as sent, unknown keys
    too): what the hub and the agent's own tools read."""
    status = decode_status(payload)
    DeviceStats.from_body(status.stats, "status.stats")
    return status
