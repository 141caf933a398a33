"""Whether a policy's trigger holds now: decisions only (reports, counts and the time in, the
reason it fires or None out). The runner reads the store and hands the facts over.

Drift, "alert on P% of devices for D": a device's state at time t is the status of its latest
drift report stamped at or before t and less than `stale_s` before t (a device that stopped
reporting stops counting as drifting). The trigger holds when at least P% of the model's devices
were at the level at every moment of the last D, a span that must begin after the policy last
fired (so one episode of drift fires once). The share only changes when a report arrives or goes
stale, so checking those moments (and the span's start) checks every moment.

Labels come through `LabelSource` (the hub's labels joined to its predictions): the count of
labels received since the policy last fired, and the accuracy over them (which must rest on at
least MIN_ACCURACY_LABELS labels: a handful of answers says little).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from cloud_hub.quality.labels import JoinedLabel
from cloud_hub.quality.metrics import class_key
from cloud_hub.retrain.policy import AccuracyTrigger, DriftTrigger, LabelsTrigger, Trigger
from cloud_hub.store.database import Store
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.messages import ModelRef

DEFAULT_STALE_S = 900.0
MIN_ACCURACY_LABELS = 50


@frozen
class DriftPoint:
    """One drift report: which device, when (its timestamp) and its status."""

    device: str
    at: float
    status: str


class LabelSource(Protocol):
    """The labels the hub holds, joined to the predictions they answer (one small interface:
    the hub's store implements it once labels are stored)."""

    def count_since(self, model: str, since: float) -> int:
        """Labels for predictions of model `model` (a name) received at or after `since`."""
        ...

    def accuracy(self, model: str, since: float) -> tuple[float, int] | None:
        """(share of those labels the prediction got right, how many), None without any."""
        ...

    def rows(self, model: ModelRef) -> Sequence[JoinedLabel]:
        """Every label for predictions of this model version."""
        ...


class StoreLabels:
    """The labels the hub's store holds, joined to their predictions (cloud_hub.quality)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _of(self, model: str, since: float) -> list[JoinedLabel]:
        return [j for j in self.store.joined_labels(since=since) if j.model.name == model]

    def count_since(self, model: str, since: float) -> int:
        return len(self._of(model, since))

    def accuracy(self, model: str, since: float) -> tuple[float, int] | None:
        joined = self._of(model, since)
        if not joined:
            return None
        right = sum(class_key(j.prediction) == class_key(j.label) for j in joined)
        return right / len(joined), len(joined)

    def rows(self, model: ModelRef) -> Sequence[JoinedLabel]:
        return self.store.joined_labels(model=model)


def _at_level(status: str, level: str) -> bool:
    return status == "alert" or (level == "warn" and status == "warn")


def drift_holds(
    trigger: DriftTrigger,
    points: Iterable[DriftPoint],
    devices: int,
    now: float,
    since: float,
    stale_s: float = DEFAULT_STALE_S,
) -> str | None:
    """Why the drift trigger fires now, or None (see the module's docstring)."""
    start = now - trigger.duration_s
    if devices <= 0 or start < since:
        return None
    by_device: dict[str, list[DriftPoint]] = {}
    for p in sorted(points, key=lambda p: p.at):
        if start - stale_s < p.at <= now:
            by_device.setdefault(p.device, []).append(p)
    moments = {start}
    for history in by_device.values():
        for p in history:
            moments.update(t for t in (p.at, p.at + stale_s) if start < t <= now)
    fewest = devices
    for t in sorted(moments):
        drifting = sum(1 for h in by_device.values() if _state(h, t, stale_s, trigger.level))
        fewest = min(fewest, drifting)
        if drifting < trigger.share * devices - 1e-9:
            return None
    return (
        f"{trigger}: at least {fewest} of {devices} devices "
        f"({100 * fewest / devices:.0f}%) at {trigger.level} throughout"
    )


def _state(history: list[DriftPoint], t: float, stale_s: float, level: str) -> bool:
    latest = None
    for p in history:
        if p.at > t:
            break
        latest = p
    return latest is not None and latest.at > t - stale_s and _at_level(latest.status, level)


def labels_hold(
    trigger: AccuracyTrigger | LabelsTrigger, labels: LabelSource, model: str, since: float
) -> str | None:
    """Why a label trigger fires now, or None."""
    if isinstance(trigger, LabelsTrigger):
        n = labels.count_since(model, since)
        return f"{trigger}: {n} labels since the last run" if n >= trigger.count else None
    measured = labels.accuracy(model, since)
    if measured is None:
        return None
    accuracy, n = measured
    if n < MIN_ACCURACY_LABELS or accuracy >= trigger.floor:
        return None
    return f"{trigger}: accuracy {accuracy:.3f} over {n} labels since the last run"


def first_firing(
    triggers: Iterable[Trigger],
    *,
    model: str,
    now: float,
    since: float,
    drift: Sequence[DriftPoint],
    devices: int,
    labels: LabelSource,
) -> str | None:
    """The reason of the first trigger that holds, None when none does."""
    for trigger in triggers:
        if isinstance(trigger, DriftTrigger):
            why = drift_holds(trigger, drift, devices, now, since)
        else:
            why = labels_hold(trigger, labels, model, since)
        if why is not None:
            return why
    return None
