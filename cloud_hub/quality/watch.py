"""What the running hub does about ground truth between messages: the join pass (pending labels
joined to the windows stored since, or unknown past the grace period) every JOIN_EVERY_S, and
with accuracy floors, the floor check every FLOOR_EVERY_S over the labels of the last day: a
model version that falls below its floor is logged once, and once again when it is back."""

from __future__ import annotations

import logging

from cloud_hub.drift.source import PublishedCards
from cloud_hub.quality.metrics import Floors
from cloud_hub.quality.report import MetricsQuery, quality_report, save_floors
from cloud_hub.store.database import Store

log = logging.getLogger(__name__)

JOIN_EVERY_S = 2.0
FLOOR_EVERY_S = 30.0
FLOOR_WINDOW_S = 24 * 3600.0  # the labels the floor check judges: received in the last day


class QualityWatch:
    def __init__(self, store: Store, cards: PublishedCards, floors: Floors | None = None) -> None:
        """`floors`: what `edgehub serve` was given, stored so that `edgehub metrics` and the
        dashboard judge by the same (None: leave what is stored alone)."""
        self.store = store
        self.cards = cards
        self.floors = floors or Floors()
        if floors is not None:
            save_floors(store, floors)
        self.alerting: set[str] = set()  # model versions below their floor now
        self._next_join = 0.0
        self._next_floor = 0.0

    def tick(self, now: float) -> None:
        if now >= self._next_join:
            self._next_join = now + JOIN_EVERY_S
            changed = self.store.join_labels(now)
            if changed:
                log.info("labels: %s", ", ".join(f"{n} {k}" for k, n in sorted(changed.items())))
        if now >= self._next_floor and (self.floors.default or self.floors.per_model):
            self._next_floor = now + FLOOR_EVERY_S
            self.check_floors(now)

    def check_floors(self, now: float) -> set[str]:
        """Log each model version that went below its floor since the last check (and each
        that came back); returns those below now."""
        report = quality_report(
            self.store, self.cards, MetricsQuery(FLOOR_WINDOW_S), self.floors, now
        )
        below = set()
        for row in report["rows"]:
            model = f"{row['model']}@{row['version']}"
            if not row["alert"]:
                continue
            below.add(model)
            if model not in self.alerting:
                acc = row["accuracy"]
                log.warning(
                    "accuracy floor: %s is below its floor %.3f: accuracy %.3f over %d labels "
                    "of the last day (95%% interval %.3f to %.3f; `edgehub metrics`)",
                    model,
                    row["floor"],
                    acc["value"],
                    row["labels"],
                    acc["low"],
                    acc["high"],
                )
        for model in sorted(self.alerting - below):
            log.warning("accuracy floor: %s is no longer below its floor", model)
        self.alerting = below
        return below
