"""What the dashboard reads of a rollout beyond its stored row: while a wave soaks, what the
candidate did on its healthy devices so far, measured as its gate will measure it at the end of
the soak (cloud_hub.rollout.operations.measure_stored)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cloud_hub.rollout import engine as ro
from cloud_hub.rollout.gates import Metrics
from cloud_hub.rollout.operations import measure_stored, rollout_reports
from cloud_hub.store.database import Store
from edge_agent.errors import ConfigError


def soaking_metrics(store: Store, row: Mapping[str, Any]) -> Metrics | None:
    """The soaking wave's measurements so far; None when no wave of this rollout soaks with
    telemetry gates, or its stored body does not read as a rollout."""
    if row["state"] != ro.RUNNING:
        return None
    try:
        r = ro.Rollout.from_json(dict(row["body"]))
    except (ConfigError, KeyError, TypeError, ValueError):
        return None
    if not 0 <= r.wave < len(r.stages) or not r.plan.gates.watches_telemetry:
        return None
    stage = r.stages[r.wave]
    if stage.settled is None or stage.gate is not None or stage.started is None:
        return None
    marks = ro.installed_at(rollout_reports(store, r.id))
    healthy = {
        d: marks[d] for d in r.waves[r.wave] if r.devices.get(d) == ro.HEALTHY and d in marks
    }
    return measure_stored(store, r.model, healthy, stage.started)
