"""What the dashboard shows, computed from stored rows: plain values in, plain values out.

Record bodies are read typed (edge_agent.protocol.records, through
`cloud_hub.store.database.typed`): a stored row that does not decode (stored by a hub before it
checked bodies) is left out, and a field an older agent did not send shows as null.
A device's row in the registry (its status's stats) is read field by field: a value that is not
what it should be shows as null.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from cloud_hub.drift import fleet as fleet_drift
from cloud_hub.store.database import StoredRecord, readable_stats, stats_of, typed
from edge_agent.drift import DEFAULT_ALERT_EVERY, DEFAULT_WARN_EVERY, levels
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
    return {
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
def drift_map(latest: Mapping[str, StoredRecord], model: str | None = None) -> dict[str, Any]:
    """The heat map: one row per device (its newest drift report), one column per feature."""
    features: dict[str, None] = {}  # first-seen order, so columns follow the model card
    rows = []
    for rec, report in typed((latest[d] for d in sorted(latest)), DriftReport):
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
def rollout_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored rollout, read generically: the engine may add keys the page does not know."""
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
