"""Home Assistant MQTT discovery: each device's status, model version, latency p95 and drift as
Home Assistant sensors.

The sensors read the plain device topics directly (a value template picks the field), so nothing
is republished and Home Assistant sees what every other dashboard sees. The hub announces each
device once when it first sees its status (again when its profile or agent version change), as a
retained `homeassistant/sensor/<node>/<object>/config`, and announces every device again when
Home Assistant publishes `online` on `homeassistant/status` (its birth message).
"""

from __future__ import annotations

import json
import logging
import re
import threading

from edge_agent.errors import ConfigError, MessageError
from edge_agent.mqtt.session import BrokerAddress, MqttSession
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.records import decode_checked_status
from edge_agent.protocol.topics import Topics

log = logging.getLogger(__name__)

ONLINE_TEMPLATE = "{{ 'online' if value_json.online else 'offline' }}"


@frozen
class Sensor:
    object_id: str
    name: str
    kind: str  # the device topic it reads
    template: str
    extra: tuple[tuple[str, str], ...] = ()


SENSORS = (
    Sensor("status", "status", "status", ONLINE_TEMPLATE, (("icon", "mdi:lan-connect"),)),
    Sensor(
        "model_version",
        "model",
        "status",
        "{{ value_json.model.name ~ '@' ~ value_json.model.version "
        "if value_json.model else 'none' }}",
        (("icon", "mdi:brain"),),
    ),
    Sensor(
        "latency_p95",
        "latency p95",
        "telemetry",
        "{{ value_json.records[-1].latency_ms.p95 }}",
        (("unit_of_measurement", "ms"), ("state_class", "measurement")),
    ),
    Sensor(
        "drift_max_psi",
        "drift max PSI",
        "drift",
        "{{ value_json.records[-1].max_psi }}",
        (("state_class", "measurement"), ("icon", "mdi:chart-bell-curve")),
    ),
)


def node_id(device: str) -> str:
    """Home Assistant's node ids allow letters, digits, '_' and '-'; device ids also allow '.'."""
    return "edgefleet_" + re.sub(r"[^A-Za-z0-9_-]", "_", device)


def discovery_messages(
    device: str, topics: Topics, ha_prefix: str, profile: str = "", agent_version: str = ""
) -> list[tuple[str, bytes]]:
    """(config topic, retained payload) for each of a device's sensors."""
    node = node_id(device)
    status_topic = topics.device(device, "status")
    info = {
        "identifiers": [node],
        "name": device,
        "manufacturer": "edgefleet",
        "model": profile or "edge device",
        "sw_version": agent_version or None,
    }
    out = []
    for s in SENSORS:
        config: dict[str, object] = {
            "name": s.name,
            "unique_id": f"{node}_{s.object_id}",
            "state_topic": topics.device(device, s.kind),
            "value_template": s.template,
            "device": {k: v for k, v in info.items() if v is not None},
            "origin": {"name": "edgefleet"},
            **dict(s.extra),
        }
        if s.kind != "status":  # readings go unavailable with the device; its status does not
            config["availability_topic"] = status_topic
            config["availability_template"] = ONLINE_TEMPLATE
        topic = f"{ha_prefix}/sensor/{node}/{s.object_id}/config"
        out.append((topic, json.dumps(config, sort_keys=True).encode()))
    return out


class HaDiscovery:
    """Its own MQTT session next to the hub's: watches device births and Home Assistant's."""

    def __init__(
        self,
        broker: BrokerAddress,
        topics: Topics,
        ha_prefix: str = "homeassistant",
        client_id: str = "edgehub-ha",
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*", ha_prefix):
            raise ConfigError(
                f"--ha-prefix: expected topic levels of letters, digits, '_' or '-', "
                f"got {ha_prefix!r}"
            )
        self.topics = topics
        self.ha_prefix = ha_prefix
        self.announced = 0  # discovery configs the broker acknowledged (for tests and logs)
        self.changed = threading.Condition()
        self._devices: dict[str, tuple[str, str]] = {}  # id -> (profile, agent version)
        self._unacked: set[int] = set()  # mids of configs not yet acknowledged
        self.session = MqttSession(
            client_id, broker, persistent=False, on_published=self._published
        )
        self.session.subscribe(f"{ha_prefix}/status", self._ha_status)
        self.session.subscribe(topics.any_device("status"), self._device_status)

    def start(self) -> None:
        self.session.start()

    def stop(self) -> None:
        self.session.stop()

    def _device_status(self, topic: str, payload: bytes) -> None:
        device, _ = self.topics.parse_device_topic(topic)
        status = decode_checked_status(payload)
        if status.device != device or not status.online:
            return  # someone else's claim, or a last will: nothing new to announce
        info = (status.profile, status.agent_version)
        if self._devices.get(device) != info:
            self._devices[device] = info
            self._announce(device)

    def _ha_status(self, _topic: str, payload: bytes) -> None:
        text = payload.decode("utf-8", "replace").strip()
        if text not in ("online", "offline"):
            raise MessageError(
                f"{self.ha_prefix}/status: expected 'online' or 'offline', got {text[:40]!r}"
            )
        if text == "online":
            log.info("Home Assistant came online: announcing %d devices", len(self._devices))
            for device in list(self._devices):
                self._announce(device)

    def _announce(self, device: str) -> None:
        profile, agent_version = self._devices[device]
        messages = discovery_messages(device, self.topics, self.ha_prefix, profile, agent_version)
        with self.changed:  # PUBACKs arrive on the network thread: record the mids first
            for topic, payload in messages:
                self._unacked.add(self.session.publish(topic, payload, retain=True))

    def _published(self, mid: int) -> None:
        with self.changed:
            if mid in self._unacked:
                self._unacked.discard(mid)
                self.announced += 1
                self.changed.notify_all()
