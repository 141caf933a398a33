"""Home Assistant MQTT discovery: the configs, their templates on real device payloads, and the
announcements over a real mosquitto (device birth, Home Assistant's birth, garbage)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from jinja2 import Environment, StrictUndefined
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.broker.local import RunningBroker
from cloud_hub.ha_discovery import HaDiscovery, discovery_messages, node_id
from edge_agent.errors import ConfigError
from edge_agent.mqtt.session import BrokerAddress
from edge_agent.protocol.messages import Batch, ModelRef, Record, Status, encode
from tests.support.dashboard_fleet import TOPICS, SimDevice


def render(template: str, payload: bytes) -> str:
    """As Home Assistant renders a value template: Jinja2 with `value_json`."""
    env = Environment(undefined=StrictUndefined)
    return env.from_string(template).render(value_json=json.loads(payload))


def test_configs_read_the_plain_device_topics() -> None:
    messages = dict(discovery_messages("pi.01", TOPICS, "homeassistant", "raspberry-pi-4", "0.3"))
    node = node_id("pi.01")
    assert node == "edgefleet_pi_01"
    assert sorted(messages) == [
        f"homeassistant/sensor/{node}/{obj}/config"
        for obj in ("drift_max_psi", "latency_p95", "model_version", "status")
    ]
    configs = {t.split("/")[3]: json.loads(p) for t, p in messages.items()}
    assert {c["unique_id"] for c in configs.values()} == {f"{node}_{o}" for o in configs}
    assert configs["status"]["device"] == {
        "identifiers": [node],
        "name": "pi.01",
        "manufacturer": "edgefleet",
        "model": "raspberry-pi-4",
        "sw_version": "0.3",
    }
    assert configs["latency_p95"]["unit_of_measurement"] == "ms"
    assert "availability_topic" not in configs["status"]
    assert configs["drift_max_psi"]["availability_topic"] == "edgefleet/dev/pi.01/status"

    status = encode(Status("pi.01", True, 1, "0.3", "raspberry-pi-4", ModelRef("climate", 4)))
    bare = encode(Status("pi.01", True))
    offline = encode(Status("pi.01", False))
    telemetry = encode(
        Batch("pi.01", (Record(1, 1, 1.0, {"latency_ms": {"p50": 1, "p95": 2.5, "p99": 3}}),))
    )
    drift = encode(Batch("pi.01", (Record(1, 2, 1.0, {"max_psi": 0.42, "psi": {}}),)))
    payloads = {"status": status, "telemetry": telemetry, "drift": drift}
    got = {
        obj: render(c["value_template"], payloads[c["state_topic"].rsplit("/", 1)[1]])
        for obj, c in configs.items()
    }
    assert got == {
        "status": "online",
        "model_version": "climate@4",
        "latency_p95": "2.5",
        "drift_max_psi": "0.42",
    }
    assert render(configs["model_version"]["value_template"], bare) == "none"
    assert render(configs["status"]["value_template"], offline) == "offline"
    assert render(configs["latency_p95"]["availability_template"], offline) == "offline"


def test_a_bad_prefix_is_refused() -> None:
    with pytest.raises(ConfigError, match="--ha-prefix: expected topic levels"):
        HaDiscovery(BrokerAddress("127.0.0.1", 1), TOPICS, "home assistant/#")


class Watcher:
    """Collects discovery configs as Home Assistant would receive them."""

    def __init__(self, broker: RunningBroker) -> None:
        self.configs: list[tuple[str, bool]] = []
        self.changed = threading.Condition()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.on_message = self._message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def subscribe(self) -> None:
        with self.changed:
            self.configs.clear()
        self.client.subscribe("homeassistant/sensor/#", qos=1)

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.changed:
            self.configs.append((msg.topic, bool(msg.retain)))
            self.changed.notify_all()

    def wait(self, n: int) -> list[tuple[str, bool]]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.configs) >= n, 15), self.configs
            return list(self.configs)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def watcher(broker: RunningBroker) -> Iterator[Watcher]:
    w = Watcher(broker)
    yield w
    w.stop()


@pytest.mark.broker
def test_devices_are_announced_and_again_when_home_assistant_starts(
    broker: RunningBroker, watcher: Watcher
) -> None:
    ha = HaDiscovery(BrokerAddress(broker.host, broker.port), TOPICS)
    ha.start()
    device = SimDevice(broker, "pi-7")
    try:
        assert ha.session.wait_connected(10)
        device.model = ModelRef("climate", 1)
        device.status()
        with ha.changed:
            assert ha.changed.wait_for(lambda: ha.announced == 4, 15)
        device.status()  # the same device again: nothing new to say
        watcher.subscribe()  # a late subscriber gets the configs as retained messages
        configs = watcher.wait(4)
        assert sorted(configs) == sorted(
            (f"homeassistant/sensor/edgefleet_pi-7/{o}/config", True)
            for o in ("status", "model_version", "latency_p95", "drift_max_psi")
        )
        # garbage on Home Assistant's status topic is refused and changes nothing
        watcher.publish("homeassistant/status", b"\xff rebooting")
        watcher.publish("homeassistant/status", b"offline")
        watcher.publish("homeassistant/status", b"online")  # its birth: announce again
        configs = watcher.wait(8)
        assert [retain for _, retain in configs[4:]] == [False] * 4  # live, not from the store
        with ha.changed:  # the broker's PUBACKs may reach the hub after the watcher got them
            assert ha.changed.wait_for(lambda: ha.announced == 8, 15)
    finally:
        device.stop()
        ha.stop()
