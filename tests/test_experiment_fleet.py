"""Experiments on the real stack: a running hub, simulated devices speaking the wire contract over
a private mosquitto, signed deploy commands per cohort, telemetry the hub stores and reads.

The hub's clock is `time.time() + offset`; a test moves the offset past the deadline once what
it waits for has arrived (nothing sleeps)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_hub.broker.local import RunningBroker
from cloud_hub.cli import app as hub_cli
from cloud_hub.experiments import engine as en
from cloud_hub.experiments.design import A, B
from cloud_hub.experiments.operations import start_experiment
from cloud_hub.experiments.samples import Outcomes, outcomes_from_labels
from cloud_hub.hub import Hub
from cloud_hub.rollout import engine as ro
from cloud_hub.store.database import Store, typed
from cloud_hub.store.url import store_url
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.messages import Command, ModelRef
from edge_agent.protocol.records import TelemetryWindow
from tests.support.dashboard_fleet import FEATURES, SimDevice, card_json, publish_card
from tests.support.hub_thread import new_hub, run_hub

pytestmark = pytest.mark.broker
WAIT_S = 20.0
V1, V2 = ModelRef("climate", 1), ModelRef("climate", 2)
HOUR = 3600.0


@dataclass
class Lab:
    """A hub on its own thread over `home`, and devices tagged `lab`."""

    broker: RunningBroker
    home: Path
    offset: float = 0.0
    outcomes: Outcomes | None = None
    hub: Hub | None = None
    halt: Callable[[], None] | None = None
    devices: dict[str, SimDevice] = field(default_factory=dict)

    def start_hub(self) -> Hub:
        self.hub = new_hub(
            self.home, self.broker, clock=lambda: time.time() + self.offset, outcomes=self.outcomes
        )
        self.halt = run_hub(self.hub)
        return self.hub

    def stop_hub(self) -> None:
        assert self.halt is not None
        self.halt()
        self.hub = self.halt = None

    @property
    def store(self) -> Store:
        assert self.hub is not None
        return self.hub.store

    def wait(self, what: str, check: Callable[[], bool]) -> None:
        """Until `check()` holds: the hub notifies after each message and each experiment step
        that changed something."""
        assert self.hub is not None
        with self.hub.handled:
            assert self.hub.handled.wait_for(check, WAIT_S), f"timed out waiting for {what}"

    def add(self, name: str) -> SimDevice:
        self.store.register(name)
        self.store.label_device(name, add=["lab"])
        device = self.devices[name] = SimDevice(self.broker, name)
        device.model = V1  # the fleet serves climate@1
        device.status()
        return device

    def experiment(self, experiment_id: str) -> en.Experiment:
        row = self.store.experiment(experiment_id)
        assert row is not None
        return en.Experiment.from_json(row["body"])

    def install(self, e: en.Experiment, device: str) -> None:
        """Wait for the device's deploy: a signed command naming its cohort's model, from its
        cohort's rollout; answer it as an agent does, and serve that model from then on."""
        sim = self.devices[device]
        cohort = e.cohorts[device]
        cmd = sim.wait_command()
        assert (cmd.kind, cmd.model, cmd.rollout) == (
            "deploy",
            e.models[cohort],
            e.rollouts[cohort],
        )
        assert cmd.target == e.models[cohort].target_path
        sim.events(e.rollouts[cohort], e.models[cohort], "installed", "healthy")
        sim.model = e.models[cohort]
        sim.status()

    def install_all(self, e: en.Experiment) -> None:
        """Each cohort's canary (its first device) first, then the rest (their wave starts once
        the canary is healthy)."""
        firsts = [e.members(c)[0] for c in (A, B)]
        for device in firsts + [d for d in sorted(e.cohorts) if d not in firsts]:
            self.install(e, device)

    def stop(self) -> None:
        for device in self.devices.values():
            device.stop()
        if self.halt is not None:
            self.stop_hub()


def windows(device: SimDevice, p95: list[float], errors: int = 0, right: float = 1.0) -> None:
    """Telemetry windows of 100 inferences each with the device's model: these p95 values,
    `errors` failed lines per window, and a share `right` of predictions "1" (the rest "0")."""
    assert device.model is not None
    ones = round(100 * right)
    device.send(
        "telemetry",
        *(
            {
                "window_s": 1.0,
                "model": device.model.to_json(),
                "count": 100,
                "latency_ms": {"p50": v / 2, "p95": v, "p99": v * 1.5},
                "errors": {"nan": errors} if errors else {},
                "predictions": {"1": ones, "0": 100 - ones} if ones < 100 else {"1": 100},
            }
            for v in p95
        ),
    )


@pytest.fixture
def lab(broker: RunningBroker, tmp_path: Path) -> Iterator[Lab]:
    home = tmp_path / "hub"
    home.mkdir()
    x = np.random.default_rng(0).normal(size=(200, len(FEATURES)))
    for model in (V1, V2):
        publish_card(home, card_json(x, FEATURES, model))  # initialises the hub's repository
    running = Lab(broker, home)
    yield running
    running.stop()


def cli(home: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert hub_cli.main(["--home", str(home), *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_better_p95_wins_and_cohorts_survive_a_restart(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    lab.start_hub()
    for name in ("lab-1", "lab-2", "lab-3", "lab-4"):
        lab.add(name)
    plan = en.Design("p95", 0.5, deadline_s=HOUR)
    e = start_experiment(lab.home, V2, V1, "tag:lab", plan)
    assert e.needed == 64
    assert sorted(e.cohorts) == ["lab-1", "lab-2", "lab-3", "lab-4"]
    assert e.members(A) and e.members(B)
    lab.install_all(e)

    # cohorts are stored at start: a restarted hub has the same, and they follow the rule
    lab.stop_hub()
    lab.start_hub()
    stored = lab.experiment(e.id)
    assert stored.cohorts == e.cohorts == en.assign_all(e.id, sorted(e.cohorts), 0.5)

    # a device tagged later joins the cohort the rule gives it, and gets that cohort's model
    lab.add("lab-5")
    lab.wait("lab-5 in a cohort", lambda: "lab-5" in lab.experiment(e.id).cohorts)
    e = lab.experiment(e.id)
    assert e.cohorts["lab-5"] == en.assign_all(e.id, ["lab-5"], 0.5)["lab-5"]
    lab.install(e, "lab-5")

    rng = np.random.default_rng(3)
    for name, device in lab.devices.items():
        centre = 10.0 if e.cohorts[name] == A else 14.0  # the candidate is faster
        windows(device, list(rng.normal(centre, 4.0, 64)))
    lab.wait("the decision", lambda: lab.experiment(e.id).state == en.DECIDED)
    done = lab.experiment(e.id)
    assert done.decision is not None
    assert (done.decision["outcome"], done.decision["winner"]) == ("winner", A)
    assert done.decision["text"].startswith("climate@2 wins: p95 ")
    assert done.result is not None and done.result["high"] < 0

    shown = cli(lab.home, capsys, "experiment", "show", e.id)
    assert (shown["state"], shown["winner"], shown["needed"]) == ("decided", "climate@2", 64)
    assert all(c["n"] >= 64 and c["low"] < c["value"] < c["high"] for c in shown["cohorts"])
    assert shown["test"].startswith("percentile bootstrap 95% interval")
    (listed,) = cli(lab.home, capsys, "experiment", "list")
    assert listed == shown

    promoted = cli(lab.home, capsys, "experiment", "promote", e.id)
    assert (promoted["model"], promoted["plan"]["select"]) == (V2.to_json(), "tag:lab")
    assert lab.experiment(e.id).promoted == promoted["id"]
    # the promotion supersedes the experiment's rollouts (both of models named climate)
    for rollout_id in e.rollouts.values():
        row = lab.store.rollout(rollout_id)
        assert row is not None and row["state"] == ro.SUPERSEDED


def test_equal_models_end_with_no_difference_at_the_deadline(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    lab.start_hub()
    for name in ("lab-1", "lab-2", "lab-3", "lab-4"):
        lab.add(name)
    e = start_experiment(
        lab.home, V2, V1, "tag:lab", en.Design("error-rate", 0.05, deadline_s=HOUR)
    )
    lab.install_all(e)
    for device in lab.devices.values():
        windows(device, [5.0] * 3, errors=2)  # the same error rate under both models
    sizes = {c: 306 * len(e.members(c)) for c in (A, B)}  # rows: 3 x (100 inferences + 2 errors)
    lab.wait(
        "every window counted",
        lambda: {c: p["n"] for c, p in lab.experiment(e.id).progress.items()} == sizes,
    )
    assert lab.experiment(e.id).state == en.RUNNING  # fewer rows than the 1570 needed
    lab.offset = HOUR + 1
    lab.wait("the deadline", lambda: lab.experiment(e.id).state == en.DECIDED)
    decision = lab.experiment(e.id).decision
    assert decision == {
        "outcome": "underpowered",
        "winner": None,
        "text": f"no difference (underpowered: {min(sizes.values())} of 1570)",
    }
    code = hub_cli.main(["--home", str(lab.home), "experiment", "promote", e.id])
    err = capsys.readouterr().err
    assert code == 1
    assert err == (
        f"edgehub: error: experiment {e.id} has no winner to promote "
        f"(no difference (underpowered: {min(sizes.values())} of 1570))\n"
    )


@frozen
class JoinedLabel:
    """What `Store.joined_labels` returns (labels are not on this branch yet)."""

    device: str
    boot: int
    row: int
    model: ModelRef
    prediction: str
    label: str
    received: float


class TelemetryLabels:
    """A stand-in for the label store, fed by the telemetry the hub stored: every row a window
    predicted is labelled "1"."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def joined_labels(
        self, model: ModelRef | None = None, devices: Any = None, since: float = 0.0
    ) -> list[JoinedLabel]:
        chosen = list(devices) if devices is not None else None
        out = []
        for rec, w in typed(self.store.records_since("telemetry", chosen, since), TelemetryWindow):
            if w.model is None or (model is not None and w.model != model):
                continue
            row = 0
            for prediction, n in sorted(w.predictions.items()):
                for _ in range(n):
                    out.append(
                        JoinedLabel(rec.device, rec.boot, row, w.model, prediction, "1", rec.ts)
                    )
                    row += 1
        return out


def test_the_more_accurate_model_wins_on_joined_labels(lab: Lab) -> None:
    lab.outcomes = outcomes_from_labels(TelemetryLabels(Store(store_url(lab.home))).joined_labels)
    lab.start_hub()
    for name in ("lab-1", "lab-2", "lab-3", "lab-4"):
        lab.add(name)
    e = start_experiment(lab.home, V2, V1, "tag:lab", en.Design("accuracy", 0.1, deadline_s=HOUR))
    assert e.needed == 393
    lab.install_all(e)
    for name, device in lab.devices.items():
        right = 0.9 if e.cohorts[name] == A else 0.75
        per_device = math.ceil(4 / len(e.members(e.cohorts[name])))  # 400 rows a cohort
        windows(device, [5.0] * per_device, right=right)
    lab.wait("the decision", lambda: lab.experiment(e.id).state == en.DECIDED)
    decision = lab.experiment(e.id).decision
    assert decision is not None and decision["winner"] == A, decision
    assert decision["text"].startswith("climate@2 wins: accuracy 0.9000 vs 0.7500")


def nth_command(sim: SimDevice, n: int) -> Command:
    """The device's n-th command (from 0), once it arrived."""
    with sim.got_command:
        assert sim.got_command.wait_for(lambda: len(sim.commands) > n, WAIT_S), (
            f"{sim.id}: no command {n} within {WAIT_S}s"
        )
        return sim.commands[n]


def test_agreement_with_the_serving_model_from_shadow_reports(lab: Lab) -> None:
    """Both candidates shadow the model the devices serve (climate@1) before they deploy; the
    one that agrees with it more wins."""
    v3 = ModelRef("climate", 3)
    x = np.random.default_rng(0).normal(size=(200, len(FEATURES)))
    publish_card(lab.home, card_json(x, FEATURES, v3))
    lab.start_hub()
    for name in ("lab-1", "lab-2", "lab-3", "lab-4"):
        lab.add(name)
    e = start_experiment(lab.home, v3, V2, "tag:lab", en.Design("agreement", 0.1, deadline_s=HOUR))
    assert e.needed == 393
    agreement = {A: 0.95, B: 0.8}
    firsts = [e.members(c)[0] for c in (A, B)]
    for name in firsts + [d for d in sorted(e.cohorts) if d not in firsts]:
        sim, cohort = lab.devices[name], e.cohorts[name]
        model, rollout = e.models[cohort], e.rollouts[cohort]
        shadow = nth_command(sim, 0)
        assert (shadow.kind, shadow.model, shadow.rollout) == ("shadow", model, rollout)
        assert shadow.rows == 197  # each of the cohort's two devices brings half of 393
        report = {"current": V1.to_json(), "rows": shadow.rows, "agreement": agreement[cohort]}
        sim.send(
            "events",
            {"event": "shadowing", "model": model.to_json(), "rollout": rollout},
            {"event": "shadow-report", "model": model.to_json(), "rollout": rollout}
            | {"shadow": report},
        )
        deploy = nth_command(sim, 1)
        assert (deploy.kind, deploy.model) == ("deploy", model)
        sim.events(rollout, model, "installed", "healthy")
    lab.wait("the decision", lambda: lab.experiment(e.id).state == en.DECIDED)
    done = lab.experiment(e.id)
    agreed = {c: 2 * round(agreement[c] * 197) for c in (A, B)}  # whole rows, per report
    assert done.progress == {c: {"n": 394, "value": agreed[c] / 394} for c in (A, B)}
    assert done.decision is not None and done.decision["winner"] == A
    assert done.decision["text"].startswith("climate@3 wins: agreement 0.9492 vs 0.8020")
