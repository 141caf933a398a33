"""Wave gates of a staged rollout: thresholds, what the model did on the devices, the verdict.

Pure values and functions: the hub reads the stored records, `after_install` keeps what each
device recorded with the candidate after it installed it, `measure` sums that up, and `judge`
turns install results and those measurements into proceed, pause or abort.

A device's records are ordered by their (boot, seq), one sequence for everything it records, so
"after the install" is read from the device's own order, not from clocks: what it reported
late (buffered while offline, a window still open at the install) or what a model did on it
before this rollout never counts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, field
from typing import Any, Protocol, TypeVar

from cloud_hub.drift.fleet import pooled_accuracy
from edge_agent.errors import ConfigError
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.records import DriftReport, ShadowReport, TelemetryWindow

PROCEED, PAUSE, ABORT = "proceed", "pause", "abort"
ON_FAIL = (ABORT, PAUSE)
_COUNT = re.compile(r"[0-9]{1,9}")
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(s|m|h)?")
_UNIT_S = {"s": 1, "m": 60, "h": 3600}


@frozen
class Threshold:
    """A number of devices (`3`) or a share of them (`10%`)."""

    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: str, what: str) -> Threshold:
        spec = text.strip()
        if _COUNT.fullmatch(spec):
            return cls(count=int(spec))
        if spec.endswith("%"):
            try:
                percent = float(spec[:-1])
            except ValueError:
                percent = math.nan
            if 0 <= percent <= 100:  # also refuses nan and inf
                return cls(percent=percent)
        raise ConfigError(
            f"{what}: expected a count like 2 or a percent like 10% (0 to 100%), got {text!r}"
        )

    def floor(self, n: int) -> int:
        """At most this many of n (a share rounds down: 10% of 5 devices allows 0)."""
        if self.count is not None:
            return self.count
        return math.floor(n * (self.percent or 0.0) / 100 + 1e-9)

    def ceil(self, n: int) -> int:
        """At least this many of n (a share rounds up: 10% of 5 devices is 1), capped at n."""
        if self.count is not None:
            return min(self.count, n)
        return min(n, math.ceil(n * (self.percent or 0.0) / 100 - 1e-9))

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{self.percent:g}%"

    def to_json(self) -> str:
        return str(self)


def parse_duration(text: str, what: str) -> float:
    """`90`, `90s`, `5m` or `1h` -> seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ConfigError(f"{what}: expected a duration like 30s, 5m or 1h, got {text!r}")
    return float(match[1]) * _UNIT_S[match[2] or "s"]


@frozen
class Gates:
    """What a wave must show after its soak time before the next wave starts."""

    max_failure: Threshold = Threshold(count=0)
    min_success: Threshold = Threshold(count=0)  # healthy, of the devices that answered
    soak_s: float = 0.0
    max_p95_ms: float | None = None
    max_error_rate: float | None = None  # telemetry errors / inputs taken (Metrics.error_rate)
    max_psi: float | None = None
    max_accuracy_drop: float | None = None  # expected accuracy (no labels) below the card's
    min_agreement: float | None = None  # with the serving model, from shadow reports
    on_fail: str = ABORT

    def __post_init__(self) -> None:
        if self.on_fail not in ON_FAIL:
            raise ConfigError(f"--on-fail: expected abort or pause, got {self.on_fail!r}")
        if not 0 <= self.soak_s < math.inf:
            raise ConfigError(f"--soak: expected a duration of 0 or more, got {self.soak_s}")
        limits = {
            "--max-p95-ms": (self.max_p95_ms, math.inf),
            "--max-error-rate": (self.max_error_rate, 1.0),
            "--max-psi": (self.max_psi, math.inf),
            "--max-accuracy-drop": (self.max_accuracy_drop, 1.0),
            "--min-agreement": (self.min_agreement, 1.0),
        }
        for flag, (value, top) in limits.items():
            if value is not None and not 0 <= value <= top:  # also refuses nan
                raise ConfigError(f"{flag}: expected a number from 0 to {top:g}, got {value!r}")
        if self.soak_s == 0 and self.watches_telemetry:
            raise ConfigError(
                "--soak: the latency, error-rate and drift gates read telemetry sent after the "
                "install; give the devices a soak time (for example --soak 5m)"
            )

    @property
    def watches_telemetry(self) -> bool:
        watched = (self.max_p95_ms, self.max_error_rate, self.max_psi, self.max_accuracy_drop)
        return any(v is not None for v in watched)

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["max_failure"] = str(self.max_failure)
        body["min_success"] = str(self.min_success)
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Gates:
        return cls(
            **{
                **body,
                "max_failure": Threshold.parse(body["max_failure"], "max_failure"),
                "min_success": Threshold.parse(body["min_success"], "min_success"),
            }
        )


Position = tuple[int, int]  # (boot, seq): where a record stands in its device's own sequence


class DeviceRecord(Protocol):
    """Where a stored device record sits in its device's order."""

    @property
    def device(self) -> str: ...
    @property
    def boot(self) -> int: ...
    @property
    def seq(self) -> int: ...


class OfModel(Protocol):
    """A typed record that says which model it is about."""

    @property
    def model(self) -> ModelRef | None: ...


R = TypeVar("R", bound=OfModel)


def after_install(
    records: Iterable[tuple[DeviceRecord, R]], model: ModelRef, installed: Mapping[str, Position]
) -> dict[str, list[R]]:
    """Per device of `installed` (device -> the position of its install), the records it made
    after that position that say they are `model`'s (a telemetry window holds what one model
    handled: edge_agent.inference.pipeline)."""
    out: dict[str, list[R]] = {}
    for rec, record in records:
        mark = installed.get(rec.device)
        if mark is not None and (rec.boot, rec.seq) > mark and record.model == model:
            out.setdefault(rec.device, []).append(record)
    return out


@frozen
class Metrics:
    """What the candidate model did on a wave's devices since each of them installed it."""

    windows: int = 0  # telemetry records of the model
    inferences: int = 0
    # inputs taken: lines for a window model (many make one inference); None: the inferences
    taken: int | None = None
    errors: int = 0
    p95_ms: float | None = None  # the worst device's inference-weighted mean of window p95s
    drift_reports: int = 0
    max_psi: float | None = None  # the highest PSI any device reported
    accuracy_drop: float | None = None  # the largest drop of a device's expected accuracy
    shadow_rows: int = 0
    agreement: float | None = None  # row-weighted, over the wave's shadow reports
    # the device each worst-device figure is of (p95_ms, max_psi, accuracy_drop), so a halt
    # names it: one device busy with other work, or the model everywhere
    worst: Mapping[str, str] = field(default_factory=dict)

    @property
    def error_rate(self) -> float | None:
        taken = self.inferences if self.taken is None else self.taken
        if taken == 0:
            return math.inf if self.errors else None
        return self.errors / taken


def measure(
    telemetry: Mapping[str, Sequence[TelemetryWindow]],
    drift: Mapping[str, Sequence[DriftReport]],
    shadow: Mapping[str, Sequence[ShadowReport]] | None = None,
) -> Metrics:
    """Per-device typed records (telemetry windows, drift reports, the shadow reports of
    shadow-report events) -> Metrics.

    A device's expected accuracy is pooled over its drift reports (their sums of calibrated
    confidences over their scored rows, so a short window weighs what it holds); its drop is
    the card's value less that, and `accuracy_drop` the largest drop of any device."""
    p95s: list[tuple[float, str]] = []
    inferences = taken = errors = windows = 0
    for device, device_windows in telemetry.items():
        weighted = weight = 0.0
        for w in device_windows:
            windows += 1
            inferences += w.count
            taken += w.inputs_taken
            errors += w.error_count
            p95 = w.latency_ms.get("p95")
            if p95 is not None and w.count > 0:
                weighted += p95 * w.count
                weight += w.count
        if weight:
            p95s.append((weighted / weight, device))
    psis = [(report.max_psi, device) for device, reports in drift.items() for report in reports]
    drops = [
        (drop, device)
        for device, reports in drift.items()
        if (drop := _accuracy_drop(reports)) is not None
    ]
    figures = (("p95_ms", p95s), ("max_psi", psis), ("accuracy_drop", drops))
    worst = {name: max(values)[1] for name, values in figures if values}
    rows = 0
    agreeing = 0.0
    for device_reports in (shadow or {}).values():
        for report in device_reports:
            if report.rows > 0:
                rows += report.rows
                agreeing += report.agreement * report.rows
    return Metrics(
        windows=windows,
        inferences=inferences,
        taken=taken,
        errors=errors,
        p95_ms=max(p95s)[0] if p95s else None,
        drift_reports=len(psis),
        max_psi=max(psis)[0] if psis else None,
        accuracy_drop=max(drops)[0] if drops else None,
        shadow_rows=rows,
        agreement=agreeing / rows if rows else None,
        worst=worst,
    )


def _accuracy_drop(reports: Sequence[DriftReport]) -> float | None:
    """The card's expected accuracy less one device's, pooled over its drift reports (None
    when none of them estimates accuracy)."""
    pooled = pooled_accuracy(reports)
    return None if pooled is None else -pooled["change"]


@frozen
class Check:
    name: str
    value: float | None
    limit: float
    ok: bool | None  # None: no data to judge

    def to_json(self) -> dict[str, Any]:
        value = None if self.value is None or not math.isfinite(self.value) else self.value
        return {"name": self.name, "value": value, "limit": self.limit, "ok": self.ok}


@frozen
class Verdict:
    outcome: str  # proceed, pause or abort
    reason: str = ""
    checks: list[Check] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "reason": self.reason,
            "checks": [c.to_json() for c in self.checks],
        }


def judge_installs(gates: Gates, size: int, healthy: int, failed: int, answered: int) -> Verdict:
    """Install results of a wave of `size` devices, `answered` of which said how it went."""
    allowed = gates.max_failure.floor(size)
    needed = gates.min_success.ceil(answered)
    checks = [
        Check("failures", failed, allowed, failed <= allowed),
        Check("healthy", healthy, needed, healthy >= needed),
    ]
    if failed > allowed:
        return Verdict(
            gates.on_fail,
            f"{failed} of {size} device(s) failed, at most {gates.max_failure} allowed",
            checks,
        )
    if healthy < needed:
        return Verdict(
            PAUSE,
            f"{healthy} of {answered} answering device(s) healthy, at least "
            f"{gates.min_success} needed",
            checks,
        )
    return Verdict(PROCEED, "", checks)


MODEL_CHECKS = ("p95_ms", "error_rate", "max_psi", "accuracy_drop")
SHADOW_CHECKS = ("agreement",)


def judge_model(gates: Gates, metrics: Metrics, names: tuple[str, ...] = MODEL_CHECKS) -> Verdict:
    """What the model did on the wave (or, for SHADOW_CHECKS, next to the serving model),
    against the limits that were set."""
    every: list[tuple[str, float | None, float | None, bool]] = [
        ("p95_ms", metrics.p95_ms, gates.max_p95_ms, True),
        ("error_rate", metrics.error_rate, gates.max_error_rate, True),
        ("max_psi", metrics.max_psi, gates.max_psi, True),
        ("accuracy_drop", metrics.accuracy_drop, gates.max_accuracy_drop, True),
        ("agreement", metrics.agreement, gates.min_agreement, False),
    ]
    specs = [spec for spec in every if spec[0] in names]
    checks: list[Check] = []
    broken: list[str] = []
    missing: list[str] = []
    for name, value, limit, is_max in specs:
        if limit is None:
            continue
        if value is None:
            checks.append(Check(name, None, limit, None))
            missing.append(name)
            continue
        ok = value <= limit if is_max else value >= limit
        checks.append(Check(name, value, limit, ok))
        if not ok:
            shown = "none" if not math.isfinite(value) else f"{value:.4g}"
            relation = "above" if is_max else "below"
            device = metrics.worst.get(name)
            on = f" (device {device})" if device else ""
            broken.append(f"{name} {shown}{on} {relation} the limit {limit:g}")
    if broken:
        return Verdict(gates.on_fail, "; ".join(broken), checks)
    if missing:
        return Verdict(
            PAUSE,
            f"no data for {', '.join(missing)} after the soak; resume to proceed without it",
            checks,
        )
    return Verdict(PROCEED, "", checks)
