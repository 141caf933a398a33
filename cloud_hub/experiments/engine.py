"""The experiment state machine: plain values in, plain values out; persisted by the caller.

An experiment runs model A (the candidate) on one cohort of the devices matching its target and
model B on the other (design.assign), each through a rollout of its own aimed at its cohort's
devices, and compares them on one metric. `step` is the only way time passes: the hub calls it
with `now`, what the registry knows about the fleet, the state of the two rollouts and a way to
read each cohort's sample; it returns the devices that joined a cohort (their cohort's rollout
must take them).

It decides once (fixed horizon, design.py): when both cohorts hold `needed` samples, or at the
deadline without them ("no difference (underpowered: n of needed)"). A cohort whose rollout a
gate halted, or that was stopped, ends the experiment as failed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from cloud_hub.experiments import design
from cloud_hub.experiments.design import COHORTS, A, B, Sample
from cloud_hub.rollout import engine as ro
from edge_agent.errors import ConfigError
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.messages import ModelRef

RUNNING, DECIDED, STOPPED, FAILED = "running", "decided", "stopped", "failed"
STATES = (RUNNING, DECIDED, STOPPED, FAILED)
ROLLOUT_ENDED = (ro.HALTED, ro.ABORTED, ro.ROLLED_BACK, ro.SUPERSEDED)

# (cohort, its devices) -> what its model did there since the experiment started
Measure = Callable[[str, list[str]], Sample]


@frozen
class Design:
    """What the user asked for: the metric, the smallest effect worth finding, the test's level
    and power, the candidate's share of the devices and the deadline."""

    metric: str
    effect: float
    alpha: float = 0.05
    power: float = 0.8
    split: float = 0.5
    deadline_s: float = 86400.0

    def __post_init__(self) -> None:
        m = design.metric(self.metric)
        design.needed(m, self.effect, self.alpha, self.power)  # checks effect, alpha, power
        if not 0 < self.split < 1:
            raise ConfigError(
                f"--split: expected a share above 0% and below 100%, got {100 * self.split:g}%"
            )
        if not 0 < self.deadline_s < math.inf:
            raise ConfigError(f"--deadline: expected a duration above 0, got {self.deadline_s}")

    @property
    def needed(self) -> int:
        return design.needed(design.metric(self.metric), self.effect, self.alpha, self.power)


@dataclass
class Experiment:
    id: str
    models: dict[str, ModelRef]  # cohort -> model
    target: str
    plan: Design
    needed: int
    seed: int  # the bootstrap's
    created: float  # epoch s: records received since count
    cohorts: dict[str, str] = field(default_factory=dict)  # device -> cohort
    rollouts: dict[str, str] = field(default_factory=dict)  # cohort -> rollout id
    state: str = RUNNING
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)  # cohort -> n, value
    result: dict[str, Any] | None = None  # the comparison, once decided
    decision: dict[str, Any] | None = None  # outcome, winner, text
    reason: str = ""  # why it stopped or failed
    decided_at: float | None = None
    promoted: str | None = None  # the rollout of the winner

    @property
    def deadline(self) -> float:
        return self.created + self.plan.deadline_s

    def members(self, cohort: str) -> list[str]:
        return sorted(d for d, c in self.cohorts.items() if c == cohort)

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["models"] = {c: m.to_json() for c, m in self.models.items()}
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Experiment:
        return cls(
            **{
                **body,
                "models": {c: ModelRef(**m) for c, m in body["models"].items()},
                "plan": Design(**body["plan"]),
            }
        )


def assign_all(experiment_id: str, devices: list[str], split: float) -> dict[str, str]:
    return {d: design.assign(experiment_id, d, split) for d in sorted(devices)}


def start(
    experiment_id: str,
    a: ModelRef,
    b: ModelRef,
    target: str,
    plan: Design,
    devices: list[str],
    now: float,
) -> Experiment:
    """A new experiment over `devices` (those matching `target` now), cohorts assigned."""
    if a == b:
        raise ConfigError(f"--against: expected another model than {a}, got {b}")
    return Experiment(
        experiment_id,
        {A: a, B: b},
        target,
        plan,
        plan.needed,
        design.seed_of(experiment_id),
        now,
        assign_all(experiment_id, devices, plan.split),
    )


def step(
    e: Experiment,
    now: float,
    fleet: Mapping[str, ro.DeviceFacts],
    rollouts: Mapping[str, tuple[str, str]],
    measure: Measure,
) -> dict[str, str]:
    """Apply what happened (`rollouts`: cohort -> its rollout's state and reason); returns the
    devices that joined, with their cohort."""
    if e.state != RUNNING:
        return {}
    joined = _join(e, fleet)
    for cohort in COHORTS:
        state, reason = rollouts.get(cohort, ("missing", "its rollout is not in the store"))
        if state in ROLLOUT_ENDED or state == "missing":
            e.state, e.decided_at = FAILED, now
            rid = e.rollouts.get(cohort, "?")
            e.reason = f"cohort {cohort.upper()}'s rollout {rid} of {e.models[cohort]} {state}"
            e.reason += f": {reason}" if reason else ""
            return joined
    samples = {c: measure(c, e.members(c)) for c in COHORTS}
    e.progress = {c: {"n": s.n, "value": s.value} for c, s in samples.items()}
    if all(s.n >= e.needed for s in samples.values()):
        _decide(e, now, samples)
    elif now >= e.deadline:
        d = design.underpowered([s.n for s in samples.values()], e.needed)
        e.decision = asdict(d)
        e.state, e.decided_at = DECIDED, now
    return joined


def _join(e: Experiment, fleet: Mapping[str, ro.DeviceFacts]) -> dict[str, str]:
    selector = ro.Selector.parse(e.target)
    joined = {
        d: design.assign(e.id, d, e.plan.split)
        for d in sorted(fleet)
        if d not in e.cohorts and selector.matches(fleet[d], d)
    }
    e.cohorts.update(joined)
    return joined


def _decide(e: Experiment, now: float, samples: dict[str, Sample]) -> None:
    m = design.metric(e.plan.metric)
    c = design.compare(m, samples[A], samples[B], e.plan.alpha, e.seed)
    d = design.decide(m, c, {k: str(v) for k, v in e.models.items()}, e.plan.alpha)
    e.result = {
        "a": asdict(c.a),
        "b": asdict(c.b),
        "difference": c.difference,
        "low": c.low,
        "high": c.high,
        "method": c.method,
        "p_value": c.p_value,
    }
    e.decision = asdict(d)
    e.state, e.decided_at = DECIDED, now


# ---- by hand --------------------------------------------------------------------------------
def stop(e: Experiment, reason: str = "stopped by hand") -> None:
    if e.state != RUNNING:
        raise ConfigError(f"experiment {e.id} is {e.state}; only a running one can be stopped")
    e.state, e.reason = STOPPED, reason


def winner(e: Experiment) -> ModelRef:
    """The model that won, or ConfigError saying why there is none."""
    if e.state == RUNNING:
        n = ", ".join(f"{c.upper()} {e.progress.get(c, {}).get('n', 0)}" for c in COHORTS)
        raise ConfigError(
            f"experiment {e.id} is still running ({n} of {e.needed} samples); nothing to promote "
            "yet"
        )
    cohort = (e.decision or {}).get("winner")
    if cohort is None:
        why = (e.decision or {}).get("text") or e.reason or e.state
        raise ConfigError(f"experiment {e.id} has no winner to promote ({why})")
    return e.models[cohort]


# ---- views ----------------------------------------------------------------------------------
def view(e: Experiment) -> dict[str, Any]:
    """The experiment for people and machines (the CLI's --json and the dashboard's API)."""
    m = design.metric(e.plan.metric)
    result = e.result or {}
    cohorts = []
    for c in COHORTS:
        estimate = result.get(c) or {}
        progress = e.progress.get(c, {})
        cohorts.append(
            {
                "cohort": c.upper(),
                "model": str(e.models[c]),
                "rollout": e.rollouts.get(c),
                "devices": e.members(c),
                "n": int(progress.get("n", 0)),
                "value": estimate.get("value", progress.get("value")),
                "low": estimate.get("low"),
                "high": estimate.get("high"),
            }
        )
    return {
        "id": e.id,
        "state": e.state,
        "models": f"{e.models[A]} vs {e.models[B]}",
        "metric": m.name,
        "better": m.better,
        "target": e.target,
        "split": e.plan.split,
        "effect": e.plan.effect,
        "alpha": e.plan.alpha,
        "power": e.plan.power,
        "needed": e.needed,
        "created": e.created,
        "deadline": e.deadline,
        "cohorts": cohorts,
        "test": result.get("method"),
        "difference": result.get("difference"),
        "low": result.get("low"),
        "high": result.get("high"),
        "p_value": result.get("p_value"),
        "decision": (e.decision or {}).get("text"),
        "outcome": (e.decision or {}).get("outcome"),
        "winner": str(e.models[w]) if (w := (e.decision or {}).get("winner")) else None,
        "reason": e.reason,
        "promoted": e.promoted,
    }
