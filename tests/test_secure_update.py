"""Promise 2 end to end: a real agent, a real hub and a real mosquitto (max packet 128 KB).

Every bad bundle is rejected with its specific reason on `edgefleet/dev/{id}/events` while the
model already running keeps serving; encrypted transfers are sealed for one device; a 5 MB
transfer survives a broker restart and an agent restart without starting over; key rotation
walks the root chain. Tests wait on conditions (MQTT messages, events), never on the clock.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from securesystemslib.signer import CryptoSigner
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from tuf.api.metadata import Metadata, Targets
from tuf.api.serialization.json import JSONSerializer

from cloud_hub.broker.local import RunningBroker, start_mosquitto
from cloud_hub.hub import Hub
from cloud_hub.rollout.operations import enroll_device, init_hub, publish_bundle, start_rollout
from cloud_hub.signing.tuf_repo import Expiry, TufRepository
from cloud_hub.store.database import Store
from cloud_hub.store.url import store_url
from converters.pipeline import build_bundle
from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.mqtt.session import BrokerAddress
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.messages import (
    Command,
    ModelRef,
    decode_xfer_chunk,
)
from edge_agent.protocol.topics import Topics
from edge_agent.protocol.transfer import CHUNK_SIZE, chunk_bounds, chunk_count
from edge_agent.system.identity import create_identity, identity_paths
from tests.support.commands import signed
from tests.support.watch import DeviceWatcher, close, subscriber

pytestmark = pytest.mark.broker

DEVICE = "pi-01"
TOPICS = Topics()
MAX_PACKET = 128 * 1024  # a 64 KiB chunk in base64 JSON is ~87 KB: it fits, with little room
WINDOW = 4  # chunks the device asks for at once in the transfer tests
BIG_VERSION = 5
HOLD_AT = 30  # chunks of the big bundle the device takes before a test interrupts the transfer
IRIS_ROW = b"5.1,3.5,1.4,0.2"
SUMMARY = re.compile(r"(\d+) chunks, (\d+) resumed, (\d+) fetched twice, (\d+) failed their check")


# --------------------------------------------------------------------------- bundles


@frozen
class Bundles:
    v1: Path
    v2: Path
    big: Path  # iris@5, about 5 MB (an fp32 MLP with two wide hidden layers)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    tmp = tmp_path_factory.mktemp("bundles")
    x, y = load_iris(return_X_y=True)
    small = {}
    for version in (1, 2):
        small[version] = tmp / f"iris-{version}.zip"
        model = LogisticRegression(max_iter=500, C=float(version)).fit(x, y)
        build_bundle(model, x, y, name="iris", version=version, out=small[version])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # two epochs: size is the point
        mlp = MLPClassifier(hidden_layer_sizes=(1160, 1160), max_iter=2, random_state=0)
        mlp.fit(x, y)
    big = tmp / f"iris-{BIG_VERSION}.zip"
    build_bundle(mlp, x, y, name="iris", version=BIG_VERSION, out=big, quantize="none")
    assert 4_500_000 < big.stat().st_size < 6_000_000
    return Bundles(small[1], small[2], big)


# --------------------------------------------------------------------------- broker and observers


@pytest.fixture
def broker(mosquitto_binary: str, tmp_path: Path) -> Iterator[RunningBroker]:
    """A private mosquitto that refuses packets over 128 KB (a chunk must fit in one)."""
    running = start_mosquitto(
        tmp_path / "mosquitto",
        extra_config=f"max_packet_size {MAX_PACKET}",
        binary=mosquitto_binary,
    )
    try:
        yield running
    finally:
        running.stop()


class Sniffer:
    """A separate subscriber on the device's xfer/chunk topic: what travels over the broker."""

    def __init__(self, broker: RunningBroker) -> None:
        self.payloads: list[bytes] = []
        self._lock = threading.Lock()
        self.client = subscriber(broker, [TOPICS.device(DEVICE, "xfer/chunk")], self._message)

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.payloads.append(bytes(msg.payload))

    def stop(self) -> list[bytes]:
        close(self.client)
        with self._lock:
            return list(self.payloads)


class Injector:
    """Publishes what a test puts on the broker (as an attacker, or a replaying network would)."""

    def __init__(self, broker: RunningBroker) -> None:
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Returns once the broker acknowledged it (so it is ahead of anything sent later)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published(), f"the broker did not acknowledge {topic}"

    def stop(self) -> None:
        close(self.client)


# --------------------------------------------------------------------------- the fleet

ChunkHook = Callable[[Agent, Callable[[str, bytes], None], str, bytes], None]


@dataclass
class Fleet:
    home: Path
    broker: RunningBroker
    hub: Hub
    watcher: DeviceWatcher
    injector: Injector
    cfg_path: Path
    agent: Agent | None = None
    agent_thread: threading.Thread | None = None
    hub_stop: threading.Event = field(default_factory=threading.Event)
    hub_thread: threading.Thread | None = None

    @property
    def state(self) -> Path:
        return self.cfg_path.parent / "state"

    @property
    def running(self) -> Agent:
        assert self.agent is not None
        return self.agent

    def start_agent(self, on_chunk: ChunkHook | None = None) -> Agent:
        """A new Agent on the device's config and state; `on_chunk(agent, take, topic,
        payload)` sees each chunk message and hands it on with `take(topic, payload)`."""
        agent = Agent(load_config(self.cfg_path))
        if on_chunk is not None:
            take = agent.downloader.on_chunk
            agent.downloader.on_chunk = lambda t, p: on_chunk(agent, take, t, p)  # type: ignore[method-assign]
        agent.start()
        thread = threading.Thread(target=agent.run_forever, daemon=True)
        thread.start()
        self.agent, self.agent_thread = agent, thread
        return agent

    def stop_agent(self) -> None:
        """Stop the agent as its daemon does on SIGTERM, and wait until it said goodbye."""
        assert self.agent is not None and self.agent_thread is not None
        self.agent.stop_event.set()
        self.agent_thread.join(20)
        assert not self.agent_thread.is_alive(), "the agent did not stop"

    def inject(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.injector.publish(topic, payload, retain)

    def publish(self, bundle: Path) -> tuple[ModelRef, str]:
        return publish_bundle(self.home, bundle)

    def sign_delta_now(self, model: ModelRef) -> None:
        """Sign now the delta a deploy of `model` would sign (from the version the device
        runs): the hub then has nothing new to sign and publish when the rollout starts, so
        what an attacker puts on the broker after `metadata_on_broker` is what the device
        reads (a delta signed on deploy publishes fresh metadata over it, sometimes before
        the device looked)."""
        self.hub.deltas.offer(self.running.store.record().current, model)

    def roll(self, model: ModelRef, encrypt: bool = False) -> None:
        start_rollout(self.home, model, "1", encrypt=encrypt)

    def install(self, bundle: Path, encrypt: bool = False) -> ModelRef:
        model, _ = self.publish(bundle)
        self.roll(model, encrypt)
        self.watcher.event("healthy", model.version)
        return model

    def metadata_on_broker(self) -> None:
        """Wait until the hub published the repository's newest timestamp (and so, before it,
        targets and snapshot: the hub publishes them in that order)."""
        version = TufRepository(self.home).timestamp_version()
        self.watcher.wait(
            f"TUF timestamp {version} on the broker",
            lambda: self.watcher.timestamp_version >= version,
        )

    def assert_serving(self, model: ModelRef) -> None:
        """The model is installed, active, announced in a fresh status, and still infers."""
        agent, w = self.running, self.watcher
        assert agent.store.record().current == model
        assert agent.pipeline.active is not None and agent.pipeline.active.card.model == model
        inferred = agent.pipeline.stats.snapshot()["inferences"]
        seen = w.status_count
        agent.lines.put(("csv", IRIS_ROW))
        w.wait(
            f"a status showing {model} after one more inference",
            lambda: (
                w.status_count > seen
                and w.status["stats"]["inferences"] > inferred
                and w.status["model"] == model.to_json()
            ),
        )


@pytest.fixture
def make_fleet(broker: RunningBroker, tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    fleets: list[Fleet] = []

    def make(
        limits: str = "",
        identity: bool = False,
        on_chunk: ChunkHook | None = None,
    ) -> Fleet:
        home = tmp_path / "hub"
        init_hub(home)
        device_dir = tmp_path / "dev"
        device_dir.mkdir()
        public_file = None
        if identity:  # `edge-agent enroll` makes the key pair on the device; the engineer
            create_identity(device_dir / "state", DEVICE)  # hands device.pub.json to the hub
            public_file = tmp_path / "device.pub.json"
            public_file.write_bytes(identity_paths(device_dir / "state")[1].read_bytes())
        registered = enroll_device(home, DEVICE, device_dir / "state", public_file=public_file)
        assert (registered is not None) == identity
        cfg_path = device_dir / "agent.toml"
        cfg_path.write_text(
            f'[device]\nid = "{DEVICE}"\nstate_dir = "state"\n'
            f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\n'
            "[telemetry]\nstatus_interval_s = 0.2\n"
            f"[limits]\ntransfer_window = {WINDOW}\n{limits}\n"
        )
        watcher = DeviceWatcher(broker, DEVICE, tuf=True)
        hub = Hub(home, BrokerAddress(broker.host, broker.port))
        fleet = Fleet(home, broker, hub, watcher, Injector(broker), cfg_path)
        fleets.append(fleet)
        fleet.hub_thread = threading.Thread(target=hub.run, args=(fleet.hub_stop,), daemon=True)
        fleet.hub_thread.start()
        assert hub.ready.wait(30)
        fleet.start_agent(on_chunk)
        watcher.wait("the agent's birth", lambda: watcher.status.get("online") is True)
        return fleet

    yield make
    for fleet in fleets:
        # the agent first: it drains its buffer to a hub that still confirms (stopped together,
        # it would wait out its drain timeout on a hub already gone)
        if fleet.agent is not None:
            fleet.agent.stop_event.set()
        if fleet.agent_thread is not None:
            fleet.agent_thread.join(15)
        fleet.hub_stop.set()
        if fleet.hub_thread is not None:
            fleet.hub_thread.join(15)
        fleet.watcher.stop()
        fleet.injector.stop()


def _summary(event: dict[str, Any]) -> tuple[int, int, int, int]:
    """(chunks, resumed, fetched twice, failed their check) from a "verified" reason."""
    found = SUMMARY.fullmatch(event["reason"])
    assert found, event["reason"]
    chunks, resumed, twice, bad = map(int, found.groups())
    return chunks, resumed, twice, bad


# --------------------------------------------------------------------------- rejections


def test_tampered_target_is_reasked_then_rejected(make_fleet: Any, bundles: Bundles) -> None:
    fleet = make_fleet()
    v1 = fleet.install(bundles.v1)
    v2, target = fleet.publish(bundles.v2)
    stored = TufRepository(fleet.home).targets_dir / target
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the signed hashes no longer match what the hub serves
    stored.write_bytes(bytes(data))
    fleet.roll(v2)

    reason = fleet.watcher.event("rejected", 2)["reason"]
    assert reason.startswith("tampered: "), reason
    assert "chunk 0 failed its check 3 times" in reason
    assert fleet.watcher.names(2) == ["offered", "downloading", "rejected"]
    fleet.assert_serving(v1)


def test_targets_signed_by_an_untrusted_key_are_rejected(make_fleet: Any, bundles: Bundles) -> None:
    fleet = make_fleet()
    v1 = fleet.install(bundles.v1)
    v2, target = fleet.publish(bundles.v2)
    fleet.sign_delta_now(v2)
    fleet.metadata_on_broker()

    # an attacker on the broker swaps targets.json for one pointing at their own bytes,
    # signed with a key the device's root does not list for the targets role
    forged = Metadata[Targets].from_bytes(
        (TufRepository(fleet.home).metadata_dir / "targets.json").read_bytes()
    )
    forged.signed.targets[target].hashes = {"sha256": "ab" * 32}
    forged.signatures.clear()
    forged.sign(CryptoSigner.generate_ed25519())
    fleet.inject(
        TOPICS.tuf("targets.json"),
        forged.to_bytes(JSONSerializer(compact=True)),
        retain=True,
    )
    fleet.roll(v2)

    reason = fleet.watcher.event("rejected", 2)["reason"]
    assert reason.startswith("bad-signature: "), reason
    # refused before it was offered (the command's key comes from the same metadata), and
    # nothing was downloaded
    assert fleet.watcher.names(2) == ["rejected"]
    fleet.assert_serving(v1)


def test_replayed_metadata_is_rejected(make_fleet: Any, bundles: Bundles) -> None:
    fleet = make_fleet()
    metadata = TufRepository(fleet.home).metadata_dir
    v1 = fleet.install(bundles.v1)
    old_snapshot = (metadata / "snapshot.json").read_bytes()  # the one the device verified
    old_timestamp = (metadata / "timestamp.json").read_bytes()
    old_ts_version = json.loads(old_timestamp)["signed"]["version"]
    v2, target = fleet.publish(bundles.v2)
    fleet.sign_delta_now(v2)
    fleet.metadata_on_broker()

    # snapshot replayed after the newer timestamp (which names the newer snapshot) was seen
    fleet.inject(TOPICS.tuf("snapshot.json"), old_snapshot, retain=True)
    fleet.roll(v2)
    reason = fleet.watcher.event("rejected", 2)["reason"]
    assert reason.startswith("replayed: "), reason
    assert "snapshot" in reason

    # the device has now verified the newer timestamp: an older one, with a command that
    # names its version (a replayed command), is refused too
    seen = len(fleet.watcher.events)
    fleet.inject(TOPICS.tuf("timestamp.json"), old_timestamp, retain=True)
    replayed = Command("replayed-1", "deploy", v2, target, tuf_version=old_ts_version)
    fleet.inject(TOPICS.device(DEVICE, "cmd"), signed(fleet.home, DEVICE, replayed))
    reason = fleet.watcher.event("rejected", 2, after=seen)["reason"]
    assert reason.startswith("replayed: "), reason
    assert "timestamp" in reason
    fleet.assert_serving(v1)


def test_expired_timestamp_is_rejected(make_fleet: Any, bundles: Bundles) -> None:
    fleet = make_fleet()
    v1 = fleet.install(bundles.v1)
    v2, _ = fleet.publish(bundles.v2)
    fleet.sign_delta_now(v2)
    # a hub whose timestamp lifetime is already over when it signs it
    stale = TufRepository(fleet.home, expiry=Expiry(timestamp=timedelta(minutes=-5)))
    assert stale.refresh_timestamp(min_remaining=timedelta(days=3650))
    fleet.roll(v2)  # names the expired timestamp's version, which the hub publishes

    reason = fleet.watcher.event("rejected", 2)["reason"]
    assert reason.startswith("expired: "), reason
    assert "timestamp" in reason
    fleet.assert_serving(v1)


def test_downgrade_is_rejected(make_fleet: Any, bundles: Bundles) -> None:
    fleet = make_fleet()
    v1, _ = fleet.publish(bundles.v1)
    v2 = fleet.install(bundles.v2)
    fleet.roll(v1)

    reason = fleet.watcher.event("rejected", 1)["reason"]
    assert reason.startswith("downgrade: "), reason
    assert fleet.watcher.names(1) == ["offered", "rejected"]
    fleet.assert_serving(v2)


def test_truncated_transfers_are_rejected(make_fleet: Any, bundles: Bundles) -> None:
    fleet = make_fleet(limits="transfer_timeout_s = 1.0")
    w = fleet.watcher
    v1 = fleet.install(bundles.v1)

    # the hub serves a target shorter than the signed length
    v2, target = fleet.publish(bundles.v2)
    stored = TufRepository(fleet.home).targets_dir / target
    signed_length = stored.stat().st_size
    stored.write_bytes(stored.read_bytes()[: signed_length // 2])
    fleet.roll(v2)
    reason = w.event("rejected", 2)["reason"]
    assert reason.startswith("truncated: "), reason
    assert f"signed length is {signed_length} bytes" in reason
    fleet.assert_serving(v1)

    # the hub stops serving altogether: the device gives up after its transfer timeout
    seen = len(w.events)
    fleet.hub.on_xfer_request = lambda device, payload: None
    fleet.roll(v2)
    reason = w.event("rejected", 2, after=seen)["reason"]
    assert reason.startswith("truncated: "), reason
    assert "0 of 1 chunks arrived within 1s" in reason
    fleet.assert_serving(v1)


def test_oversized_target_is_refused_before_download(make_fleet: Any, bundles: Bundles) -> None:
    limit = 1_000_000
    fleet = make_fleet(limits=f"max_bundle_bytes = {limit}")
    v1 = fleet.install(bundles.v1)
    big, _ = fleet.publish(bundles.big)
    fleet.roll(big)

    reason = fleet.watcher.event("rejected", BIG_VERSION)["reason"]
    assert reason.startswith("oversized: "), reason
    assert f"at most {limit}" in reason
    assert fleet.watcher.names(BIG_VERSION) == ["offered", "rejected"]
    assert not (fleet.state / "xfer").exists() or not any((fleet.state / "xfer").iterdir())
    fleet.assert_serving(v1)


def test_transfer_sealed_for_another_device_is_rejected(
    make_fleet: Any, bundles: Bundles, tmp_path: Path
) -> None:
    fleet = make_fleet(identity=True)
    v1 = fleet.install(bundles.v1, encrypt=True)  # the registered key is the device's own
    other = create_identity(tmp_path / "pi-02-state", "pi-02")
    Store(store_url(fleet.home)).register(DEVICE, other.public_bytes())  # a wrong record
    v2, _ = fleet.publish(bundles.v2)
    fleet.roll(v2, encrypt=True)

    reason = fleet.watcher.event("rejected", 2)["reason"]
    assert reason.startswith("wrong-device: "), reason
    fleet.assert_serving(v1)


# --------------------------------------------------------------------------- transfers that work


def test_encrypted_rollout_reaches_only_the_device(make_fleet: Any, bundles: Bundles) -> None:
    fleet = make_fleet(identity=True)
    sniffer = Sniffer(fleet.broker)

    v1 = fleet.install(bundles.v1, encrypt=True)
    assert "encrypted for this device" in fleet.watcher.event("downloading", 1)["reason"]
    payloads = sniffer.stop()
    plain = bundles.v1.read_bytes()
    assert payloads, "no chunk crossed the broker"
    probes = [plain[i : i + 24] for i in range(0, len(plain) - 24, 512)]
    for payload in payloads:
        obj = json.loads(payload)
        assert obj.get("key"), "an encrypted chunk carries the wrapped transfer key"
        chunk = decode_xfer_chunk(payload)
        start, end = chunk_bounds(chunk.index, len(plain))
        assert len(chunk.data) == end - start + 16  # the ChaCha20-Poly1305 tag
        assert plain[start:end] not in chunk.data
        assert base64.b64encode(plain[start:end]) not in payload
        for probe in probes:
            assert probe not in chunk.data and probe not in payload
    fleet.assert_serving(v1)


def test_big_transfer_survives_a_broker_restart(make_fleet: Any, bundles: Bundles) -> None:
    held, release = threading.Event(), threading.Event()
    taken = 0

    def hold(_agent: Agent, take: Callable[[str, bytes], None], topic: str, raw: bytes) -> None:
        nonlocal taken
        take(topic, raw)
        taken += 1
        if taken == HOLD_AT:  # the device stops reading right here until the broker restarted
            held.set()
            release.wait(30)

    fleet = make_fleet(on_chunk=hold)
    big, _ = fleet.publish(bundles.big)
    fleet.roll(big)
    assert held.wait(60), "the transfer never got going"
    fleet.broker.restart()
    release.set()

    verified = fleet.watcher.event("verified", BIG_VERSION)
    chunks, resumed, twice, bad = _summary(verified)
    print(f"\nbroker restart mid-transfer: {verified['reason']}")
    assert chunks == chunk_count(bundles.big.stat().st_size) > 2 * HOLD_AT
    assert resumed == 0 and bad == 0
    # what the restart cost: the window in flight, asked again once or twice while the hub
    # reconnects, and the broker's queued copies of it; starting over would cost HOLD_AT more
    assert twice <= 4 * WINDOW < HOLD_AT
    fleet.watcher.event("healthy", BIG_VERSION)
    fleet.assert_serving(ModelRef("iris", BIG_VERSION))
    assert not any((fleet.state / "xfer").iterdir())  # nothing kept once installed


def test_transfer_resumes_after_an_agent_restart(make_fleet: Any, bundles: Bundles) -> None:
    held = threading.Event()
    taken = 0

    def hold(agent: Agent, take: Callable[[str, bytes], None], topic: str, raw: bytes) -> None:
        nonlocal taken
        take(topic, raw)
        taken += 1
        if taken == HOLD_AT:  # no more chunks are read until the agent is told to stop
            held.set()
            agent.stop_event.wait(30)

    fleet = make_fleet(on_chunk=hold)
    big, _ = fleet.publish(bundles.big)
    fleet.roll(big)
    assert held.wait(60), "the transfer never got going"
    fleet.stop_agent()

    total = chunk_count(bundles.big.stat().st_size)
    (folder,) = (fleet.state / "xfer").iterdir()
    kept = sum(bin(b).count("1") for b in (folder / "bitmap").read_bytes())
    assert HOLD_AT <= kept < total
    assert (fleet.state / "pending-command.json").exists()
    assert fleet.watcher.names(BIG_VERSION) == ["offered", "downloading"]

    seen = len(fleet.watcher.events)
    fleet.start_agent()  # a new agent on the same state folder resumes the pending deploy
    verified = fleet.watcher.event("verified", BIG_VERSION, after=seen)
    chunks, resumed, twice, bad = _summary(verified)
    assert twice <= 4 * WINDOW
    print(f"\nagent restart mid-transfer: {verified['reason']} ({kept} chunks kept on disk)")
    assert chunks == total and resumed == kept and bad == 0
    fleet.watcher.event("healthy", BIG_VERSION, after=seen)
    fleet.assert_serving(ModelRef("iris", BIG_VERSION))
    fleet.stop_agent()  # its updater has finished with the command: forgotten, not resumed
    assert not (fleet.state / "pending-command.json").exists()


def test_root_and_targets_key_rotation_walks_the_root_chain(
    make_fleet: Any, bundles: Bundles
) -> None:
    fleet = make_fleet()
    fleet.install(bundles.v1)
    trusted = fleet.state / "tuf" / "root.json"
    assert json.loads(trusted.read_bytes())["signed"]["version"] == 1
    repo = TufRepository(fleet.home)
    assert repo.rotate_key("root").root_version == 2
    rotation = repo.rotate_key("targets")
    assert rotation.root_version == 3
    v2 = fleet.install(bundles.v2)  # signed with the new targets key

    assert json.loads(trusted.read_bytes())["signed"]["version"] == 3
    assert fleet.watcher.names(2) == ["offered", "downloading", "verified", "installed", "healthy"]
    fleet.assert_serving(v2)


def test_bad_chunk_messages_kill_nothing(make_fleet: Any, bundles: Bundles) -> None:
    fleet = make_fleet()
    topic = TOPICS.device(DEVICE, "xfer/chunk")
    plain = bundles.v1.read_bytes()
    size = len(plain)
    garbage = [
        b"\xff\xfe\x00 not json",
        json.dumps(
            {"v": 1, "target": "iris/1.zip", "index": 0, "size": size, "data": "**not base64**"}
        ).encode(),
        json.dumps(  # a chunk of another target: not this transfer's business
            {"v": 1, "target": "other/9.zip", "index": 0, "size": 3, "data": "AAAA"}
        ).encode(),
        json.dumps(  # the right target and length, the wrong bytes: fails its signed hash
            {
                "v": 1,
                "target": "iris/1.zip",
                "index": 0,
                "size": size,
                "data": base64.b64encode(bytes(min(size, CHUNK_SIZE))).decode(),
            }
        ).encode(),
    ]
    serve = fleet.hub.serve_chunks
    injected = threading.Event()

    def inject_then_serve(device: str, payload: bytes) -> None:
        if not injected.is_set():  # the device is waiting for its chunks right now
            injected.set()
            for bad in garbage:
                fleet.inject(topic, bad)
        serve(device, payload)

    fleet.hub.on_xfer_request = inject_then_serve
    bad_before = fleet.running.bad_messages
    v1 = fleet.install(bundles.v1)

    assert injected.is_set()
    _chunks, _resumed, _twice, failed = _summary(fleet.watcher.event("verified", 1))
    assert failed == 1  # the forged chunk, asked for again
    assert fleet.running.bad_messages - bad_before == 2  # undecodable and bad base64
    w = fleet.watcher
    w.wait("the count in the status", lambda: w.status["stats"]["bad_messages"] >= 2)
    assert fleet.hub_thread is not None and fleet.hub_thread.is_alive()
    assert fleet.running.session.connected.is_set()
    fleet.assert_serving(v1)
