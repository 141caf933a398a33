"""Promise 1 when the world is mean: a record the device accepted reaches the hub exactly once
whatever the broker keeps or loses.

- the hub SIGKILLed for longer than a broker with `max_queued_messages 50` can queue for it;
- the broker killed with -9 while the hub is down (its queue, saved every 30 minutes as
  mosquitto's stock `autosave_interval` does, is gone);
- a neighbour flooding the broker with its own telemetry beside a normal device.

Real mosquitto with that small queue, the hub as its own `edgehub serve` process (so SIGKILL
means SIGKILL), devices with the agent's own Buffer and Sender. What went in is what the test
appended; what came out is counted with sqlite3 on the hub's database file."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.broker.local import RunningBroker, start_mosquitto
from cloud_hub.rollout.operations import init_hub
from edge_agent.protocol.messages import Batch, Record, encode
from tests.support.device_rig import Device

pytestmark = pytest.mark.broker
WAIT_S = 60.0
SMALL_QUEUE = "max_queued_messages 50\nautosave_interval 1800\n"


@pytest.fixture
def small_broker(mosquitto_binary: str, tmp_path: Path) -> Iterator[RunningBroker]:
    running = start_mosquitto(
        tmp_path / "mosquitto", extra_config=SMALL_QUEUE, binary=mosquitto_binary
    )
    try:
        yield running
    finally:
        running.stop()


class HubProcess:
    """`edgehub serve` on the test's broker; its log kept for a failing assertion."""

    def __init__(self, home: Path, broker: RunningBroker) -> None:
        self.home, self.broker = home, broker
        self.log = home.parent / "hub.log"
        self.proc: subprocess.Popen[bytes] | None = None
        init_hub(home)

    def start(self) -> None:
        argv = ["--home", str(self.home), "serve", "--broker-port", str(self.broker.port)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cloud_hub.cli.app", *argv, "--http", "off"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def refused(self) -> dict[str, dict[str, int]]:
        """device -> reason -> count, from the hub's database."""
        with sqlite3.connect(self.home / "hub.sqlite", timeout=10) as db:
            rows = db.execute("SELECT device, reason, count FROM refusals").fetchall()
        out: dict[str, dict[str, int]] = {}
        for device, reason, count in rows:
            out.setdefault(device, {})[reason] = int(count)
        return out

    def stored(self, device: str) -> list[tuple[int, int]]:
        """(boot, seq) of the device's telemetry in the hub's database, repeats included."""
        path = self.home / "hub.sqlite"
        if not path.exists():
            return []
        with sqlite3.connect(path, timeout=10) as db:
            try:
                rows = db.execute(
                    "SELECT boot, seq FROM records WHERE device = ? AND kind = 'telemetry'",
                    (device,),
                ).fetchall()
            except sqlite3.OperationalError:  # the hub has not created its tables yet
                return []
        return [(int(b), int(s)) for b, s in rows]


def _until(what: str, check: Callable[[], bool], timeout: float = WAIT_S) -> None:
    """Poll an outside view (a database file, a log) that has nothing to wait on."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def hub(small_broker: RunningBroker, tmp_path: Path) -> Iterator[HubProcess]:
    h = HubProcess(tmp_path / "hub", small_broker)
    h.start()
    yield h
    h.stop()


@pytest.fixture
def devices(small_broker: RunningBroker, tmp_path: Path) -> Iterator[list[Device]]:
    made = [
        Device(
            small_broker,
            tmp_path / f"pi-{n}",
            f"pi-{n}",
            batch_size=5,
            window=20,
            confirm_timeout=2.0,
        )
        for n in range(3)
    ]
    for d in made:
        d.start()
    yield made
    for d in made:
        d.close()


def _all_stored_once(hub: HubProcess, devices: list[Device]) -> None:
    for d in devices:
        expected = [(1, seq) for seq in range(d.buffer.appended)]
        _until(
            f"{d.id}'s {len(expected)} records at the hub",
            lambda d=d, expected=expected: len(set(hub.stored(d.id))) >= len(expected),
        )
        stored = sorted(hub.stored(d.id))
        assert stored == expected, f"{d.id}: missing or repeated records"
        _until(f"{d.id} told that all is stored", lambda d=d: d.sender.idle())


def _dropped_for_the_hub(broker: RunningBroker) -> bool:
    assert broker.log_path is not None
    return "Outgoing messages are being dropped for client edgehub" in broker.log_path.read_text()


def _while_the_hub_is_away(hub: HubProcess, devices: list[Device], records: int) -> None:
    """Records made while no hub listens: more messages than the broker queues for it."""
    for d in devices:
        d.record(records)
    _until(
        "each device's window sent and acknowledged by the broker",
        lambda: all(
            len(d.sender.window.flights) == d.sender.window.size
            and all(f.mid is None for f in d.sender.window.flights.values())
            for d in devices
        ),
    )


def _hub_killed_while_devices_send(hub: HubProcess, devices: list[Device]) -> None:
    for d in devices:
        d.record(10)
    _all_stored_once(hub, devices)
    hub.kill()
    _while_the_hub_is_away(hub, devices, 400)  # 3 devices x 20 batches > 50 queued


def test_a_hub_away_longer_than_the_broker_queue_loses_nothing(
    small_broker: RunningBroker, hub: HubProcess, devices: list[Device]
) -> None:
    _hub_killed_while_devices_send(hub, devices)
    assert _dropped_for_the_hub(small_broker), "the broker's queue never overflowed"
    hub.start()
    _all_stored_once(hub, devices)
    assert all(d.buffer.dropped() == {} for d in devices)
    assert sum(d.sender.resends for d in devices) > 0


def test_a_broker_killed_while_the_hub_is_down_loses_nothing(
    small_broker: RunningBroker, hub: HubProcess, devices: list[Device]
) -> None:
    _hub_killed_while_devices_send(hub, devices)
    small_broker.kill()  # the hub's queue and sessions, held in memory, are gone
    small_broker.restart()
    hub.start()
    _all_stored_once(hub, devices)


def test_a_flooding_neighbour_costs_a_normal_device_nothing(
    small_broker: RunningBroker, hub: HubProcess, devices: list[Device]
) -> None:
    """The flooder publishes its own telemetry as fast as the broker takes it, far beyond what
    the hub's queue holds; the normal devices' records all arrive, each once."""
    stop = threading.Event()
    flooded = [0]

    def flood() -> None:
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="pi-x")
        client.max_queued_messages_set(200)
        client.connect(small_broker.host, small_broker.port)
        client.loop_start()
        seq = 0
        while not stop.is_set():
            batch = Batch("pi-x", tuple(Record(1, seq + i, 0.0, {"count": i}) for i in range(50)))
            info = client.publish("edgefleet/dev/pi-x/telemetry", encode(batch), qos=1)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                seq += 50
                flooded[0] += 1
            else:
                time.sleep(0.001)  # paho's own queue is full: let it drain
        client.loop_stop()
        client.disconnect()

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        for _ in range(5):
            for d in devices:
                d.record(40)
        _all_stored_once(hub, devices)
    finally:
        stop.set()
        flooder.join(10)
    assert flooded[0] > 50, "the neighbour did not flood"
    _until("the flood's refusal stored", lambda: "pi-x" in hub.refused())
    refused = hub.refused()
    assert set(refused) == {"pi-x"}, "only the flooder is refused"
    assert refused["pi-x"]["rate"] > 0
