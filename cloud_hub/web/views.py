"""What the dashboard shows, computed from stored rows: plain values in, plain values out.

Record bodies are read typed (edge_agent.protocol.records, through
`cloud_hub.store.database.typed`): a stored row that does not decode (stored by a hub before it
checked bodies) is left out, and a field an older agent did not send shows as null.
A device's row in the registry (its status's stats) is read field by field: a value that is not
what it should be shows as null.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cloud_hub.drift import fleet as fleet_drift
from cloud_hub.rollout.gates import Gates, Metrics, judge_installs, judge_model
from cloud_hub.store.database import (
    FleetBucket,
    StoredRecord,
    readable_stats,
    stats_of,
    typed,
)
from edge_agent.drift import DEFAULT_ALERT_EVERY, DEFAULT_WARN_EVERY, levels
from edge_agent.errors import ConfigError
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.inputs import describe
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.records import DeviceStats, DriftReport, TelemetryWindow

# The device side's defaults (firmware_configs/base.toml [drift]); a cell is coloured by these.
# the fixed PSI bands, only for reports of agents from before calibrated drift (no "levels")
PSI_WARN = 0.1
PSI_ALERT = 0.25
DEFAULT_LEVELS = levels(DEFAULT_WARN_EVERY, DEFAULT_ALERT_EVERY)


def number(value: object) -> float | None:
    """A finite int or float, else None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    result = float(value)
    return result if math.isfinite(result) else None


def count(value: object) -> int:
    """A non-negative whole count, else 0."""
    n = number(value)
    return int(n) if n is not None and n >= 0 else 0


def counts(value: object) -> dict[str, int]:
    """A {reason: n} object; entries that are not counts are left out."""
    if not isinstance(value, Mapping):
        return {}
    return {str(k): count(v) for k, v in value.items() if number(v) is not None}


def mapping(value: object) -> Mapping[str, Any]:
    """An object, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def model_label(model: object) -> str | None:
    """`name@version` of a ModelRef (or its json, as a stored rollout holds it), None when
    there is none."""
    if isinstance(model, ModelRef):
        return str(model)
    if isinstance(model, Mapping) and "name" in model:
        return f"{model['name']}@{model.get('version', '?')}"
    return None


def window_of(rec: StoredRecord | None) -> TelemetryWindow | None:
    """A stored telemetry record as a window (None for a raw sample or one that does not
    decode)."""
    return next((w for _, w in typed([rec], TelemetryWindow)), None) if rec else None


def report_of(rec: StoredRecord | None) -> DriftReport | None:
    """A stored drift record as a report (None for one that does not decode)."""
    return next((r for _, r in typed([rec], DriftReport)), None) if rec else None


def level(psi: float, warn: float = PSI_WARN, alert: float = PSI_ALERT) -> str:
    return "alert" if psi >= alert else "warn" if psi >= warn else "ok"


# ---- fleet ----------------------------------------------------------------------------------
def input_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """A device's inputs: the phrase for people ("ok", "no input 75s", "port lost x3") and each
    source as the device reported it."""
    stats = readable_stats(row)
    if stats is None:
        return {"input": "unreadable", "inputs": []}
    return {
        "input": describe(stats.inputs, online=bool(row.get("online"))),
        "inputs": [s.to_json() for s in stats.inputs],
    }


def device_row(
    row: Mapping[str, Any], telemetry: StoredRecord | None, drift: StoredRecord | None
) -> dict[str, Any]:
    stats = stats_of(row)
    last_seen = number(row.get("last_seen")) or None
    window, report = window_of(telemetry), report_of(drift)
    status = "online" if row.get("online") else "offline" if last_seen else "never seen"
    view = {
        "id": row["id"],
        "status": status,
        "online": bool(row.get("online")),
        "profile": row.get("profile") or "",
        "model": row.get("model"),
        "version": row.get("version"),
        "agent_version": row.get("agent_version") or "",
        "boot": count(row.get("boot")),
        "last_seen": last_seen,
        "inferences": stats.inferences,
        "dropped": sum(stats.dropped.values()),
        "refused": counts(row.get("refused")),
        "buffered": stats.buffered,
        **input_view(row),
        "latency_p95_ms": window.latency_ms.get("p95") if window else None,
        "drift_status": report.status if report else None,
        "drift_max_psi": report.max_psi if report else None,
        "worst_feature": report.worst_feature if report else None,
        "storage": device_storage(stats),
    }
    view["severity"], view["concerns"] = severity(view)
    return view


def device_storage(stats: DeviceStats) -> dict[str, Any] | None:
    """What the device last said of its own state folder and buffer (a full or read-only disk,
    the records it could not keep); None when it said nothing (an agent from before the
    report) or its stats do not decode."""
    c = stats.storage
    if c is None:
        return None
    return {
        "ok": c.ok,
        "error": c.error,
        "reasons": list(c.reasons),
        "since": c.since,
        "unkept": dict(c.unkept),
    }


# ---- telemetry ------------------------------------------------------------------------------
def telemetry_points(records: Iterable[StoredRecord]) -> list[dict[str, Any]]:
    """The telemetry windows among `records` (not the raw samples), one point each."""
    return [telemetry_point(rec, window) for rec, window in typed(records, TelemetryWindow)]


def telemetry_point(rec: StoredRecord, window: TelemetryWindow) -> dict[str, Any]:
    n, seconds = window.count, window.window_s
    return {
        "ts": rec.ts,
        "model": model_label(window.model),
        "window_s": seconds,
        "count": n,
        "throughput_per_s": round(n / seconds, 3) if seconds else None,
        "latency_ms": {q: window.latency_ms.get(q) for q in ("p50", "p95", "p99")},
        "errors": window.error_count,
        "errors_by_reason": dict(window.errors),
    }


# ---- drift ----------------------------------------------------------------------------------
def drift_map(
    latest: Mapping[str, StoredRecord],
    model: str | None = None,
    devices: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The heat map: one row per device (its newest drift report), one column per feature;
    only these `devices` when given (a page of the fleet table), in their order."""
    features: dict[str, None] = {}  # first-seen order, so columns follow the model card
    rows = []
    chosen = sorted(latest) if devices is None else [d for d in devices if d in latest]
    for rec, report in typed((latest[d] for d in chosen), DriftReport):
        if model is not None and (report.model is None or report.model.name != model):
            continue
        psi = dict(report.psi)
        features.update(dict.fromkeys(psi))
        report_levels = report.levels.as_dict() if report.levels is not None else None
        rows.append(
            {
                "device": rec.device,
                "model": model_label(report.model),
                "ts": rec.ts,
                "status": report.status,
                "max_psi": report.max_psi,
                "psi": psi,
                "levels": {
                    f: fleet_drift.feature_level(report.q.get(f), report_levels)
                    if report_levels
                    else level(v)
                    for f, v in psi.items()
                },
            }
        )
    # cells are coloured by each feature's adjusted p-value (q) against the report's levels
    return {"features": list(features), "rows": rows, "thresholds": DEFAULT_LEVELS}


def drift_series(
    records: Iterable[StoredRecord], feature: str | None = None
) -> dict[str, list[dict[str, float]]]:
    """PSI over time, per feature."""
    series: dict[str, list[dict[str, float]]] = {}
    for rec, report in typed(records, DriftReport):
        for name, value in report.psi.items():
            if feature is None or name == feature:
                series.setdefault(name, []).append({"ts": rec.ts, "psi": value})
    return series


def fleet_drift_map(result: Mapping[str, Any]) -> dict[str, Any]:
    """The fleet heat map, one per model version: cohorts as rows (the fleet on top), features
    as columns; each cell's level is its adjusted value (q) against the levels, its score
    -log10 p (0: nothing seen; 2: p = 0.01; higher is surer)."""
    models: dict[str, dict[str, Any]] = {}
    for r in result["rows"]:
        label = f"{r['model']}@{r['version']}"
        entry = models.setdefault(label, {"model": label, "features": [], "rows": []})
        for f in r["p_values"]:
            if f not in entry["features"]:
                entry["features"].append(f)
        cells = {
            f: {
                "p": p,
                "q": r["q"].get(f),
                "psi": r["psi"].get(f),
                "score": fleet_drift.minus_log10(p),
                "level": fleet_drift.feature_level(r["q"].get(f), r["levels"]),
            }
            for f, p in r["p_values"].items()
        }
        keep = ("cohort", "status", "p", "devices", "windows", "rows", "reference_rows")
        entry["rows"].append(
            {k: r[k] for k in keep}
            | {
                "score": fleet_drift.minus_log10(r["p"]),
                "moved": list(r["moved"]),
                "skipped": dict(r["skipped"]),
                "note": r["note"],
                "cells": cells,
            }
        )
    return {"now": result["now"], "since_s": result["since_s"], "models": list(models.values())}


# ---- rollouts -------------------------------------------------------------------------------
def rollout_view(
    row: Mapping[str, Any], now: float | None = None, measured: Metrics | None = None
) -> dict[str, Any]:
    """A stored rollout, read generically: the engine may add keys the page does not know.
    `checks` holds each wave's gate as a table (`gate_checks`), `soak` the current wave's soak
    clock at `now` (None: not soaking); `measured` is what the model did on the soaking wave so
    far, for its live checks."""
    body = mapping(row.get("body"))
    states = mapping(body.get("devices"))
    reasons = mapping(body.get("reasons"))
    raw_waves = body.get("waves")
    waves = []
    for i, wave in enumerate(raw_waves if isinstance(raw_waves, list) else []):
        members = [str(d) for d in wave] if isinstance(wave, list) else []
        devices = [
            {"id": d, "state": str(states.get(d, "unknown")), "reason": str(reasons.get(d, ""))}
            for d in members
        ]
        waves.append({"number": i + 1, "state": _wave_state(devices), "devices": devices})
    clock = soak_clock(body, row["state"], now)
    if clock is not None and waves[clock["wave"] - 1]["state"] == "done":
        waves[clock["wave"] - 1]["state"] = "soaking"  # all healthy, not judged yet
    progress: dict[str, int] = {}
    for state in states.values():
        progress[str(state)] = progress.get(str(state), 0) + 1
    wave = body.get("wave")
    gates = {k: body[k] for k in ("gates", "gate_results") if k in body}
    stages = body.get("stages")
    if isinstance(stages, list):  # the engine's verdict per wave (cloud_hub.rollout.engine.Stage)
        for i, stage in enumerate(stages):
            if isinstance(stage, dict):
                verdicts = {k: stage[k] for k in ("shadow_gate", "gate") if stage.get(k)}
                if verdicts:
                    gates[f"wave {i + 1}"] = verdicts
    return {
        "id": row["id"],
        "state": row["state"],
        "model": model_label(body.get("model")),
        "created": row["created"],
        "updated": row["updated"],
        "wave": min(wave + 1, len(waves)) if isinstance(wave, int) and waves else None,
        "waves": waves,
        "progress": progress,
        "halt_reason": str(body.get("halt_reason") or ""),
        "checks": gate_checks(body, row["state"], measured),
        "soak": clock,
        "gates": gates,
        "body": dict(body),
    }


def _wave_state(devices: list[dict[str, str]]) -> str:
    states = {d["state"] for d in devices}
    if "failed" in states:
        return "failed"
    if states and states <= {"healthy"}:
        return "done"
    if states - {"waiting", "unknown"}:
        return "in progress"
    return "pending"


# ---- the fleet at scale: severity, filter, sort, pages ---------------------------------------
SEVERITIES = ("ok", "warn", "alert")  # worst last
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
SORTS = ("severity", "last_seen", "id")


def severity(row: Mapping[str, Any]) -> tuple[str, list[str]]:
    """How much a device (its `device_row`) needs a look, and why: alert for a drift alert or
    storage that refuses writes; warn for a drift warning, a device gone offline or an input in
    trouble (closed, lost, silent); ok otherwise (a device enrolled but never seen included)."""
    alerts, warnings = [], []
    drift = row.get("drift_status")
    if drift == "alert":
        alerts.append("drift alert")
    elif drift == "warn":
        warnings.append("drift warn")
    storage = row.get("storage")
    if storage is not None and not storage["ok"]:
        alerts.append("storage: " + (", ".join(storage["reasons"]) or "failing"))
    if row.get("status") == "offline":
        warnings.append("offline")
    if row.get("input") not in ("ok", "-", None):
        warnings.append(f"input: {row['input']}")
    level = "alert" if alerts else "warn" if warnings else "ok"
    return level, alerts + warnings


def version_label(model: object, version: object) -> str | None:
    """`name@version` of a registry row's model and version, None when it runs none."""
    return f"{model}@{version}" if model else None


@frozen
class FleetQuery:
    """One page of the fleet: which devices (severities, a model or a model version), in what
    order (worst first then the most recently seen, the most recently seen first, or by id),
    and which slice."""

    limit: int = 50
    offset: int = 0
    severity: tuple[str, ...] = ()  # empty: every severity
    model: str | None = None  # NAME or NAME@VERSION
    sort: str = "severity"

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_PAGE:
            raise ConfigError(f"limit: expected 1 to {MAX_PAGE} devices a page, got {self.limit}")
        if self.offset < 0:
            raise ConfigError(f"offset: expected 0 or more, got {self.offset}")
        for s in self.severity:
            if s not in SEVERITIES:
                raise ConfigError(f"severity: expected one of {', '.join(SEVERITIES)}, got {s!r}")
        if self.sort not in SORTS:
            raise ConfigError(f"sort: expected one of {', '.join(SORTS)}, got {self.sort!r}")

    def matches_model(self, row: Mapping[str, Any]) -> bool:
        if self.model is None:
            return True
        if "@" in self.model:
            return version_label(row.get("model"), row.get("version")) == self.model
        return row.get("model") == self.model


MAX_PAGE = 500


def fleet_page(rows: Sequence[Mapping[str, Any]], query: FleetQuery) -> dict[str, Any]:
    """Device rows (`device_row`, each with its `severity`) filtered, sorted and cut to one
    page; `total` counts the matching devices, `counts` the devices of the model filter per
    severity (what each severity filter would show), `fleet` every device."""
    of_model = [r for r in rows if query.matches_model(r)]
    counts = dict.fromkeys(SEVERITIES, 0)
    for r in of_model:
        counts[r["severity"]] += 1
    chosen = [r for r in of_model if not query.severity or r["severity"] in query.severity]
    chosen.sort(key=lambda r: r["id"])  # stable sorts: ties keep id order
    if query.sort in ("severity", "last_seen"):
        chosen.sort(key=lambda r: r["last_seen"] or 0.0, reverse=True)
    if query.sort == "severity":
        chosen.sort(key=lambda r: SEVERITY_RANK[r["severity"]], reverse=True)
    return {
        "fleet": len(rows),
        "total": len(chosen),
        "offset": query.offset,
        "limit": query.limit,
        "counts": counts,
        "devices": chosen[query.offset : query.offset + query.limit],
    }


# ---- per model version: what the fleet runs, how fast, how well ------------------------------
def weighted_median(values: Sequence[tuple[float, float]]) -> float | None:
    """The median of (value, weight) pairs: the smallest value with half the weight at or
    below it (None without weight)."""
    pairs = sorted((v, w) for v, w in values if w > 0)
    total = sum(w for _, w in pairs)
    if not total:
        return None
    seen = 0.0
    for value, weight in pairs:
        seen += weight
        if seen >= total / 2:
            return value
    return pairs[-1][0]  # pragma: no cover - rounding


def version_summary(
    devices: Sequence[Mapping[str, Any]], telemetry: Mapping[str, StoredRecord]
) -> list[dict[str, Any]]:
    """One row per model version the devices run (their registry rows as `device_row` made
    them, and each device's newest telemetry record): devices, online; rows/s, errors/s and the
    error rate (errors per inferred row) summed over the online devices' newest windows of that
    version; latency p50 and p95 as the row-weighted medians of those windows' p50 and p95 (a
    typical device: the slowest shows in the fleet table); devices whose newest drift report
    warns or alerts. Devices that run no model are left out."""
    groups: dict[str, dict[str, Any]] = {}
    windows: dict[str, list[TelemetryWindow]] = {}
    for d in devices:
        label = version_label(d.get("model"), d.get("version"))
        if label is None:
            continue
        g = groups.setdefault(
            label,
            {
                "model": label.rpartition("@")[0],
                "version": d.get("version"),
                "label": label,
                "devices": 0,
                "online": 0,
                "drift_warn": 0,
                "drift_alert": 0,
            },
        )
        g["devices"] += 1
        g["online"] += 1 if d.get("online") else 0
        if d.get("drift_status") in ("warn", "alert"):
            g["drift_" + d["drift_status"]] += 1
        window = window_of(telemetry.get(d["id"])) if d.get("online") else None
        if window is not None and model_label(window.model) == label:
            windows.setdefault(label, []).append(window)
    for label, g in groups.items():
        g.update(window_totals(windows.get(label, [])))
    return [groups[k] for k in sorted(groups)]


def window_totals(windows: Sequence[TelemetryWindow]) -> dict[str, Any]:
    """rows/s, errors/s, error rate and latency of windows from different devices at once."""
    rows = sum(w.count for w in windows)
    errors = sum(w.error_count for w in windows)
    timed = [w for w in windows if w.window_s > 0]
    return {
        "windows": len(windows),
        "rows_per_s": round(sum(w.count / w.window_s for w in timed), 3),
        "errors_per_s": round(sum(w.error_count / w.window_s for w in timed), 3),
        "error_rate": errors / rows if rows else None,
        "latency_ms": {
            q: weighted_median([(w.latency_ms[q], w.count) for w in windows if q in w.latency_ms])
            for q in ("p50", "p95")
        },
    }


def fleet_series(
    buckets: Iterable[FleetBucket], start: float, end: float, bucket_s: float
) -> list[dict[str, Any]]:
    """The fleet over time (`Store.fleet_buckets`), in buckets of `bucket_s` from `start` to
    `end`: per bucket the rows inferred per second, the error rate (errors per row) and the
    drift reports that alerted, for the whole fleet and for each model version."""
    n = max(1, math.ceil((end - start) / bucket_s))

    def empty() -> list[dict[str, float]]:
        return [{"rows": 0.0, "errors": 0.0, "alerts": 0.0} for _ in range(n)]

    series: dict[str, list[dict[str, float]]] = {"fleet": empty()}
    for b in buckets:
        if not 0 <= b.bucket < n:
            continue
        for label in ("fleet", version_label(b.model, b.version)):
            if label is not None:
                sums = series.setdefault(label, empty())[b.bucket]
                sums["rows"] += b.rows
                sums["errors"] += b.errors
                sums["alerts"] += b.alerts
    return [
        {
            "model": label,
            "points": [
                {
                    "ts": start + i * bucket_s,
                    "rows_per_s": round(b["rows"] / bucket_s, 3),
                    "error_rate": b["errors"] / b["rows"] if b["rows"] else None,
                    "alerts": int(b["alerts"]),
                }
                for i, b in enumerate(buckets)
            ],
        }
        for label, buckets in sorted(series.items(), key=lambda kv: (kv[0] != "fleet", kv[0]))
    ]


# ---- a rollout's gates as a table -----------------------------------------------------------
AT_LEAST = ("healthy", "agreement")  # the checks whose value must reach the limit
CHECK_LABELS = {
    "failures": "failed devices",
    "healthy": "healthy devices",
    "p95_ms": "latency p95 (ms)",
    "error_rate": "error rate",
    "max_psi": "drift PSI",
    "accuracy_drop": "accuracy drop",
    "agreement": "agreement with the serving model",
}
LIVE_STATES = ("running", "paused")


def _stages(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    stages = body.get("stages")
    return [mapping(s) for s in stages] if isinstance(stages, list) else []


def _plan_gates(body: Mapping[str, Any]) -> Gates | None:
    """The rollout's gates, None where the stored plan does not read as gates."""
    try:
        return Gates.from_json(dict(mapping(mapping(body.get("plan")).get("gates"))))
    except (ConfigError, KeyError, TypeError, ValueError):
        return None


def check_row(wave: int, gate: str, check: Mapping[str, Any], live: bool) -> dict[str, Any]:
    """One gate check as a table row: what it measures, its value and limit, pass or fail
    (None: no data yet)."""
    name = str(check.get("name", "?"))
    ok = check.get("ok")
    return {
        "wave": wave,
        "gate": gate,
        "name": name,
        "label": CHECK_LABELS.get(name, name),
        "value": number(check.get("value")),
        "limit": number(check.get("limit")),
        "relation": ">=" if name in AT_LEAST else "<=",
        "passed": ok if isinstance(ok, bool) else None,
        "live": live,
    }


def current_wave(body: Mapping[str, Any]) -> int | None:
    """The index of the wave under way, None when there is none."""
    wave, stages = body.get("wave"), _stages(body)
    return wave if isinstance(wave, int) and 0 <= wave < len(stages) else None


def gate_checks(
    body: Mapping[str, Any], state: str, measured: Metrics | None = None
) -> list[dict[str, Any]]:
    """Every wave's gate checks as rows: the verdicts stored for the waves judged (its shadow
    gate, then its gate), and for the wave under way of a running or paused rollout the checks
    as they stand now (`live`): its install results, and with `measured` what the model did
    so far."""
    rows = []
    for i, stage in enumerate(_stages(body)):
        for gate in ("shadow_gate", "gate"):
            verdict = mapping(stage.get(gate))
            checks = verdict.get("checks")
            for check in checks if isinstance(checks, list) else []:
                rows.append(check_row(i + 1, gate.replace("_", " "), mapping(check), False))
    wave = current_wave(body)
    gates = _plan_gates(body)
    if wave is None or gates is None or state not in LIVE_STATES:
        return rows
    stage = _stages(body)[wave]
    if stage.get("gate") is not None or stage.get("started") is None:
        return rows
    waves, states = body.get("waves"), mapping(body.get("devices"))
    members = waves[wave] if isinstance(waves, list) and wave < len(waves) else []
    members = members if isinstance(members, list) else []
    now_states = [str(states.get(d, "")) for d in members]
    healthy, failed = now_states.count("healthy"), now_states.count("failed")
    live = judge_installs(gates, len(members), healthy, failed, healthy + failed).checks
    if measured is not None and gates.watches_telemetry:
        live = live + judge_model(gates, measured).checks
    rows.extend(check_row(wave + 1, "gate", c.to_json(), True) for c in live)
    return rows


def soak_clock(body: Mapping[str, Any], state: str, now: float | None) -> dict[str, Any] | None:
    """The soak of the wave under way: when it ends and the seconds left at `now` (None when
    no wave soaks: not settled yet, judged, or the rollout is not running)."""
    i = current_wave(body)
    gates = _plan_gates(body)
    if i is None or gates is None or now is None or state != "running":
        return None
    stage = _stages(body)[i]
    settled = number(stage.get("settled"))
    if settled is None or stage.get("gate") is not None:
        return None
    ends = settled + gates.soak_s
    return {
        "wave": i + 1,
        "soak_s": gates.soak_s,
        "ends_at": ends,
        "seconds_left": max(0, math.ceil(ends - now)),
    }
