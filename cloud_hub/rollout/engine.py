"""The rollout state machine: plain values in, plain values out; persisted by the caller.

A rollout sends a model to waves of devices that match its target (all, a group, or tags): a
canary first, then waves that reach a share of the fleet (`10%, 50%, 100%`). Each wave is
optionally shadowed first (the candidate runs next to the serving model and reports agreement),
then deployed; once every reachable device in it answered (and at least one did), it soaks,
and its gate (gates.py) decides: proceed to the next wave, pause for a person, or abort
(HALTED) and roll back every device that answered healthy, each to the model it ran before the
rollout (a device that already ran the rollout's model keeps it: edge_agent.update.updater).

`step` is the only way time passes: the hub calls it with `now`, what the registry knows about
the fleet, the rollout's events and a way to measure the model on some devices (each from
where it installed the model in its own record sequence); it returns the commands to send.
Replaying the same events gives the same state, so the hub may pass them all every time.
Devices offline when their wave starts get the model when they return (the broker keeps their
command; one that was lost is sent again); devices that start matching the target join the
last wave.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from itertools import pairwise
from typing import Any

from cloud_hub.rollout.gates import (
    PAUSE,
    PROCEED,
    SHADOW_CHECKS,
    Gates,
    Metrics,
    Position,
    Threshold,
    Verdict,
    judge_installs,
    judge_model,
    measure,
)
from edge_agent.errors import ConfigError, MessageError
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.records import ShadowReport
from edge_agent.protocol.topics import check_device_id

# rollout states
RUNNING, PAUSED, COMPLETED = "running", "paused", "completed"
HALTED = "halted"  # a gate aborted it; devices that installed are rolled back
ABORTED = "aborted"  # stopped by hand; devices keep what they got
ROLLED_BACK = "rolled-back"  # stopped by hand and every install rolled back
SUPERSEDED = "superseded"  # a newer rollout of the same model took over
LIVE = (RUNNING, PAUSED, COMPLETED, HALTED, ROLLED_BACK)  # the hub still steps these
# device states within a rollout
WAITING, SHADOW, SHADOWED = "waiting", "shadow", "shadowed"
SENT, INSTALLED, HEALTHY, FAILED = "sent", "installed", "healthy", "failed"
DEVICE_STATES = (WAITING, SHADOW, SHADOWED, SENT, INSTALLED, HEALTHY, FAILED)

RESEND_AFTER_S = 15.0  # a device back online this long without answering gets its command again
RESEND_IDLE_S = 300.0  # an online device silent this long since the send gets it again
DEPLOY_EVENTS = frozenset(
    ("offered", "downloading", "verified", "installed", "healthy", "rejected", "rolled-back")
)
SHADOW_EVENTS = frozenset(("shadowing", "shadow-report"))


# ---- what the machine is told -------------------------------------------------------------
@frozen
class DeviceFacts:
    """What the registry knows about a device."""

    online: bool = False
    online_since: float = 0.0
    group: str = ""
    tags: tuple[str, ...] = ()


@frozen
class Report:
    """One event a device sent about this rollout (`shadow` of a shadow-report), `at` its
    (boot, seq) among everything that device recorded."""

    device: str
    event: str
    reason: str = ""
    shadow: ShadowReport | None = None
    at: Position = field(kw_only=True)


@frozen
class Send:
    """A command for the hub to send: deploy, shadow or rollback."""

    device: str
    kind: str


# (device -> where it installed the model, the wave's start) -> what the model did there since
Measure = Callable[[dict[str, Position], float], Metrics]
INSTALL_EVENTS = frozenset(("installed", "healthy"))  # healthy alone: it already ran the model


# ---- what the user asks for ---------------------------------------------------------------
@frozen
class Selector:
    """`all`, `group:NAME`, `tag:A[,B...]` (devices carrying every tag) or `devices:ID[,ID...]`
    (these devices: an experiment's cohort, cloud_hub.experiments)."""

    kind: str = "all"
    values: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Selector:
        kind, sep, rest = text.partition(":")
        if text == "all":
            return cls()
        values = tuple(v for v in rest.split(","))
        if sep and kind in ("group", "tag", "devices") and values and all(values):
            for value in values:
                check_label(value, f"--target {text!r}")
            if kind == "group" and len(values) > 1:
                raise ConfigError(f"--target: a device is in one group, got {text!r}")
            return cls(kind, values)
        raise ConfigError(
            f"--target: expected all, group:NAME or tag:NAME[,NAME...] (or devices:ID[,ID...]), "
            f"got {text!r}"
        )

    def matches(self, facts: DeviceFacts, device: str = "") -> bool:
        if self.kind == "group":
            return facts.group == self.values[0]
        if self.kind == "tag":
            return all(v in facts.tags for v in self.values)
        if self.kind == "devices":
            return device in self.values
        return True

    def __str__(self) -> str:
        return "all" if self.kind == "all" else f"{self.kind}:{','.join(self.values)}"


def check_label(value: str, where: str) -> str:
    """Tags and group names follow the device id's rules (letters, digits, '.', '_', '-')."""
    try:
        return check_device_id(value, where)
    except MessageError as exc:
        raise ConfigError(str(exc)) from exc


def parse_waves(text: str) -> list[Threshold]:
    """`10%,50%,100%` (or counts before the last, `5,20,100%`): cumulative shares of the
    fleet reached after the canary. The last wave is 100%, so every device gets the model."""
    specs = [Threshold.parse(part, "--waves") for part in text.split(",")]
    percents = [s.percent for s in specs if s.percent is not None]
    counts = [s.count for s in specs if s.count is not None]
    if specs[-1].percent != 100:
        raise ConfigError(
            f"--waves: expected the last wave to be 100% so every device gets the model, "
            f"got {text!r}"
        )
    if any(b <= a for a, b in pairwise(percents)) or any(b <= a for a, b in pairwise(counts)):
        raise ConfigError(f"--waves: expected growing shares like 10%,50%,100%, got {text!r}")
    if 0 in counts or 0.0 in percents:
        raise ConfigError(f"--waves: expected waves above 0, got {text!r}")
    return specs


def parse_canary(text: str) -> Threshold:
    canary = Threshold.parse(text, "--canary")
    if canary.count == 0 or canary.percent == 0:
        raise ConfigError(f"--canary: expected at least 1 device, got {text!r}")
    return canary


@frozen
class Plan:
    select: str = "all"
    canary: str = "1"
    waves: tuple[str, ...] = ("100%",)
    gates: Gates = field(default_factory=Gates)
    shadow_rows: int | None = None  # shadow each wave for this many rows before deploying

    def __post_init__(self) -> None:
        Selector.parse(self.select)
        parse_canary(self.canary)
        parse_waves(",".join(self.waves))
        if self.shadow_rows is not None and not 1 <= self.shadow_rows <= 1_000_000:
            raise ConfigError(f"--shadow: expected 1 to 1000000 rows, got {self.shadow_rows}")
        if self.gates.min_agreement is not None and self.shadow_rows is None:
            raise ConfigError(
                "--min-agreement: agreement is measured in shadow mode; add --shadow ROWS"
            )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "waves": list(self.waves), "gates": self.gates.to_json()}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Plan:
        return cls(
            **{**body, "waves": tuple(body["waves"]), "gates": Gates.from_json(body["gates"])}
        )


def plan_waves(
    devices: Iterable[str], canary: Threshold, waves: list[Threshold]
) -> list[list[str]]:
    """Sorted devices cut into the canary, then the waves (cumulative shares, empty ones
    dropped)."""
    ordered = sorted(devices)
    if not ordered:
        raise ConfigError("rollout: no devices match the target; enroll devices first")
    n = len(ordered)
    done = max(1, canary.ceil(n))
    out = [ordered[:done]]
    for spec in waves:
        upto = spec.ceil(n)
        if upto > done:
            out.append(ordered[done:upto])
            done = upto
    return out


# ---- the rollout ----------------------------------------------------------------------------
@dataclass
class Stage:
    """One wave's clock and verdicts (the times are the hub's `now`)."""

    shadow_started: float | None = None
    started: float | None = None  # deploys sent
    settled: float | None = None  # every reachable device answered; the soak starts
    decided: float | None = None  # passed its gate
    shadow_gate: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None


@dataclass
class Rollout:
    id: str
    model: ModelRef
    target: str
    tuf_version: int
    waves: list[list[str]]
    plan: Plan = field(default_factory=Plan)
    stages: list[Stage] = field(default_factory=list)
    wave: int = 0
    state: str = RUNNING
    devices: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    sent_at: dict[str, float] = field(default_factory=dict)
    rollback: dict[str, str] = field(default_factory=dict)  # device -> due, sent, done
    halt_reason: str = ""
    encrypt: bool = False  # each device gets the bundle sealed for its own key
    created: float = 0.0

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["model"] = self.model.to_json()
        body["plan"] = self.plan.to_json()
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Rollout:
        return cls(
            **{
                **body,
                "model": ModelRef(**body["model"]),
                "plan": Plan.from_json(body["plan"]),
                "stages": [Stage(**s) for s in body["stages"]],
            }
        )


def start(
    rollout_id: str,
    model: ModelRef,
    target: str,
    tuf_version: int,
    waves: list[list[str]],
    encrypt: bool = False,
    plan: Plan | None = None,
    now: float = 0.0,
) -> Rollout:
    devices = {d: WAITING for wave in waves for d in wave}
    return Rollout(
        rollout_id,
        model,
        target,
        tuf_version,
        [list(w) for w in waves],
        plan or Plan(),
        [Stage() for _ in waves],
        devices=devices,
        encrypt=encrypt,
        created=now,
    )


def step(
    r: Rollout,
    now: float,
    fleet: Mapping[str, DeviceFacts],
    reports: list[Report],
    measure_model: Measure,
) -> list[Send]:
    """Apply what happened; return the commands to send now."""
    _absorb(r, reports)
    sends: list[Send] = []
    if r.state in (RUNNING, PAUSED, COMPLETED):
        _join(r, fleet)
    if r.state == RUNNING:
        _run_waves(r, now, fleet, reports, measure_model, sends)
    if r.state in (RUNNING, COMPLETED):
        _catch_up(r, now, fleet, reports, sends)
    if r.state in (HALTED, ROLLED_BACK):
        for device, state in r.devices.items():
            if state == HEALTHY and device not in r.rollback:
                r.rollback[device] = "due"
    for device, state in sorted(r.rollback.items()):
        if state == "due":
            r.rollback[device] = "sent"
            sends.append(Send(device, "rollback"))
    return sends


def _absorb(r: Rollout, reports: list[Report]) -> None:
    for rep in reports:
        state = r.devices.get(rep.device)
        if state is None:
            continue
        if rep.event == "shadow-report" and state == SHADOW:
            r.devices[rep.device] = SHADOWED
        elif rep.event == "installed" and state == SENT:
            r.devices[rep.device] = INSTALLED
        elif rep.event == "healthy" and state in (SENT, INSTALLED):
            r.devices[rep.device] = HEALTHY
        elif rep.event == "rolled-back" and r.rollback.get(rep.device) == "sent":
            r.rollback[rep.device] = "done"
        elif rep.event in ("rejected", "rolled-back") and state in (
            SHADOW,
            SHADOWED,
            SENT,
            INSTALLED,
        ):
            r.devices[rep.device] = FAILED
            r.reasons[rep.device] = rep.reason


def _join(r: Rollout, fleet: Mapping[str, DeviceFacts]) -> None:
    selector = Selector.parse(r.plan.select)
    for device in sorted(fleet):
        if device not in r.devices and selector.matches(fleet[device], device):
            r.waves[-1].append(device)
            r.devices[device] = WAITING


def _online(fleet: Mapping[str, DeviceFacts], device: str) -> bool:
    facts = fleet.get(device)
    return facts is not None and facts.online


def _send(r: Rollout, device: str, kind: str, now: float, sends: list[Send]) -> None:
    r.devices[device] = SHADOW if kind == "shadow" else SENT
    r.sent_at[device] = now
    sends.append(Send(device, kind))


def _stop(r: Rollout, outcome: str, reason: str) -> None:
    r.state = PAUSED if outcome == PAUSE else HALTED
    r.halt_reason = reason


def _run_waves(
    r: Rollout,
    now: float,
    fleet: Mapping[str, DeviceFacts],
    reports: list[Report],
    measure_model: Measure,
    sends: list[Send],
) -> None:
    while r.state == RUNNING and r.wave < len(r.waves):
        members, stage, label = r.waves[r.wave], r.stages[r.wave], f"wave {r.wave + 1}"
        if stage.started is None:
            if r.plan.shadow_rows is not None:
                if stage.shadow_started is None:
                    stage.shadow_started = now
                    for device in members:
                        _send(r, device, "shadow", now, sends)
                    return
                if stage.shadow_gate is None:
                    verdict = _judge_shadow(r, now, members, fleet, reports)
                    if verdict is None:
                        return
                    stage.shadow_gate = verdict.to_json()
                if stage.shadow_gate["outcome"] != PROCEED:
                    _stop(r, stage.shadow_gate["outcome"], f"{label} shadow: " + _why(stage))
                    return
            stage.started = now
            for device in members:
                if r.devices[device] in (WAITING, SHADOW, SHADOWED):
                    _send(r, device, "deploy", now, sends)
            return
        if stage.gate is None:
            verdict = _judge_wave(r, now, members, stage, fleet, reports, measure_model)
            if verdict is None:
                return
            stage.gate = verdict.to_json()
        if stage.gate["outcome"] != PROCEED:
            _stop(r, stage.gate["outcome"], f"{label}: {stage.gate['reason']}")
            return
        stage.decided = now
        r.wave += 1
    if r.state == RUNNING:
        r.state = COMPLETED


def _why(stage: Stage) -> str:
    return str((stage.shadow_gate or {}).get("reason", ""))


def _judge_wave(
    r: Rollout,
    now: float,
    members: list[str],
    stage: Stage,
    fleet: Mapping[str, DeviceFacts],
    reports: list[Report],
    measure_model: Measure,
) -> Verdict | None:
    """The wave's verdict, or None while it is still installing or soaking."""
    gates = r.plan.gates
    states = [r.devices[d] for d in members]
    failed, healthy = states.count(FAILED), states.count(HEALTHY)
    answered = failed + healthy
    if failed > gates.max_failure.floor(len(members)):  # no need to soak to see that
        return _name_failures(
            r, members, judge_installs(gates, len(members), healthy, failed, answered)
        )
    pending = [d for d in members if r.devices[d] in (SENT, INSTALLED) and _online(fleet, d)]
    if pending or not answered:  # a wave nobody answered yet (all offline) shows nothing
        return None
    if stage.settled is None:
        stage.settled = now
    if now < stage.settled + gates.soak_s:
        return None
    installs = judge_installs(gates, len(members), healthy, failed, answered)
    if installs.outcome != PROCEED or not healthy or not gates.watches_telemetry:
        return installs
    assert stage.started is not None
    marks = installed_at(reports)  # a device whose events retention removed is not measured
    healthy_devices = {d: marks[d] for d in members if r.devices[d] == HEALTHY and d in marks}
    model = judge_model(gates, measure_model(healthy_devices, stage.started))
    return Verdict(model.outcome, model.reason, installs.checks + model.checks)


def installed_at(reports: Iterable[Report]) -> dict[str, Position]:
    """Per device, where it installed the rollout's model in its own record sequence: its
    first `installed` (or, where it already ran the model, `healthy`) event of this rollout.
    Only what it recorded after that is the model's doing in this rollout."""
    marks: dict[str, Position] = {}
    for rep in reports:
        if rep.event in INSTALL_EVENTS:
            marks[rep.device] = min(rep.at, marks.get(rep.device, rep.at))
    return marks


def _name_failures(r: Rollout, members: list[str], verdict: Verdict) -> Verdict:
    failed = [d for d in members if r.devices[d] == FAILED]
    first = failed[0]
    detail = f"{first} {r.reasons.get(first) or 'failed'}"
    return Verdict(verdict.outcome, f"{verdict.reason}; {detail}", verdict.checks)


def _judge_shadow(
    r: Rollout,
    now: float,
    members: list[str],
    fleet: Mapping[str, DeviceFacts],
    reports: list[Report],
) -> Verdict | None:
    """Agreement of the candidate with the serving model on the wave, once every reachable
    device reported (or the soak time ran out); None while waiting."""
    gates = r.plan.gates
    stage = r.stages[r.wave]
    assert stage.shadow_started is not None
    failed = [d for d in members if r.devices[d] == FAILED]
    if len(failed) > gates.max_failure.floor(len(members)):
        return _name_failures(
            r, members, judge_installs(gates, len(members), 0, len(failed), len(failed))
        )
    pending = [d for d in members if r.devices[d] == SHADOW and _online(fleet, d)]
    out_of_time = gates.soak_s > 0 and now >= stage.shadow_started + gates.soak_s
    if pending and not out_of_time:
        return None
    member_set = set(members)
    shadow: dict[str, list[ShadowReport]] = {}
    for rep in reports:
        if rep.event == "shadow-report" and rep.device in member_set and rep.shadow is not None:
            shadow.setdefault(rep.device, []).append(rep.shadow)
    return judge_model(gates, measure({}, {}, shadow), SHADOW_CHECKS)


def _catch_up(
    r: Rollout,
    now: float,
    fleet: Mapping[str, DeviceFacts],
    reports: list[Report],
    sends: list[Send],
) -> None:
    """Joiners of a wave under way get its command; a device that came back (or stayed
    silent) without answering gets it again."""
    heard_deploy = {rep.device for rep in reports if rep.event in DEPLOY_EVENTS}
    heard_shadow = {rep.device for rep in reports if rep.event in SHADOW_EVENTS}
    for index, (members, stage) in enumerate(zip(r.waves, r.stages, strict=True)):
        if index > r.wave:
            break
        for device in members:
            state = r.devices[device]
            if state == WAITING and stage.started is not None:
                _send(r, device, "deploy", now, sends)
            elif state == WAITING and stage.shadow_started is not None:
                _send(r, device, "shadow", now, sends)
            elif state in (SENT, SHADOW):
                heard = heard_deploy if state == SENT else heard_shadow
                if device not in heard and _lost(fleet.get(device), r.sent_at[device], now):
                    _send(r, device, "deploy" if state == SENT else "shadow", now, sends)


def _lost(facts: DeviceFacts | None, sent_at: float, now: float) -> bool:
    if facts is None or not facts.online:
        return False
    came_back = facts.online_since > sent_at and now - facts.online_since >= RESEND_AFTER_S
    return came_back or now - sent_at >= RESEND_IDLE_S


# ---- by hand --------------------------------------------------------------------------------
def pause(r: Rollout, reason: str = "paused by hand") -> None:
    _require(r, "paused", RUNNING)
    r.state, r.halt_reason = PAUSED, reason


def resume(r: Rollout) -> None:
    """Continue a paused rollout; a wave its gate paused proceeds (the verdict says so)."""
    _require(r, "resumed", PAUSED)
    r.state, r.halt_reason = RUNNING, ""
    if r.wave < len(r.stages):
        stage = r.stages[r.wave]
        for gate in (stage.shadow_gate, stage.gate):
            if gate is not None and gate["outcome"] == PAUSE:
                gate["outcome"], gate["overridden"] = PROCEED, True


def abort(r: Rollout, reason: str = "aborted by hand") -> None:
    _require(r, "aborted", RUNNING, PAUSED, COMPLETED)
    r.state, r.halt_reason = ABORTED, reason


def roll_back(r: Rollout, reason: str = "rolled back by hand") -> None:
    """Stop, and send a rollback to every device that installed the model."""
    _require(r, "rolled back", RUNNING, PAUSED, COMPLETED, HALTED, ABORTED)
    r.state, r.halt_reason = ROLLED_BACK, reason


def supersede(r: Rollout, by: str) -> None:
    r.state, r.halt_reason = SUPERSEDED, f"superseded by rollout {by}"


def add_devices(r: Rollout, devices: Iterable[str]) -> None:
    """Aim a `devices:` rollout at these devices too: the next step puts each in the last wave
    (an experiment's late joiners, cloud_hub.experiments)."""
    selector = Selector.parse(r.plan.select)
    if selector.kind != "devices":
        raise ConfigError(f"rollout {r.id}: only a devices: target takes devices, not {selector}")
    more = sorted(set(devices) - set(selector.values))
    if more:
        r.plan = replace(r.plan, select=f"devices:{','.join((*selector.values, *more))}")


MANUAL: dict[str, Callable[[Rollout], None]] = {
    "pause": pause,
    "resume": resume,
    "abort": abort,
    "rollback": roll_back,
}


def _require(r: Rollout, what: str, *states: str) -> None:
    if r.state not in states:
        raise ConfigError(
            f"rollout {r.id} is {r.state}; only a {' or '.join(states)} rollout can be {what}"
        )


# ---- views ----------------------------------------------------------------------------------
def progress(r: Rollout) -> dict[str, int]:
    counts = dict.fromkeys(DEVICE_STATES, 0)
    for state in r.devices.values():
        counts[state] += 1
    counts["rolled_back"] = sum(1 for v in r.rollback.values() if v == "done")
    return counts


def wave_rows(r: Rollout, now: float) -> list[dict[str, Any]]:
    """Per wave: size, device states, phase and gate verdict (for the CLI and dashboard)."""
    rows = []
    for index, (members, stage) in enumerate(zip(r.waves, r.stages, strict=True)):
        counts = dict.fromkeys(DEVICE_STATES, 0)
        for device in members:
            counts[r.devices[device]] += 1
        rows.append(
            {
                "wave": index + 1,
                "name": "canary" if index == 0 else f"wave {index + 1}",
                "size": len(members),
                "phase": _phase(r, index, stage, now),
                **counts,
                "shadow_gate": stage.shadow_gate,
                "gate": stage.gate,
            }
        )
    return rows


def _phase(r: Rollout, index: int, stage: Stage, now: float) -> str:
    if stage.decided is not None:
        return "passed"
    if stage.gate is not None:
        return str(stage.gate["outcome"])
    if stage.settled is not None:
        left = stage.settled + r.plan.gates.soak_s - now
        return f"soaking, {math.ceil(max(left, 0))} s left"
    if stage.started is not None:
        return "installing"
    if stage.shadow_started is not None:
        return "shadowing"
    return "waiting" if index >= r.wave else "skipped"
