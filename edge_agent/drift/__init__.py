"""Drift monitoring beside the model: calibrated per-window tests against the card's reference.

`monitor` holds the DriftMonitor (windows of counts in, reports out), `layout` where every count
sits on the card's grid, `stats` the no-drift distributions that turn statistics into p-values.
All pure numpy: nothing here stores rows or does I/O.
"""

from edge_agent.drift.monitor import (
    DEFAULT_ALERT_EVERY,
    DEFAULT_WARN_EVERY,
    EPSILON,
    MISSING_REASONS,
    DriftMonitor,
    levels,
    status_of,
)
from edge_agent.drift.stats import js_distance, psi

__all__ = [
    "DEFAULT_ALERT_EVERY",
    "DEFAULT_WARN_EVERY",
    "EPSILON",
    "MISSING_REASONS",
    "DriftMonitor",
    "js_distance",
    "levels",
    "psi",
    "status_of",
]
