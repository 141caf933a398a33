"""The closed loop on the real stack (issue 18): a hub and a whole agent over a private
mosquitto. rule@1, trained on an old concept (f0 > 0), serves; the world changes (f0 + f1 > 0.5);
labels for the rows the agent sampled come back by prediction id and the hub's accuracy for
rule@1 falls; the policy `accuracy < 0.9` fires, a real training script trains on the exported
data set, the candidate rule@2 is converted, validated against rule@1 on the held-out rows,
published and rolled out shadow first; the device serves it, and on new rows of the new concept
with their labels the hub's accuracy for rule@2 is back above the floor."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from cloud_hub.broker.local import RunningBroker
from cloud_hub.cli import app as hub_cli
from cloud_hub.harness.loop import FEATURES, FLOOR, TRAIN, V1, V2, new_rule, old_rule
from cloud_hub.hub import Hub
from cloud_hub.retrain import registry as reg
from cloud_hub.rollout.operations import publish_bundle, start_rollout
from cloud_hub.store.database import typed
from converters.pipeline import build_bundle
from edge_agent.agent import Agent
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.records import RawSample
from tests.support.device_rig import enrolled, hub_and_agent
from tests.support.models import csv_line
from tests.support.watch import DeviceWatcher

DEVICE = "pi-01"
truth = new_rule  # the world after the change, as the demo's loop has it


@dataclass
class Loop:
    home: Path
    hub: Hub
    agent: Agent
    watcher: DeviceWatcher
    rng: np.random.Generator

    def feed(self, n: int) -> None:
        """`n` rows of the new concept into the agent, as CSV sensor lines."""
        for row in self.rng.normal(size=(n, 3)).astype(np.float32):
            self.agent.lines.put(("csv", csv_line(row)))

    def samples(self, model: ModelRef) -> list[RawSample]:
        stored = typed(self.hub.store.records("telemetry", DEVICE), RawSample)
        return [s for _, s in stored if s.model == model and s.id is not None]

    def wait_samples(self, model: ModelRef, n: int) -> list[RawSample]:
        with self.hub.handled:
            ok = self.hub.handled.wait_for(lambda: len(self.samples(model)) >= n, 30)
        assert ok, f"{n} sampled rows of {model} not stored: {len(self.samples(model))}"
        return self.samples(model)

    def cli(self, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
        capsys.readouterr()
        code = hub_cli.main(["--home", str(self.home), *argv])
        out, err = capsys.readouterr()
        assert code == 0, err
        return json.loads(out) if "--json" in argv else out

    def label(self, capsys: pytest.CaptureFixture[str], samples: list[RawSample]) -> None:
        """The truth for these rows, back through `edgehub labels import` by prediction id."""
        path = self.home.parent / f"labels-{len(self.hub.store.joined_labels())}.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["prediction", "label"])
            for s in samples:
                writer.writerow([s.id, truth(dict(s.features))])
        self.cli(capsys, "labels", "import", str(path))

    def accuracy(self, capsys: pytest.CaptureFixture[str], model: ModelRef) -> dict[str, Any]:
        report = self.cli(capsys, "metrics", "--model", str(model), "--json")
        (row,) = report["rows"]
        assert (row["model"], row["version"]) == (model.name, model.version)
        return dict(row)


@pytest.fixture
def loop(broker: RunningBroker, tmp_path: Path) -> Iterator[Loop]:
    more = (
        "[telemetry]\nstatus_interval_s = 0.2\ninterval_s = 0.3\nraw_sample_rate = 1.0\n"
        "window_rows = 40\n"
    )
    home, cfg_path = enrolled(tmp_path, broker, DEVICE, more)
    rng = np.random.default_rng(18)
    x_old = rng.normal(size=(300, 3)).astype(np.float32)
    bundle = tmp_path / "rule-1.zip"
    model = LogisticRegression(C=100.0).fit(x_old, old_rule(x_old))
    build_bundle(
        model, x_old, old_rule(x_old), name="rule", version=1, out=bundle, feature_names=FEATURES
    )
    (tmp_path / "train.py").write_text(TRAIN)
    watcher = DeviceWatcher(broker)
    with hub_and_agent(home, broker, cfg_path) as (hub, agent):
        watcher.wait("the agent's birth", lambda: watcher.status.get("online") is True)
        publish_bundle(home, bundle)
        start_rollout(home, V1, "1")
        watcher.wait("rule@1 healthy", lambda: watcher.has_event("healthy", 1))
        yield Loop(home, hub, agent, watcher, rng)
    watcher.stop()


def test_accuracy_falls_a_policy_retrains_and_the_new_model_recovers(
    loop: Loop, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = loop.watcher
    # the policy, set while rule@1 is still right (labels from before it are not new to it)
    train = tmp_path / "train.py"
    loop.cli(
        capsys,
        *("retrain", "policy", "add", "rule", "--when", f"accuracy < {FLOOR}"),
        *("--run", f"{sys.executable} {train} {{data}} {{model}}", "--timeout", "2m"),
        *("--shadow", "50"),
    )
    assert "no policy fired" in loop.cli(capsys, "retrain", "check")
    # 2-3. the world changes; the truth for the rows rule@1 predicted comes back
    loop.feed(300)
    before = loop.wait_samples(V1, 300)
    loop.label(capsys, before)
    fallen = loop.accuracy(capsys, V1)
    assert fallen["labels"] == 300
    assert fallen["accuracy"]["value"] < 0.85, fallen
    expected = np.mean([s.prediction == truth(dict(s.features)) for s in before])
    assert fallen["accuracy"]["value"] == pytest.approx(expected)

    # 4. the policy fires on the fallen accuracy and runs the whole way to a shadowed rollout
    (run,) = loop.cli(capsys, "retrain", "check", "--json")
    stored = reg.run(loop.hub.store, run["id"])
    assert stored is not None
    assert stored.state == reg.ROLLING_OUT, stored.reason
    assert stored.trigger.startswith(f"accuracy < {FLOOR}: accuracy 0.")
    assert (stored.serving, stored.candidate, stored.verdict) == ("rule@1", "rule@2", "better")
    v = stored.validation
    assert v["candidate"] > FLOOR and v["candidate"] > v["serving"] + 0.05, v
    # shadow first: rule@2 runs next to rule@1 on new rows, then serves
    w.wait("rule@2 shadowing", lambda: w.has_event("shadowing", 2))
    loop.feed(60)
    w.wait("rule@2 healthy", lambda: w.has_event("healthy", 2))
    assert any(e["event"] == "shadow-report" for e in w.events)
    assert loop.agent.pipeline.active is not None
    assert loop.agent.pipeline.active.card.model == V2

    # 5. new rows of the new concept, their truth back: rule@2 is above the floor
    loop.feed(200)
    after = loop.wait_samples(V2, 200)
    loop.label(capsys, after)
    recovered = loop.accuracy(capsys, V2)
    assert recovered["labels"] == len(after)
    assert recovered["accuracy"]["value"] > FLOOR, recovered
    # and the policy does not fire again on the recovered model
    assert "no policy fired" in loop.cli(capsys, "retrain", "check")
