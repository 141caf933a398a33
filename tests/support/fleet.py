"""A hub and a whole agent on threads of this process over a real mosquitto (the `fleet`
fixture, `Fleet`), iris bundles to publish to it (`_bundle`) and a raw MQTT publish (`_publish`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from cloud_hub.broker.local import RunningBroker
from cloud_hub.hub import Hub
from converters.pipeline import build_bundle
from edge_agent.agent import Agent
from tests.support.device_rig import enrolled, hub_and_agent
from tests.support.watch import DeviceWatcher

DEVICE = "pi-01"


@dataclass
class Fleet:
    home: Path
    hub: Hub
    agent: Agent
    watcher: DeviceWatcher
    broker: RunningBroker


def _bundle(tmp: Path, version: int, max_latency_ms: float | None = None) -> Path:
    x, y = load_iris(return_X_y=True)
    out = tmp / f"iris-{version}.zip"
    build_bundle(
        LogisticRegression(max_iter=500).fit(x, y),
        x,
        y,
        name="iris",
        version=version,
        out=out,
        max_latency_ms=max_latency_ms,
    )
    return out


@pytest.fixture
def fleet(broker: RunningBroker, tmp_path: Path) -> Iterator[Fleet]:
    home, cfg_path = enrolled(tmp_path, broker, DEVICE, "[telemetry]\nstatus_interval_s = 0.2\n")
    watcher = DeviceWatcher(broker)
    with hub_and_agent(home, broker, cfg_path) as (hub, agent):
        watcher.wait("the agent's birth", lambda: watcher.status.get("online") is True)
        yield Fleet(home, hub, agent, watcher, broker)
    watcher.stop()


def _publish(broker: RunningBroker, topic: str, payload: bytes) -> None:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.publish(topic, payload, qos=1).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()
