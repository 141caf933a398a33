"""The test brokers: mosquitto round trips, persistence across restarts, the amqtt fallback."""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from cloud_hub.broker import local as broker_mod
from cloud_hub.broker.local import (
    EPHEMERAL_RANGE,
    PORT_FLOOR,
    RunningBroker,
    free_port,
    start_amqtt,
    start_broker,
    start_mosquitto,
)
from edge_agent.errors import ConfigError, TransportError

pytestmark = pytest.mark.broker

WAIT = 5.0  # seconds; every wait is on an event, this is only the give-up bound


class Probe:
    """A paho-mqtt 2.x client whose callbacks feed events and a message queue."""

    def __init__(
        self, target: RunningBroker, client_id: str = "", clean_session: bool = True
    ) -> None:
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
        )
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.session_present: bool | None = None
        self.granted: list[ReasonCode] = []
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(target.host, target.port, keepalive=10)
        self.client.loop_start()
        assert self.connected.wait(WAIT), f"no CONNACK from {target}"

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        assert not rc.is_failure, f"connect refused: {rc}"
        self.session_present = bool(flags.session_present)
        self.connected.set()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: list[ReasonCode], props: Any
    ) -> None:
        self.granted = rcs
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(msg)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.subscribed.clear()
        result, _ = self.client.subscribe(topic, qos=qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        assert self.subscribed.wait(WAIT), f"no SUBACK for {topic}"
        assert [rc.value for rc in self.granted] == [qos], f"subscription refused: {self.granted}"

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish and wait until the broker acknowledged it (PUBACK for QoS 1)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(WAIT)
        assert info.is_published(), f"broker did not acknowledge {topic}"

    def next_message(self) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"no message arrived within {WAIT}s")

    def close(self) -> None:
        if self.connected.is_set():
            self.connected.clear()
            self.client.disconnect()
            self.client.loop_stop()


@pytest.fixture
def probe() -> Iterator[Callable[..., Probe]]:
    """Factory of connected Probes; every one still open is closed after the test."""
    made: list[Probe] = []

    def make(target: RunningBroker, client_id: str = "", clean_session: bool = True) -> Probe:
        made.append(Probe(target, client_id, clean_session))
        return made[-1]

    yield make
    for p in made:
        p.close()


def test_qos1_round_trip(broker: RunningBroker, probe: Callable[..., Probe]) -> None:
    assert broker.kind == "mosquitto"
    client = probe(broker)
    client.subscribe("edgefleet/dev/pi-001/telemetry", qos=1)
    client.publish("edgefleet/dev/pi-001/telemetry", b'{"v":1,"seq":1}', qos=1)
    msg = client.next_message()
    assert (msg.topic, msg.payload, msg.qos) == (
        "edgefleet/dev/pi-001/telemetry",
        b'{"v":1,"seq":1}',
        1,
    )


def test_retained_message_survives_restart(
    broker: RunningBroker, probe: Callable[..., Probe]
) -> None:
    port = broker.port
    hub = probe(broker)
    hub.publish("edgefleet/fleet/tuf/timestamp.json", b'{"v":1,"version":7}', retain=True)
    hub.close()

    broker.restart()  # SIGTERM (mosquitto saves its database), then start on the same port

    assert broker.port == port
    device = probe(broker)
    device.subscribe("edgefleet/fleet/tuf/#", qos=1)
    msg = device.next_message()
    assert msg.retain
    assert (msg.topic, msg.payload) == (
        "edgefleet/fleet/tuf/timestamp.json",
        b'{"v":1,"version":7}',
    )


def test_persistent_session_gets_message_queued_while_offline(
    broker: RunningBroker, probe: Callable[..., Probe]
) -> None:
    cmd = "edgefleet/dev/pi-007/cmd"
    device = probe(broker, client_id="pi-007", clean_session=False)
    device.subscribe(cmd, qos=1)
    device.close()

    # The restart both proves the session is persisted and guarantees the device is offline
    # (no race with its DISCONNECT) when the hub publishes.
    broker.restart()
    hub = probe(broker)
    hub.publish(cmd, b'{"v":1,"op":"deploy"}', qos=1)
    hub.close()
    broker.restart()  # the queued message must survive an outage too

    device = probe(broker, client_id="pi-007", clean_session=False)
    assert device.session_present is True
    msg = device.next_message()
    assert (msg.topic, msg.payload, msg.qos) == (cmd, b'{"v":1,"op":"deploy"}', 1)


def test_start_failure_raises_transport_error_with_log(
    mosquitto_binary: str, tmp_path: Path
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(TransportError, match="Address already in use"):
            start_mosquitto(
                tmp_path / "mosquitto", port=port, ready_timeout=5.0, binary=mosquitto_binary
            )


def test_amqtt_fallback_round_trip(probe: Callable[..., Probe]) -> None:
    with start_amqtt() as fallback:
        assert fallback.kind == "amqtt"
        client = probe(fallback)
        client.subscribe("edgefleet/dev/x86-01/events", qos=1)
        client.publish("edgefleet/dev/x86-01/events", b'{"v":1,"event":"healthy"}', qos=1)
        msg = client.next_message()
        assert (msg.topic, msg.payload, msg.qos) == (
            "edgefleet/dev/x86-01/events",
            b'{"v":1,"event":"healthy"}',
            1,
        )
        client.close()
    assert not fallback.running


def test_start_broker_falls_back_to_amqtt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, probe: Callable[..., Probe]
) -> None:
    monkeypatch.setattr(broker_mod, "find_mosquitto", lambda: None)
    with start_broker(tmp_path) as running:
        assert running.kind == "amqtt"
        probe(running).close()


def test_start_broker_prefer_mosquitto_without_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_mod, "find_mosquitto", lambda: None)
    with pytest.raises(TransportError, match="mosquitto"):
        start_broker(tmp_path, prefer="mosquitto")


def test_start_broker_rejects_unknown_preference(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'rabbitmq'"):
        start_broker(tmp_path, prefer="rabbitmq")


def test_a_free_port_is_below_the_ephemeral_range_and_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An outgoing connection's source port comes from the ephemeral range, so a port picked
    there can be gone before the broker or dashboard binds it (a CI failure: "Address already
    in use")."""
    low = int(EPHEMERAL_RANGE.read_text(encoding="ascii").split()[0])
    ports = {free_port() for _ in range(50)}
    assert all(PORT_FLOOR <= p < low for p in ports) and len(ports) > 40
    with socket.socket() as held:  # a port something listens on is not given out
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        taken = held.getsockname()[1]
        draws = iter([taken, taken, taken + 1])
        monkeypatch.setattr(broker_mod.random, "randrange", lambda *_: next(draws, taken + 2))
        assert free_port() == taken + 1
