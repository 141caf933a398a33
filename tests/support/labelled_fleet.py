"""A hub and a whole agent on threads of this process over a real mosquitto, the agent serving
iris@1 (a real bundle) with its results feed on the same broker, taking labels in on
`edgefleet/local/pi-01/labels` (LOCAL_LABELS), raw samples on, small windows (`labelled_fleet`
fixture, `LabelledFleet`), and `feed`, which hands it sensor lines."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_iris

from cloud_hub.broker.local import RunningBroker
from cloud_hub.hub import Hub
from cloud_hub.rollout.operations import publish_bundle, start_rollout
from edge_agent.agent import Agent
from edge_agent.protocol.messages import ModelRef
from tests.support.device_rig import enrolled, hub_and_agent
from tests.support.fleet import _bundle
from tests.support.watch import DeviceWatcher

DEVICE = "pi-01"
IRIS_X, IRIS_Y = load_iris(return_X_y=True)
MODEL = ModelRef("iris", 1)
LOCAL_LABELS = f"edgefleet/local/{DEVICE}/labels"


@dataclass
class LabelledFleet:
    home: Path
    hub: Hub
    agent: Agent
    watcher: DeviceWatcher
    broker: RunningBroker
    bundle: Path
    model: ModelRef = MODEL


def agent_file_more(broker: RunningBroker) -> str:
    return (
        "[telemetry]\nstatus_interval_s = 0.2\ninterval_s = 0.3\nraw_sample_rate = 0.2\n"
        "window_rows = 40\n"
        f'[results]\nenabled = true\nhost = "{broker.host}"\nport = {broker.port}\n'
        "labels = true\n"
    )


@pytest.fixture
def labelled_fleet(broker: RunningBroker, tmp_path: Path) -> Iterator[LabelledFleet]:
    home, cfg_path = enrolled(tmp_path, broker, DEVICE, agent_file_more(broker))
    watcher = DeviceWatcher(broker)
    bundle = _bundle(tmp_path, MODEL.version)
    with hub_and_agent(home, broker, cfg_path) as (hub, agent):
        watcher.wait("the agent's birth", lambda: watcher.status.get("online") is True)
        publish_bundle(home, bundle)
        start_rollout(home, MODEL, "1")
        watcher.wait("iris@1 healthy", lambda: watcher.has_event("healthy", MODEL.version))
        assert agent.results is not None and agent.results.wait_connected(30)
        yield LabelledFleet(home, hub, agent, watcher, broker, bundle)
    watcher.stop()


def feed(fleet: LabelledFleet, x: np.ndarray, bad_every: int = 0) -> None:
    """Each row of `x` as a CSV sensor line into the agent; with `bad_every`, a line of the
    wrong field count before every `bad_every`-th row (rejected, so it takes no id)."""
    for i, row in enumerate(x):
        if bad_every and i % bad_every == 0:
            fleet.agent.lines.put(("csv", b"1,2,3"))
        fleet.agent.lines.put(("csv", ",".join(repr(float(v)) for v in row).encode()))
