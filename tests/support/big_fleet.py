"""A fleet of thousands in a hub's store, written in one transaction through the Store API (as
the hub ingests statuses and batches), with what went in counted apart for the tests to check
the dashboard against."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from cloud_hub.rollout import engine as ro
from cloud_hub.rollout.gates import Check, Gates, Verdict
from cloud_hub.store.database import Ingest, Store
from edge_agent.protocol.messages import Batch, ModelRef, Record, Status
from edge_agent.protocol.records import TelemetryWindow

V1, V2 = ModelRef("climate", 1), ModelRef("climate", 2)
SOAK_S = 600.0
WAVE_2 = ["dev-0001", "dev-0002", "dev-0003"]  # the rollout's soaking wave


@dataclass
class Seeded:
    """What went in: per device its version and severity, and per version the rows/s of its
    online devices' windows."""

    versions: dict[str, str] = field(default_factory=dict)
    severities: dict[str, str] = field(default_factory=dict)
    rows_per_s: Counter[str] = field(default_factory=Counter)
    rollout: str = ""


def drift_body(model: ModelRef, status: str) -> dict[str, object]:
    psi = {"ok": 0.01, "warn": 0.15, "alert": 0.6}[status]
    return {
        "model": model.to_json(),
        "window": 200,
        "psi": {"temperature": psi},
        "max_psi": psi,
        "worst_feature": "temperature",
        "status": status,
    }


def seed_fleet(store: Store, n: int = 2000) -> Seeded:
    """`n` devices: every 4th runs climate@2, the others climate@1; every 30th alerts (drift),
    every 17th of the others went offline (warn), every 11th of the rest warns (drift). Each
    sent one telemetry window (10 s, rows by its number) and one drift report. A rollout of
    climate@2 passed its canary and soaks its second wave, whose devices report after their
    install."""
    now = time.time()
    seeded = Seeded()
    statuses: list[Ingest] = []
    batches: list[Ingest] = []
    offline: list[Ingest] = []
    for i in range(n):
        device = f"dev-{i:04d}"
        model = V2 if i % 4 == 0 or device in WAVE_2 else V1
        drift = "alert" if i % 30 == 0 else "warn" if i % 11 == 0 and i % 17 else "ok"
        gone = drift != "alert" and i % 17 == 0
        severity = "alert" if drift == "alert" else "warn" if gone or drift == "warn" else "ok"
        seeded.versions[device], seeded.severities[device] = str(model), severity
        stats = {"inferences": i, "dropped": {}, "buffered": 0}
        statuses.append(Status(device, True, 1, "0.test", "raspberry-pi-4", model, stats, now))
        if gone:
            offline.append(Status(device, False, ts=now))
        records = []
        if device in WAVE_2:  # installed the candidate: what it did since counts for the gate
            event = {"event": "healthy", "model": V2.to_json(), "reason": "", "rollout": "r-big"}
            records.append(("events", Record(1, 1, now - 60, event)))
        rows = 10 * (1 + i % 7)
        latency = {"p50": 1.0, "p95": 3.0 if device in WAVE_2 else 2.0 + i % 3, "p99": 9.0}
        window = TelemetryWindow(10.0, model, rows, latency, {"nan": i % 2})
        records.append(("telemetry", Record(1, 2, now - 30, window.to_body())))
        records.append(("drift", Record(1, 3, now - 20, drift_body(model, drift))))
        for kind, record in records:
            batches.append((kind, Batch(device, (record,))))
        if not gone:
            seeded.rows_per_s[str(model)] += rows / 10.0
    store.ingest(statuses + batches + offline)

    gates = Gates(soak_s=SOAK_S, max_p95_ms=5.0, max_error_rate=0.6)
    canary = ["dev-0000"]
    r = ro.start("r-big", V2, "climate-2.zip", 1, [canary, WAVE_2], plan=ro.Plan(gates=gates))
    passed = Verdict(
        ro.PROCEED,
        "",
        [
            Check("failures", 0, 0, True),
            Check("healthy", 1, 0, True),
            Check("p95_ms", 2.4, 5.0, True),
        ],
    )
    r.stages[0] = ro.Stage(
        started=now - 900, settled=now - 890, decided=now - 200, gate=passed.to_json()
    )
    r.stages[1] = ro.Stage(started=now - 120, settled=now - 100)
    r.wave = 1
    r.devices = dict.fromkeys([*canary, *WAVE_2], ro.HEALTHY)
    store.add_rollout(r.id, r.state, r.to_json())
    seeded.rollout = r.id
    return seeded
