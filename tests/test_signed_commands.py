"""A broker credential is not a signing key: commands put on a device's cmd topic by anyone but
the hub's command key are refused with their reason, and the model keeps serving.

The attacks go through mosquitto_pub on a real mosquitto, as someone holding a broker
credential would send them; what the device did is read off the broker by an independent
subscriber (DeviceWatcher) and off the device's own model store.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from securesystemslib.signer import CryptoSigner

from cloud_hub.rollout import engine as ro
from cloud_hub.rollout.operations import change_rollout, publish_bundle, start_rollout
from cloud_hub.signing.commands import COMMAND_TTL, counter_floor, sign_command
from cloud_hub.signing.tuf_repo import TufRepository
from edge_agent.protocol.commands import decode_signed_command
from edge_agent.protocol.messages import Command, ModelRef
from edge_agent.protocol.topics import Topics
from tests.support.commands import signed
from tests.support.fleet import (  # noqa: F401  (fleet is a fixture)
    DEVICE,
    Fleet,
    _bundle,
    fleet,
)
from tests.support.mqtt_cli import Login, MqttCli
from tests.support.watch import close, subscriber

pytestmark = [pytest.mark.broker, pytest.mark.usefixtures("each_store")]  # SQLite, PostgreSQL

TOPICS = Topics()
V1, V2 = ModelRef("iris", 1), ModelRef("iris", 2)


class Commands:
    """Every command the broker carries to the device, as a subscriber beside it sees them."""

    def __init__(self, fleet: Fleet) -> None:  # noqa: F811
        self.seen: list[bytes] = []
        self._changed = threading.Condition()
        self.client = subscriber(fleet.broker, [TOPICS.device(DEVICE, "cmd")], self._message)

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.seen.append(bytes(msg.payload))
            self._changed.notify_all()

    def of(self, kind: str, model: ModelRef) -> bytes:
        def found() -> bytes | None:
            for payload in self.seen:
                cmd = decode_signed_command(payload).command
                if cmd.kind == kind and cmd.model == model:
                    return payload
            return None

        with self._changed:
            assert self._changed.wait_for(lambda: found() is not None, 30), f"no {kind} {model}"
            payload = found()
        assert payload is not None
        return payload


def refused(fleet: Fleet, after: int, reason: str) -> dict[str, Any]:  # noqa: F811
    """The device's `rejected` event with `reason`, among its events from index `after` on."""
    w = fleet.watcher

    def find() -> dict[str, Any] | None:
        return next(
            (
                e
                for e in w.events[after:]
                if e["event"] == "rejected" and e["reason"].startswith(f"{reason}: ")
            ),
            None,
        )

    w.wait(f"a command refused as {reason}", lambda: find() is not None)
    found = find()
    assert found is not None
    return found


def deploy(fleet: Fleet, tmp_path: Path, version: int) -> ro.Rollout:  # noqa: F811
    publish_bundle(fleet.home, _bundle(tmp_path, version))
    r = start_rollout(fleet.home, ModelRef("iris", version), "1")
    fleet.watcher.wait(
        f"iris@{version} healthy", lambda: fleet.watcher.has_event("healthy", version)
    )
    return r


def serving(fleet: Fleet) -> ModelRef | None:  # noqa: F811
    return fleet.agent.store.record().current


def outsider(fleet: Fleet) -> Login:  # noqa: F811
    """Anyone the fleet's broker admits (it admits anonymous clients: more than a hub's
    credential could do)."""
    return Login(fleet.broker.port, host=fleet.broker.host)


def test_commands_not_signed_for_this_device_now_are_refused_and_the_model_keeps_serving(
    fleet: Fleet,  # noqa: F811
    tmp_path: Path,
    mosquitto_clients: MqttCli,
) -> None:
    commands = Commands(fleet)
    deploy(fleet, tmp_path, 1)
    deploy(fleet, tmp_path, 2)
    old_deploy = commands.of("deploy", V1)  # the hub's own signed deploy of iris@1
    w = fleet.watcher
    cmd_topic = TOPICS.device(DEVICE, "cmd")
    rollback = Command("evil-1", "rollback", model=V2)
    attacks: list[tuple[str, bytes]] = [
        # the hub's broker credential is enough to publish this; it carries no signature
        ("unsigned", b'{"v": 1, "id": "evil-0", "kind": "rollback"}'),
        # an older signed target, deployed with a made-up command
        (
            "unsigned",
            b'{"v": 1, "id": "evil-d", "kind": "deploy", "model": {"name": "iris", '
            b'"version": 1}, "target": "iris/1.zip"}',
        ),
        # well formed, signed by a key of the attacker's own
        (
            "bad-signature",
            sign_command(
                CryptoSigner.generate_ed25519(),
                rollback,
                DEVICE,
                counter_floor(time.time()),
                time.time(),
            ).to_bytes(),
        ),
        # the hub's own deploy of iris@1, captured earlier and sent again
        ("replayed", old_deploy),
        # signed by the hub, for another device
        ("wrong-device", signed(fleet.home, "pi-02", rollback)),
        # signed by the hub so long ago that it expired on the way
        (
            "expired",
            signed(fleet.home, DEVICE, rollback, now=time.time() - COMMAND_TTL.total_seconds()),
        ),
    ]
    start = len(w.events)
    for reason, payload in attacks:
        seen = len(w.events)
        mosquitto_clients.send(outsider(fleet), cmd_topic, payload)
        refused(fleet, seen, reason)
        assert serving(fleet) == V2, reason
    after = [e["event"] for e in w.events[start:]]
    assert after == ["rejected"] * len(attacks), after  # nothing offered, installed, rolled back
    assert w.names(1).count("installed") == 1  # iris@1 went in once, by the hub's rollout
    close(commands.client)


def test_a_rollback_goes_only_to_a_version_the_hub_signed_as_a_rollback_target(
    fleet: Fleet,  # noqa: F811
    tmp_path: Path,
    mosquitto_clients: MqttCli,
) -> None:
    deploy(fleet, tmp_path, 1)
    r2 = deploy(fleet, tmp_path, 2)
    w = fleet.watcher

    # signed by the hub's command key, but iris@1 is not signed as a rollback target
    seen = len(w.events)
    rollback = Command("hand-1", "rollback", model=V2, rollout=r2.id)
    payload = signed(fleet.home, DEVICE, rollback)
    mosquitto_clients.send(outsider(fleet), TOPICS.device(DEVICE, "cmd"), payload)
    event = refused(fleet, seen, "downgrade")
    assert "not signed as a rollback target" in event["reason"]
    assert serving(fleet) == V2

    # the hub rolls the rollout back: it signs iris@1 as a rollback target, then commands it
    change_rollout(fleet.home, r2.id, ro.roll_back)
    w.wait("iris@2 rolled back", lambda: w.has_event("rolled-back", 2))
    assert serving(fleet) == V1
    assert TufRepository(fleet.home).targets()[V1.target_path]["rollback"] is True
    assert "rollback" not in TufRepository(fleet.home).targets()[V2.target_path]
