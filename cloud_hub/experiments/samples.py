"""What each cohort's model did, read from the hub's store: the samples `engine.step` compares.

- `p95` and `error-rate`: the telemetry windows each cohort device recorded with its cohort's
  model after it installed it (as a rollout gate reads them: cloud_hub.rollout.gates
  `after_install`, from the device's install event of its cohort's rollout), received since the
  experiment started. A window's rows are its inferences and its errors (lines the model could
  not handle); the error rate is errors over rows.
- `agreement`: the shadow reports of each cohort's rollout in which its model ran beside another
  serving model: rows, and the rows on which they agreed.
- `accuracy`: labels joined to the model's predictions, through `Outcomes` (the hub's label
  store: `outcomes_from_labels(store.joined_labels)`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from cloud_hub.experiments.design import Rate, Sample, Windows
from cloud_hub.experiments.engine import Experiment
from cloud_hub.quality.labels import JoinedLabel
from cloud_hub.quality.metrics import class_key
from cloud_hub.rollout import engine as ro
from cloud_hub.rollout.gates import after_install
from cloud_hub.store.database import Store, typed
from edge_agent.errors import BadDataError
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.records import DeviceEvent, TelemetryWindow

# (model, devices, received since) -> (labels that match its prediction, labels)
Outcomes = Callable[[ModelRef, Sequence[str], float], tuple[int, int]]


class JoinedLabels(Protocol):
    def __call__(
        self,
        model: ModelRef | None = None,
        devices: Sequence[str] | None = None,
        since: float = 0.0,
    ) -> Sequence[JoinedLabel]: ...


def outcomes_from_labels(joined: JoinedLabels) -> Outcomes:
    """Accuracy outcomes from joined labels: a label counts as a success when it is the
    prediction's class (cloud_hub.quality.metrics.class_key: 2, 2.0 and "2" are one class)."""

    def outcomes(model: ModelRef, devices: Sequence[str], since: float) -> tuple[int, int]:
        rows = joined(model=model, devices=list(devices), since=since)
        right = sum(1 for r in rows if class_key(r.prediction) == class_key(r.label))
        return right, len(rows)

    return outcomes


class CohortReader:
    """engine.Measure over the store, for one experiment."""

    def __init__(self, store: Store, e: Experiment, outcomes: Outcomes | None) -> None:
        self.store, self.e, self.outcomes = store, e, outcomes

    def __call__(self, cohort: str, devices: list[str]) -> Sample:
        e, model = self.e, self.e.models[cohort]
        if e.plan.metric == "accuracy":
            if self.outcomes is None or not devices:
                return Rate(0, 0)
            right, total = self.outcomes(model, devices, e.created)
            if not 0 <= right <= total:
                raise BadDataError(
                    f"experiment {e.id}: accuracy of {model}: expected 0 <= labels right <= "
                    f"labels, got {right} of {total}"
                )
            return Rate(right, total)
        reports = self._reports(cohort, set(devices))
        if e.plan.metric == "agreement":
            return _agreement(reports, model)
        marks = ro.installed_at(reports)
        records = self.store.records_since("telemetry", sorted(marks), e.created)
        per_device = after_install(typed(records, TelemetryWindow), model, marks)
        windows = [w for device in sorted(per_device) for w in per_device[device]]
        if e.plan.metric == "error-rate":
            errors = sum(w.error_count for w in windows)
            return Rate(errors, errors + sum(w.count for w in windows))
        timed = [w for w in windows if w.count > 0 and "p95" in w.latency_ms]
        return Windows(
            tuple(float(w.latency_ms["p95"]) for w in timed), tuple(float(w.count) for w in timed)
        )

    def _reports(self, cohort: str, devices: set[str]) -> list[ro.Report]:
        rollout = self.e.rollouts.get(cohort)
        if rollout is None:
            return []
        events = typed(self.store.records("events", rollout=rollout), DeviceEvent)
        return [
            ro.Report(rec.device, ev.event, ev.reason, ev.shadow, at=(rec.boot, rec.seq))
            for rec, ev in events
            if rec.device in devices
        ]


def _agreement(reports: list[ro.Report], model: ModelRef) -> Rate:
    """Rows of the shadow reports in which `model` ran beside another serving model, and the
    rows on which they agreed."""
    agreed = rows = 0
    for rep in reports:
        shadow = rep.shadow
        if rep.event != "shadow-report" or shadow is None or shadow.rows <= 0:
            continue
        if shadow.current is None or shadow.current == model:
            continue
        rows += shadow.rows
        agreed += round(shadow.agreement * shadow.rows)
    return Rate(min(agreed, rows), rows)
