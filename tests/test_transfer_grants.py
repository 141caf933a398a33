"""A device is served only the chunks of a target it was commanded to install, encrypted when the
command said so, and no faster than its transfer rate: a few small requests cannot make the hub
publish hundreds of megabytes.

The requests go through mosquitto_pub as the device's credential would send them; the chunks
the hub published are counted by a subscriber of its own on the real mosquitto.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from cloud_hub.ingest_limits import TRANSFER, UNCOMMANDED, DeviceGuard, Limits
from cloud_hub.rollout.operations import publish_bundle
from edge_agent.protocol.messages import XferRequest, decode_xfer_chunk, encode
from edge_agent.protocol.topics import Topics
from edge_agent.protocol.transfer import CHUNK_SIZE
from tests.support.fleet import (  # noqa: F401  (fleet is a fixture)
    DEVICE,
    Fleet,
    _bundle,
    fleet,
)
from tests.support.mqtt_cli import Login, MqttCli
from tests.support.watch import close, subscriber

TOPICS = Topics()
MiB = 1024 * 1024


class Chunks:
    """Chunks the broker carries to the device, counted per target."""

    def __init__(self, fleet: Fleet) -> None:  # noqa: F811
        self.per_target: dict[str, int] = {}
        self._changed = threading.Condition()
        topic = TOPICS.device(DEVICE, "xfer/chunk")
        self.client = subscriber(fleet.broker, [topic], self._message)

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        chunk = decode_xfer_chunk(bytes(msg.payload))
        with self._changed:
            self.per_target[chunk.target] = self.per_target.get(chunk.target, 0) + 1
            self._changed.notify_all()

    def wait(self, target: str, n: int) -> None:
        with self._changed:
            ok = self._changed.wait_for(lambda: self.per_target.get(target, 0) >= n, 30)
            assert ok, f"{n} chunks of {target}: got {self.per_target}"


def ask(fleet: Fleet, cli: MqttCli, request: XferRequest) -> None:  # noqa: F811
    """As the device's credential would: mosquitto_pub on its xfer/req topic."""
    login = Login(fleet.broker.port, host=fleet.broker.host)
    cli.send(login, TOPICS.device(DEVICE, "xfer/req"), encode(request))


def refused(fleet: Fleet, reason: str, n: int) -> None:  # noqa: F811
    """Waits until the hub's store counts `n` refusals of `reason` for the device."""
    hub = fleet.hub
    with hub.handled:
        ok = hub.handled.wait_for(
            lambda: hub.store.refusals().get(DEVICE, {}).get(reason, 0) >= n, 30
        )
    assert ok, f"{n} {reason} refusals: {hub.store.refusals()}"


@pytest.mark.broker
def test_only_commanded_targets_are_served_and_encrypted_ones_only_encrypted(
    fleet: Fleet,  # noqa: F811
    tmp_path: Path,
    mosquitto_clients: MqttCli,
) -> None:
    chunks = Chunks(fleet)
    _, told = publish_bundle(fleet.home, _bundle(tmp_path, 1))
    _, untold = publish_bundle(fleet.home, _bundle(tmp_path, 2))
    _, sealed = publish_bundle(fleet.home, _bundle(tmp_path, 3))
    now = time.time()
    fleet.hub.store.issue_commands([(DEVICE, [(told, False), (sealed, True)])], 0, now)

    ask(
        fleet, mosquitto_clients, XferRequest(untold, (0,))
    )  # published and signed, but not for this device
    ask(
        fleet, mosquitto_clients, XferRequest(sealed, (0,), encrypted=False)
    )  # commanded encrypted: not in plain
    refused(fleet, UNCOMMANDED, 2)
    ask(fleet, mosquitto_clients, XferRequest(told, (0,)))
    chunks.wait(told, 1)  # the hub publishes in order: whatever it sent before came first
    assert chunks.per_target == {told: 1}
    close(chunks.client)


@pytest.mark.broker
def test_a_flood_of_chunk_requests_is_served_at_the_transfer_rate(
    fleet: Fleet,  # noqa: F811
    tmp_path: Path,
    mosquitto_clients: MqttCli,
) -> None:
    chunks = Chunks(fleet)
    _, target = publish_bundle(fleet.home, _bundle(tmp_path, 1))
    size = len(fleet.hub.repo.read_target(target))  # one chunk: the bundle is small
    fleet.hub.store.issue_commands([(DEVICE, [(target, False)])], 0, time.time())
    # one chunk's worth a second, at most one at once
    fleet.hub.guard = DeviceGuard(Limits(transfer_rate=size, transfer_burst=size))
    started = time.monotonic()
    asked = 40
    for _ in range(asked // 8):  # 5 requests of a few hundred bytes, 8 chunks each
        ask(fleet, mosquitto_clients, XferRequest(target, (0,) * 8))
    refused(fleet, TRANSFER, 1)
    chunks.wait(target, 1)
    elapsed = time.monotonic() - started
    served = chunks.per_target[target]
    assert served <= 1 + int(elapsed) + 1, (served, elapsed)  # the burst, then one a second
    refusals = fleet.hub.store.refusals()[DEVICE][TRANSFER]
    assert served + refusals <= asked
    close(chunks.client)


def test_the_transfer_rate_bounds_what_tiny_requests_can_cost() -> None:
    """What the issue measured: 15 KiB of requests asking for 200 MiB of chunks in 4 s. The
    default limit lets a device have its 4 MiB burst and 4 MiB a second after it."""
    guard = DeviceGuard(Limits())
    requests = 50  # each names 64 chunks in about 300 bytes: 15 KiB asking for 200 MiB
    served = 0
    for i in range(requests):
        served += guard.chunks("greedy", [CHUNK_SIZE] * 64, now=4.0 * i / requests)
    assert requests * 64 * CHUNK_SIZE == 200 * MiB
    assert served * CHUNK_SIZE <= 4 * MiB + 4 * 4 * MiB  # the burst, then 4 MiB a second
    assert guard.take_refused()["greedy"][TRANSFER] == requests * 64 - served
    assert guard.chunks("modest", [CHUNK_SIZE] * 16, now=4.0) == 16  # its neighbour is untouched
