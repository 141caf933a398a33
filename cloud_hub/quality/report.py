"""Quality as the CLI, the dashboard, /metrics and the running hub read it: joined labels from the
store, each model version's task from its published card, the devices' cohorts from the
registry, the floors the hub was started with; the numbers are cloud_hub.quality.metrics'."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cloud_hub.drift.fleet import Labels
from cloud_hub.drift.source import PublishedCards, model_filter
from cloud_hub.quality.metrics import Floors, Query, quality_rows
from cloud_hub.store.database import Store
from edge_agent.errors import ConfigError
from edge_agent.protocol.card import ModelCard
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.messages import ModelRef

FLOORS_STATE = "accuracy_floors"  # hub_state: the floors `edgehub serve` was started with
DEFAULT_SINCE_S = 24 * 3600.0


@frozen
class MetricsQuery:
    """Labels received in the last `since_s` seconds, of one model (NAME or NAME@VERSION) or
    all, grouped `by` version, device or cohort, per `bucket_s` of prediction time or not."""

    since_s: float = DEFAULT_SINCE_S
    model: str | None = None
    by: str = "version"
    bucket_s: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.since_s < math.inf:
            raise ConfigError(f"--since: expected a duration above 0, got {self.since_s}s")
        if self.model is not None:
            model_filter(self.model)
        Query(self.by, self.bucket_s)  # checks both

    def wants(self, model: ModelRef) -> bool:
        return self.model is None or self.model in (model.name, str(model))


def stored_floors(store: Store) -> Floors:
    """The floors of the running hub (none when it was started without)."""
    return Floors.from_json(store.get_state(FLOORS_STATE))


def save_floors(store: Store, floors: Floors) -> None:
    store.set_state(FLOORS_STATE, floors.to_json())


def model_cards(cards: PublishedCards, models: Iterable[ModelRef]) -> dict[ModelRef, ModelCard]:
    """Each version's published card, for its task and an anomaly model's threshold (versions
    without a readable card are left out: their task is guessed from their predictions)."""
    found, _missing = cards.lookup(set(models))
    return found


def cohorts_of(store: Store) -> Callable[[str], Sequence[str]]:
    """device -> its cohorts (fleet, group:NAME, tag:NAME) by the registry's labels now."""
    labels = {d["id"]: Labels(d["group"] or "", tuple(d["tags"] or ())) for d in store.devices()}
    return lambda device: labels.get(device, Labels()).cohorts()


def quality_report(
    store: Store,
    cards: PublishedCards,
    query: MetricsQuery,
    floors: Floors | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """{"now", "since_s", "by", "bucket_s", "floors", "rows", "alerts", "labels"}: the metrics'
    rows, the model versions whose accuracy is below their floor, and what happened to the
    labels so far (`counts` per source and outcome, `states` of the kept ones)."""
    now = time.time() if now is None else now
    floors = stored_floors(store) if floors is None else floors
    exact = ModelRef.parse(query.model) if query.model and "@" in query.model else None
    joined = [
        j for j in store.joined_labels(exact, since=now - query.since_s) if query.wants(j.model)
    ]
    found = model_cards(cards, {j.model for j in joined})
    tasks = {model: card.task for model, card in found.items()}
    anomalies = {model: card.anomaly for model, card in found.items() if card.anomaly}
    grouping = Query(query.by, query.bucket_s)
    rows = quality_rows(joined, tasks, grouping, cohorts_of(store), floors, anomalies)
    return {
        "now": now,
        "since_s": query.since_s,
        "by": query.by,
        "bucket_s": query.bucket_s,
        "floors": floors.to_json(),
        "rows": rows,
        "alerts": sorted({f"{r['model']}@{r['version']}" for r in rows if r["alert"]}),
        "labels": {"counts": store.label_counts(), "states": store.label_states()},
    }
