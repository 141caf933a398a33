"""The fleet's device rows (`views.device_row` of every device, with its newest telemetry
record), shared by the fleet table, the per-version summary and /metrics. At thousands of
devices each poll of the page would otherwise decode every device's stats, newest window and
newest drift report again: the rows are kept until the store changes, and then only the rows
of the devices whose registry row or newest records changed are made again."""

from __future__ import annotations

import threading
from typing import Any

from cloud_hub.store.database import Store, StoredRecord
from cloud_hub.web import views

Rows = tuple[list[dict[str, Any]], dict[str, StoredRecord]]


def _at(rec: StoredRecord | None) -> tuple[int, int] | None:
    return None if rec is None else (rec.boot, rec.seq)


class FleetRows:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._mark: tuple[Any, ...] | None = None
        self._value: Rows = ([], {})
        self._made: dict[str, tuple[Any, dict[str, Any]]] = {}  # id -> (what it was made of, row)

    def read(self) -> Rows:
        """(device rows, each device's newest telemetry record), as of now."""
        with self._lock:  # one computes, the others wait for its answer
            mark = self.store.change_mark()
            if mark != self._mark:
                self._value = self._make()
                self._mark = mark
            return self._value

    def _make(self) -> Rows:
        telemetry = self.store.latest_records("telemetry")
        drift = self.store.latest_records("drift")
        made: dict[str, tuple[Any, dict[str, Any]]] = {}
        rows = []
        for d in self.store.devices():
            t, r = telemetry.get(d["id"]), drift.get(d["id"])
            source = (d, _at(t), _at(r))
            before = self._made.get(d["id"])
            row = before[1] if before and before[0] == source else views.device_row(d, t, r)
            made[d["id"]] = (source, row)
            rows.append(row)
        self._made = made
        return rows, telemetry
