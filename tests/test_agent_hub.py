"""Agent and hub in one process against a private mosquitto: bad messages, health-gate rollback."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from cloud_hub.broker.local import RunningBroker
from cloud_hub.hub import Hub
from cloud_hub.rollout import engine as ro
from cloud_hub.rollout.operations import publish_bundle, start_rollout
from converters.pipeline import build_bundle
from edge_agent.agent import Agent
from edge_agent.errors import MessageError
from edge_agent.protocol.messages import Command, ModelRef, decode_batch, decode_status, encode
from tests.device_rig import enrolled, hub_and_agent

pytestmark = pytest.mark.broker
DEVICE = "pi-01"


class Watcher:
    """Sees what devices publish; tests wait on its condition, not on the clock."""

    def __init__(self, broker: RunningBroker) -> None:
        self.events: list[dict[str, Any]] = []
        self.status: dict[str, Any] = {}
        self._changed = threading.Condition()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.on_message = self._message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe("edgefleet/dev/+/events", qos=1)
        self.client.subscribe("edgefleet/dev/+/status", qos=1)
        self.client.loop_start()

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._changed:
            try:
                if msg.topic.endswith("/events"):
                    batch = decode_batch(msg.payload, "events")
                    self.events.extend(r.body for r in batch.records)
                else:
                    self.status = decode_status(msg.payload).to_json()
            except MessageError:
                return  # the tests publish garbage on purpose
            self._changed.notify_all()

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 30) -> None:
        with self._changed:
            assert self._changed.wait_for(check, timeout), f"timed out waiting for {what}"

    def has_event(self, event: str, version: int) -> bool:
        return any(
            e["event"] == event and (e["model"] or {}).get("version") == version
            for e in self.events
        )

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Fleet:
    home: Path
    hub: Hub
    agent: Agent
    watcher: Watcher
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
    watcher = Watcher(broker)
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


def test_bad_messages_are_counted_and_kill_nothing(fleet: Fleet) -> None:
    garbage = [b"\xff\xfe\x00", b"{}", b'{"v": 99}', b'{"v": 1, "id": "x", "kind": "format-disk"}']
    for payload in garbage:
        _publish(fleet.broker, f"edgefleet/dev/{DEVICE}/cmd", payload)
    w = fleet.watcher
    w.wait(
        "the agent to count every bad command",
        lambda: w.status.get("stats", {}).get("bad_messages", 0) >= len(garbage),
    )
    # at the hub: garbage telemetry, and a device claiming another's identity
    _publish(fleet.broker, f"edgefleet/dev/{DEVICE}/telemetry", b"not json")
    _publish(
        fleet.broker,
        f"edgefleet/dev/{DEVICE}/telemetry",
        b'{"v":1,"device":"pi-02","records":[{"boot":1,"seq":0,"ts":1}]}',
    )
    _publish(fleet.broker, f"edgefleet/dev/{DEVICE}/events", b'{"v":1,"device":"x"}')
    hub = fleet.hub
    with hub.handled:
        assert hub.handled.wait_for(lambda: sum(hub.rejected.values()) >= 3, 30), hub.rejected
    assert hub.rejected["MessageError"] >= 3
    w.wait("the agent to keep publishing", lambda: w.status.get("online") is True)
    assert fleet.agent.session.connected.is_set()
    assert all(d["id"] != "pi-02" for d in fleet.hub.store.devices())
    assert fleet.hub.store.count("telemetry") == 0


def test_unhealthy_model_is_rolled_back_and_rollout_halts(fleet: Fleet, tmp_path: Path) -> None:
    w = fleet.watcher
    publish_bundle(fleet.home, _bundle(tmp_path, 1))
    start_rollout(fleet.home, ModelRef("iris", 1), "1")
    w.wait("iris@1 healthy", lambda: w.has_event("healthy", 1))

    # version 2 passes verification but its card's latency budget cannot be met
    publish_bundle(fleet.home, _bundle(tmp_path, 2, max_latency_ms=1e-6))
    r = start_rollout(fleet.home, ModelRef("iris", 2), "1")
    w.wait("iris@2 rolled back", lambda: w.has_event("rolled-back", 2))
    events = [e["event"] for e in w.events if e["model"]["version"] == 2]
    assert events == ["offered", "downloading", "verified", "installed", "rolled-back"]
    reason = next(e["reason"] for e in w.events if e["event"] == "rolled-back")
    assert "health gate failed" in reason and "latency" in reason
    w.wait(
        "the status to show iris@1 again", lambda: (w.status.get("model") or {}).get("version") == 1
    )
    assert fleet.agent.store.record().current == ModelRef("iris", 1)

    def halted() -> bool:
        row = next(x for x in fleet.hub.store.rollouts() if x["id"] == r.id)
        return bool(row["state"] == ro.HALTED)

    with fleet.hub.handled:  # the hub steps rollouts between messages; status keeps arriving
        assert fleet.hub.handled.wait_for(halted, 30)


def test_a_rollback_of_a_model_the_device_does_not_run_is_ignored(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The hub may send a rollback after the device already stepped back by itself: one step
    back only, never past the model it runs."""
    w = fleet.watcher
    publish_bundle(fleet.home, _bundle(tmp_path, 1))
    start_rollout(fleet.home, ModelRef("iris", 1), "1")
    w.wait("iris@1 healthy", lambda: w.has_event("healthy", 1))
    stale = Command("c-stale", "rollback", model=ModelRef("iris", 2), rollout="r-old")
    _publish(fleet.broker, f"edgefleet/dev/{DEVICE}/cmd", encode(stale))
    publish_bundle(fleet.home, _bundle(tmp_path, 3))  # commands are handled in order
    start_rollout(fleet.home, ModelRef("iris", 3), "1")
    w.wait("iris@3 healthy", lambda: w.has_event("healthy", 3))
    assert not any(e["event"] == "rolled-back" for e in w.events)
    assert fleet.agent.store.record().current == ModelRef("iris", 3)
