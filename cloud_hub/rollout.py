"""The rollout state machine: plain values in, plain values out; persisted by the caller.

A rollout sends a model to waves of devices (a canary first). A wave passes when every device in
it reports `healthy`; any `rejected` or `rolled-back` halts the rollout, and the devices that
never got the command keep what they run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from edge_agent.errors import ConfigError
from edge_agent.protocol.messages import ModelRef

RUNNING, COMPLETED, HALTED = "running", "completed", "halted"
WAITING, SENT, HEALTHY, FAILED = "waiting", "sent", "healthy", "failed"


@dataclass
class Rollout:
    id: str
    model: ModelRef
    target: str
    tuf_version: int
    waves: list[list[str]]
    wave: int = 0
    state: str = RUNNING
    devices: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    halt_reason: str = ""
    encrypt: bool = False  # each device gets the bundle sealed for its own key

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["model"] = self.model.to_json()
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Rollout:
        return cls(**{**body, "model": ModelRef(**body["model"])})


def plan_waves(devices: list[str], canary: int) -> list[list[str]]:
    """The canary wave, then everyone else."""
    if not devices:
        raise ConfigError("rollout: no devices match the target; enroll devices first")
    if canary < 1:
        raise ConfigError(f"rollout: --canary expected at least 1 device, got {canary}")
    ordered = sorted(devices)
    first, rest = ordered[:canary], ordered[canary:]
    return [first, rest] if rest else [first]


def canary_count(spec: str, fleet: int) -> int:
    """`--canary 2` (devices) or `--canary 10%` (of the fleet, at least one)."""
    try:
        if spec.endswith("%"):
            percent = float(spec[:-1])
            if not 0 < percent <= 100:  # also refuses nan and inf
                raise ValueError(spec)
            return max(1, math.ceil(fleet * percent / 100))
        return int(spec)
    except ValueError as exc:
        raise ConfigError(
            f"--canary: expected a count like 1 or a percent like 10% (above 0, at most 100%), "
            f"got {spec!r}"
        ) from exc


def start(
    rollout_id: str,
    model: ModelRef,
    target: str,
    tuf_version: int,
    waves: list[list[str]],
    encrypt: bool = False,
) -> Rollout:
    devices = {d: WAITING for wave in waves for d in wave}
    return Rollout(rollout_id, model, target, tuf_version, waves, devices=devices, encrypt=encrypt)


def advance(r: Rollout, events: list[tuple[str, str, str]]) -> list[str]:
    """Apply (device, event, reason) reports; return the devices to send the deploy to now."""
    for device, event, reason in events:
        if device not in r.devices or r.devices[device] in (HEALTHY, FAILED):
            continue
        if event == "healthy":
            r.devices[device] = HEALTHY
        elif event in ("rejected", "rolled-back"):
            r.devices[device] = FAILED
            r.reasons[device] = reason
    if r.state != RUNNING:
        return []
    to_send: list[str] = []
    while r.wave < len(r.waves):
        wave = r.waves[r.wave]
        failed = [d for d in wave if r.devices[d] == FAILED]
        if failed:
            r.state = HALTED
            first = failed[0]
            r.halt_reason = f"wave {r.wave + 1}: {first} {r.reasons.get(first, 'failed')}"
            return to_send
        waiting = [d for d in wave if r.devices[d] == WAITING]
        for d in waiting:
            r.devices[d] = SENT
        to_send.extend(waiting)
        if any(r.devices[d] != HEALTHY for d in wave):
            return to_send
        r.wave += 1
    r.state = COMPLETED
    return to_send


def progress(r: Rollout) -> dict[str, int]:
    counts = {WAITING: 0, SENT: 0, HEALTHY: 0, FAILED: 0}
    for state in r.devices.values():
        counts[state] += 1
    return counts
