"""`edgehub demo --loop`: the closed loop in one command, on a private broker, a hub and an agent.

rule@1, trained on an old concept (f0 > 0), is signed and rolled out. A retraining policy
`accuracy < 0.9` is added. The world changes (f0 + f1 > 0.5): the agent infers rows of the new
concept, and their truth comes back by prediction id (`edgehub labels import`), so the hub's
accuracy for rule@1 falls. The policy fires: a real training script trains on the exported data
set, the candidate rule@2 is converted, validated against rule@1 on held-out rows, signed and
rolled out shadow first. The device serves it, and on new rows with their labels the hub's
accuracy for rule@2 is back above the floor. Each step is checked and shown in a table.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from sklearn.linear_model import LogisticRegression

from cloud_hub.broker.local import start_broker
from cloud_hub.harness.commands import edgehub_argv
from cloud_hub.harness.demo import Checks, DemoOptions, report_checks
from cloud_hub.harness.inprocess import hub_and_agent
from cloud_hub.hub import Hub
from cloud_hub.rollout.operations import enroll_device, init_hub, publish_bundle, start_rollout
from cloud_hub.store.database import typed
from converters.pipeline import build_bundle
from edge_agent.agent import Agent
from edge_agent.mqtt.session import BrokerAddress
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.records import DeviceEvent, RawSample

DEVICE = "loop-01"
FEATURES = ["f0", "f1", "f2"]
V1, V2 = ModelRef("rule", 1), ModelRef("rule", 2)
FLOOR = 0.9
WAIT_S = 60.0

TRAIN = """\
import csv, json, pathlib, sys
import joblib
from sklearn.linear_model import LogisticRegression

data, out = pathlib.Path(sys.argv[1]), sys.argv[2]
features = json.loads((data / "manifest.json").read_text())["features"]
with open(data / "samples.csv", newline="") as f:
    rows = [r for r in csv.DictReader(f) if r["label"] != ""]
x = [[float(r[name]) for name in features] for r in rows]
joblib.dump(LogisticRegression(C=100.0).fit(x, [int(r["label"]) for r in rows]), out)
"""


def old_rule(x: np.ndarray) -> np.ndarray:
    return (x[:, 0] > 0).astype(np.int64)


def new_rule(features: dict[str, Any]) -> int:
    return int(features["f0"] + features["f1"] > 0.5)


class Loop:
    """The hub and the agent of the loop, in this process, and what the demo asks of them."""

    def __init__(self, workdir: Path, hub: Hub, agent: Agent) -> None:
        self.workdir, self.hub, self.agent = workdir, hub, agent
        self.home = hub.home
        self.rng = np.random.default_rng(18)

    def wait(self, check: Callable[[], bool]) -> bool:
        """Whether `check()` came to hold within WAIT_S (asked after each message the hub
        handled)."""
        with self.hub.handled:
            return self.hub.handled.wait_for(check, WAIT_S)

    def said(self, event: str, model: ModelRef) -> bool:
        """Whether the device reported `event` about `model`."""
        events = typed(self.hub.store.records("events", DEVICE), DeviceEvent)
        return any(e.event == event and e.model == model for _, e in events)

    def feed(self, n: int) -> None:
        """`n` rows of the new concept, as CSV sensor lines into the agent."""
        for row in self.rng.normal(size=(n, 3)).astype(np.float32):
            self.agent.lines.put(("csv", ",".join(f"{v:.6f}" for v in row).encode()))

    def samples(self, model: ModelRef) -> list[RawSample]:
        stored = typed(self.hub.store.records("telemetry", DEVICE), RawSample)
        return [s for _, s in stored if s.model == model and s.id is not None]

    def edgehub(self, *argv: str) -> Any:
        """An edgehub command on the loop's hub, as a person runs it (a process of its own);
        its output (JSON with --json)."""
        command = [sys.executable, *edgehub_argv(self.home, *argv)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=WAIT_S * 3)
        if done.returncode != 0:
            raise RuntimeError(f"edgehub {' '.join(argv)}: {done.stderr.strip() or done.stdout}")
        return json.loads(done.stdout) if "--json" in argv else done.stdout

    def label(self, samples: list[RawSample]) -> None:
        """The truth for these rows, back by prediction id through `edgehub labels import`."""
        path = self.workdir / f"labels-{len(self.hub.store.joined_labels())}.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["prediction", "label"])
            writer.writerows([s.id, new_rule(dict(s.features))] for s in samples)
        self.edgehub("labels", "import", str(path))

    def accuracy(self, model: ModelRef) -> tuple[float, int]:
        (row,) = self.edgehub("metrics", "--model", str(model), "--json")["rows"]
        return float(row["accuracy"]["value"]), int(row["labels"])


def run_loop(opts: DemoOptions) -> int:
    console = opts.console or Console()
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="edgefleet-loop-"))
    checks = Checks(say=lambda line: console.print(line, soft_wrap=True, markup=False))
    broker = start_broker(workdir / "broker", prefer=opts.broker)
    try:
        checks.add("broker", True, f"{broker.kind} on {broker.host}:{broker.port}")
        with _hub_and_agent(workdir, BrokerAddress(broker.host, broker.port)) as loop:
            _steps(loop, checks)
    finally:
        broker.stop()
    return report_checks(console, checks, workdir, opts)


def _steps(loop: Loop, checks: Checks) -> None:
    x_old = loop.rng.normal(size=(300, 3)).astype(np.float32)
    bundle = loop.workdir / "rule-1.zip"
    model = LogisticRegression(C=100.0).fit(x_old, old_rule(x_old))
    build_bundle(
        model, x_old, old_rule(x_old), name="rule", version=1, out=bundle, feature_names=FEATURES
    )
    publish_bundle(loop.home, bundle)
    start_rollout(loop.home, V1, "1")
    if not checks.add("serve rule@1", loop.wait(lambda: loop.said("healthy", V1)), "f0 > 0"):
        return
    train = loop.workdir / "train.py"
    train.write_text(TRAIN)
    loop.edgehub(
        *("retrain", "policy", "add", "rule", "--when", f"accuracy < {FLOOR}"),
        *("--run", f"{sys.executable} {train} {{data}} {{model}}", "--timeout", "2m"),
        *("--shadow", "50"),
    )
    checks.add("policy", True, f"accuracy < {FLOOR}: retrain with {train.name}")

    loop.feed(300)  # the world changes: f0 + f1 > 0.5
    if not loop.wait(lambda: len(loop.samples(V1)) >= 300):
        checks.add("the world changes", False, "the hub did not get the rows")
        return
    loop.label(loop.samples(V1))
    fallen, n = loop.accuracy(V1)
    if not checks.add("accuracy falls", fallen < FLOOR, f"rule@1 {fallen:.3f} on {n} labels"):
        return

    runs = loop.edgehub("retrain", "check", "--json")
    fired = len(runs) == 1 and runs[0]["state"] == "rolling-out"
    detail = f"{runs[0]['trigger']}; {runs[0]['verdict']}" if runs else "nothing fired"
    if not checks.add("retrain", fired, detail):
        return
    ok = loop.wait(lambda: loop.said("shadowing", V2))
    loop.feed(60)  # rows for the shadow to compare rule@2 with rule@1 on
    ok = ok and loop.wait(lambda: loop.said("healthy", V2))
    if not checks.add("roll out rule@2", ok, "signed, shadowed, installed, healthy"):
        return

    loop.feed(200)
    if not loop.wait(lambda: len(loop.samples(V2)) >= 200):
        checks.add("recover", False, "the hub did not get the rows")
        return
    loop.label(loop.samples(V2))
    recovered, n = loop.accuracy(V2)
    checks.add("recover", recovered > FLOOR, f"rule@2 {recovered:.3f} on {n} labels")


@contextmanager
def _hub_and_agent(workdir: Path, broker: BrokerAddress) -> Iterator[Loop]:
    """The hub, one enrolled device that samples every row it infers, both running."""
    home = workdir / "hub"
    init_hub(home)
    folder = workdir / DEVICE
    folder.mkdir(parents=True)
    enroll_device(home, DEVICE, folder / "state")
    config = folder / "agent.toml"
    config.write_text(
        f'[device]\nid = "{DEVICE}"\nstate_dir = "state"\n'
        f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\n'
        "[telemetry]\nstatus_interval_s = 0.2\ninterval_s = 0.3\nraw_sample_rate = 1.0\n"
        "window_rows = 40\n"
    )
    with hub_and_agent(home, broker, config) as (hub, agent):
        loop = Loop(workdir, hub, agent)
        loop.wait(lambda: hub.store.device(DEVICE) is not None)
        yield loop
