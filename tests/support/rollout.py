"""`Sim`: the hub's side of the rollout loop in memory (the fleet, the events so far, the
metrics), for tests that drive the rollout state machine's clock themselves."""

from __future__ import annotations

from typing import Any

from cloud_hub.rollout import engine as ro
from cloud_hub.rollout.gates import Metrics, Position
from edge_agent.protocol.records import ShadowReport

NO_DATA = Metrics()


class Sim:
    """The hub's side of the loop, in memory: the fleet, the events so far, the metrics."""

    def __init__(self, r: ro.Rollout, online: list[str] | None = None) -> None:
        self.r = r
        names = online if online is not None else list(r.devices)
        self.fleet: dict[str, ro.DeviceFacts] = {d: ro.DeviceFacts(True, 0.0) for d in names}
        self.events: list[ro.Report] = []
        self.metrics = NO_DATA
        self.measured: list[tuple[dict[str, Position], float]] = []
        self.seq: dict[str, int] = {}  # each device's records, numbered as its buffer does

    def step(self, now: float) -> list[tuple[str, str]]:
        def measure_model(installed: dict[str, Position], since: float) -> Metrics:
            self.measured.append((installed, since))
            return self.metrics

        sends = ro.step(self.r, now, self.fleet, self.events, measure_model)
        return [(s.device, s.kind) for s in sends]

    def report(self, device: str, event: str, reason: str = "", **shadow: Any) -> None:
        self.seq[device] = seq = self.seq.get(device, -1) + 1
        report = ShadowReport.from_body(shadow, "shadow") if shadow else None
        self.events.append(ro.Report(device, event, reason, report, at=(1, seq)))
