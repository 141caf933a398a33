"""Delta updates end to end: a real hub, a real agent and a real mosquitto.

A device running v1 gets v2 as a delta from v1; one that missed v2 gets v3 as a delta from v1
(what it reported), never from v2; a tampered delta, a signed delta that rebuilds other bytes
than the full target, and a delta from a version the device does not run (its report was
stale) each cost the device the full bundle, and it still installs exactly the signed bytes.
What crossed the broker is counted by a separate subscriber on the device's xfer/chunk topic,
and compared with the files on the hub's disk.
"""

from __future__ import annotations

import copy
import threading
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from cloud_hub.broker.local import RunningBroker
from cloud_hub.hub import Hub
from cloud_hub.rollout.operations import publish_bundle, start_rollout
from cloud_hub.signing.deltas import Deltas
from cloud_hub.signing.tuf_repo import TufRepository, delta_path
from converters.pipeline import build_bundle
from edge_agent.agent import Agent
from edge_agent.protocol.messages import ModelRef, Status, decode_xfer_chunk, encode
from edge_agent.protocol.topics import Topics
from edge_agent.update.delta import make_delta
from tests.support.device_rig import enrolled, hub_and_agent
from tests.support.watch import WAIT_S, DeviceWatcher, close, subscriber

pytestmark = pytest.mark.broker

DEVICE = "pi-01"
TOPICS = Topics()
V1, V2, V3 = ModelRef("iris", 1), ModelRef("iris", 2), ModelRef("iris", 3)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """iris@1, an int8 MLP; iris@2 and iris@3, each fine-tuned from the one before (three
    epochs at a tenth of the learning rate): same architecture, new weights."""
    tmp = tmp_path_factory.mktemp("bundles")
    x, y = load_iris(return_X_y=True)
    model = MLPClassifier(hidden_layer_sizes=(128, 128), max_iter=500, random_state=1)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
        for version in (1, 2, 3):
            if version > 1:
                model = copy.deepcopy(model)
                model.set_params(
                    warm_start=True,
                    learning_rate_init=1e-4,
                    max_iter=3,
                    n_iter_no_change=10**6,
                    tol=0.0,
                )
                model.fit(x, y)
            out[version] = tmp / f"iris-{version}.zip"
            build_bundle(model, x, y, name="iris", version=version, out=out[version])
    return out


class Chunks:
    """What the hub sent on the device's xfer/chunk topic, per target: the bytes of each chunk
    index (the last copy) and how many chunk messages came."""

    def __init__(self, broker: RunningBroker) -> None:
        self._lock = threading.Lock()
        self.data: dict[str, dict[int, bytes]] = defaultdict(dict)
        self.messages: dict[str, int] = defaultdict(int)
        self.client = subscriber(broker, [TOPICS.device(DEVICE, "xfer/chunk")], self._message)

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        chunk = decode_xfer_chunk(msg.payload)
        with self._lock:
            self.data[chunk.target][chunk.index] = chunk.data
            self.messages[chunk.target] += 1

    def received(self, target: str) -> int:
        """Bytes of `target` that crossed the broker (each chunk once)."""
        with self._lock:
            return sum(len(d) for d in self.data.get(target, {}).values())

    def targets(self) -> set[str]:
        with self._lock:
            return set(self.data)

    def stop(self) -> None:
        close(self.client)


@dataclass
class Fleet:
    home: Path
    hub: Hub
    agent: Agent
    watcher: DeviceWatcher
    chunks: Chunks
    broker: RunningBroker
    bundles: dict[int, Path]

    @property
    def repo(self) -> TufRepository:
        return TufRepository(self.home)

    def publish(self, version: int) -> ModelRef:
        model, _ = publish_bundle(self.home, self.bundles[version])
        return model

    def roll(self, model: ModelRef) -> dict[str, Any]:
        """Roll `model` out to the device; its `healthy` event."""
        start_rollout(self.home, model, "1")
        return self.watcher.event("healthy", model.version)

    def reason(self, event: str, model: ModelRef) -> str:
        return str(self.watcher.event(event, model.version)["reason"])

    def downloads(self, model: ModelRef) -> list[str]:
        """The reasons of the device's `downloading` events about `model`, in order."""
        return [
            e["reason"]
            for e in self.watcher.events
            if e["event"] == "downloading" and e["model"] == model.to_json()
        ]

    def installed_exactly(self, version: int) -> None:
        """The device runs `version`, and its stored bundle is the hub's, byte for byte."""
        model = ModelRef("iris", version)
        assert self.agent.store.record().current == model
        assert self.agent.store.read(model) == self.bundles[version].read_bytes()
        active = self.agent.pipeline.active
        assert active is not None and active.card.model == model

    def reported(self, version: int) -> None:
        """Wait until the hub's registry says the device runs iris@`version`."""

        def says() -> bool:
            row = self.hub.store.device(DEVICE)
            return row is not None and row["version"] == version

        with self.hub.handled:
            assert self.hub.handled.wait_for(says, WAIT_S), f"registry never said iris@{version}"


@pytest.fixture
def fleet(broker: RunningBroker, tmp_path: Path, bundles: dict[int, Path]) -> Iterator[Fleet]:
    # the status goes out with each event (and not on a timer here, so a stale report a test
    # puts in the registry stays there until the device's next event)
    home, cfg = enrolled(tmp_path, broker, DEVICE, "[telemetry]\nstatus_interval_s = 3600\n")
    watcher = DeviceWatcher(broker)
    chunks = Chunks(broker)
    try:
        with hub_and_agent(home, broker, cfg) as (hub, agent):
            watcher.wait("the agent's birth", lambda: watcher.status.get("online") is True)
            yield Fleet(home, hub, agent, watcher, chunks, broker, bundles)
    finally:
        chunks.stop()
        watcher.stop()


def _first_install(fleet: Fleet) -> None:
    """iris@1 on the device, as a full bundle (it ran nothing before)."""
    fleet.roll(fleet.publish(1))
    assert fleet.downloads(V1) == [f"{fleet.bundles[1].stat().st_size} bytes, signed"]
    assert fleet.chunks.targets() == {V1.target_path}
    fleet.installed_exactly(1)
    fleet.reported(1)


def test_a_device_running_v1_gets_v2_as_a_delta(fleet: Fleet) -> None:
    _first_install(fleet)
    fleet.roll(fleet.publish(2))

    path = delta_path(V1, V2)
    on_disk = (fleet.repo.targets_dir / path).stat().st_size
    full = fleet.bundles[2].stat().st_size
    assert on_disk < 0.3 * full, (on_disk, full)  # a fine-tuned model: a small delta
    assert fleet.chunks.targets() == {V1.target_path, path}  # not one chunk of iris/2.zip
    assert fleet.chunks.received(path) == on_disk
    assert fleet.downloads(V2) == [
        f"{on_disk} bytes of delta from iris@1 for the {full}-byte bundle, signed"
    ]
    assert fleet.reason("verified", V2).endswith(f"; rebuilt from iris@1 by a {on_disk}-byte delta")
    fleet.installed_exactly(2)


def test_a_device_that_missed_a_version_gets_a_delta_from_what_it_runs(fleet: Fleet) -> None:
    _first_install(fleet)
    fleet.publish(2)  # never sent to this device
    fleet.roll(fleet.publish(3))

    path = delta_path(V1, V3)
    assert fleet.chunks.targets() == {V1.target_path, path}
    assert fleet.chunks.received(path) == (fleet.repo.targets_dir / path).stat().st_size
    assert delta_path(V2, V3) not in fleet.repo.targets()  # nobody runs iris@2: never made
    assert "delta from iris@1" in fleet.downloads(V3)[0]
    fleet.installed_exactly(3)


def test_a_tampered_delta_costs_the_full_bundle_and_nothing_else(fleet: Fleet) -> None:
    _first_install(fleet)
    fleet.publish(2)
    offered = Deltas(fleet.repo).offer(V1, V2)  # made and signed before the rollout asks
    assert offered is not None
    stored = fleet.repo.targets_dir / offered.target
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # what the hub serves no longer matches the signed hashes
    stored.write_bytes(bytes(data))
    fleet.roll(V2)

    first, then = fleet.downloads(V2)
    assert first.startswith(f"{len(data)} bytes of delta from iris@1")
    full = fleet.bundles[2].stat().st_size
    assert then.startswith(f"{full} bytes, signed (the delta from iris@1 was not used: tampered: ")
    assert "failed its check 3 times" in then
    assert fleet.chunks.received(V2.target_path) == full
    assert "rebuilt" not in fleet.reason("verified", V2)
    fleet.installed_exactly(2)


def test_a_signed_delta_that_rebuilds_other_bytes_fails_the_full_targets_hash(
    fleet: Fleet,
) -> None:
    """The delta itself checks (the hub signed it), it even rebuilds what it says it does, but
    that is not the bytes signed for iris@2: the device's check against the full target's
    signed hashes refuses them, and it fetches the full bundle."""
    _first_install(fleet)
    fleet.publish(2)
    v1, v2 = fleet.bundles[1].read_bytes(), bytearray(fleet.bundles[2].read_bytes())
    v2[len(v2) // 2] ^= 0xFF
    fleet.repo.add_delta(V1, V2, make_delta(v1, bytes(v2)))
    fleet.roll(V2)

    full = fleet.bundles[2].stat().st_size
    then = fleet.downloads(V2)[-1]
    assert then.startswith(f"{full} bytes, signed (the delta from iris@1 was not used: tampered: ")
    assert "iris/2.zip" in then
    assert fleet.chunks.received(V2.target_path) == full
    fleet.installed_exactly(2)


def test_a_device_whose_report_is_stale_falls_back_to_the_full_bundle(fleet: Fleet) -> None:
    """The registry says iris@2 (a stale status, as a broker that kept an old retained one
    would deliver), the device runs iris@1: the hub sends a delta from iris@2, the device
    sees that it does not start from what it runs and fetches the full iris@3."""
    _first_install(fleet)
    fleet.publish(2)
    v3 = fleet.publish(3)
    # the device's own statuses (one per event, one per reconnect) would put the registry right
    # before the deploy goes out; held back, the hub's view stays the stale one this is about
    fleet.agent._publish_status = lambda: None  # type: ignore[method-assign]
    stale = Status(DEVICE, online=True, boot=fleet.agent.boot, model=V2)
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.connect(fleet.broker.host, fleet.broker.port)
    client.loop_start()
    client.publish(TOPICS.device(DEVICE, "status"), encode(stale), qos=1).wait_for_publish(10)
    close(client)
    fleet.reported(2)
    fleet.roll(v3)

    assert delta_path(V2, V3) in fleet.repo.targets()  # what the hub offered, from the report
    full = fleet.bundles[3].stat().st_size
    assert fleet.downloads(V3) == [
        f"{full} bytes, signed (the delta from iris@2 was not used: mismatch: it starts from "
        "iris@2; this device runs iris@1)"
    ]
    assert delta_path(V2, V3) not in fleet.chunks.targets()
    assert fleet.chunks.received(V3.target_path) == full
    fleet.installed_exactly(3)
