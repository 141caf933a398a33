"""Promise 5 on the broker `edgehub broker-config` writes, run as written by a real mosquitto and
watched through mosquitto's own command-line clients (not the code under test).

What mosquitto's acl_file let through, and the dynamic security plugin must not: a device that
subscribes beyond its own topics (`#`, another device's commands, the hubs' shared-subscription
group, where it was handed a share of every device's records that were then lost to the hub).
A device that publishes on another's topics or the hub's. Hub workers that logged in as one user
and closed each other's connections."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud_hub.broker.local import RunningBroker, free_port, start_mosquitto
from cloud_hub.cli import app as hub_cli
from cloud_hub.harness.commands import serve_argv
from cloud_hub.rollout.operations import enroll_device, init_hub
from cloud_hub.store.database import Store
from cloud_hub.store.url import store_url
from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.protocol.messages import decode_batch
from edge_agent.protocol.topics import DEVICE_DOWN, DEVICE_UP
from tests.support.cli import hub_fails
from tests.support.device_rig import Device
from tests.support.mqtt_cli import REFUSED, Login, MqttCli
from tests.support.processes import Lines, launch, processes  # noqa: F401  (a fixture)

pytestmark = pytest.mark.broker

DEVICES = ("pi-a", "pi-b")
WORKERS = ("a", "b")
GROUP = "hubs"
WAIT_S = 30.0
# how long the two hub workers split the ingest: a moment in CI; the ten minutes with
# EDGEFLEET_WORKERS_SOAK_S=600 pytest tests/test_broker_dynsec.py -k two_hub_workers --timeout 900
SOAK_S = float(os.environ.get("EDGEFLEET_WORKERS_SOAK_S", "0"))


@dataclass
class Locked:
    """A hub home with DEVICES enrolled, the files broker-config wrote for it (with a user per
    hub worker) and mosquitto running them (its own listener on `port`)."""

    home: Path
    out: Path
    port: int
    broker: RunningBroker
    credentials: dict[str, str]

    def login(self, user: str) -> Login:
        return Login(self.port, user, self.credentials[user])

    def log(self) -> str:
        assert self.broker.log_path is not None
        return self.broker.log_path.read_text(errors="replace")


@pytest.fixture
def locked(mosquitto_binary: str, tmp_path: Path) -> Iterator[Locked]:
    home = tmp_path / "hub"
    init_hub(home)
    for device in DEVICES:
        enroll_device(home, device, tmp_path / device / "state")
    out, port = tmp_path / "broker", free_port()
    argv = ["--home", str(home), "broker-config", "--out", str(out), "--port", str(port)]
    assert hub_cli.main([*argv, *(a for w in WORKERS for a in ("--worker", w))]) == 0
    conf = (out / "mosquitto.conf").read_text()
    # the generated conf as it is, next to the harness's listener; its log says who got what
    debug = "log_type debug\nlog_type subscribe\n"
    broker = start_mosquitto(tmp_path / "mq", extra_config=conf + debug, binary=mosquitto_binary)
    credentials = json.loads((out / "credentials.json").read_text())
    try:
        yield Locked(home, out, port, broker, credentials)
    finally:
        broker.stop()


# ---- SUBSCRIBE ------------------------------------------------------------------------------
def test_a_device_is_refused_at_subscribe_beyond_its_own_topics(
    locked: Locked, mosquitto_clients: MqttCli
) -> None:
    beyond = (
        "#",
        "edgefleet/#",
        f"$share/{GROUP}/edgefleet/dev/+/telemetry",
        f"$share/{GROUP}/edgefleet/dev/pi-b/telemetry",
        "$share/mine/edgefleet/dev/pi-a/cmd",  # not even its own topics through a group
        "edgefleet/dev/pi-b/cmd",
        "edgefleet/dev/+/cmd",
        "edgefleet/dev/pi-a/+",
        "edgefleet/dev/pi-a/#",
        "edgefleet/dev/pi-a/telemetry",  # its own records are the hub's to read
        "edgefleet/fleet/#",
        "$SYS/#",
        "$CONTROL/dynamic-security/v1",
    )
    granted = mosquitto_clients.suback(locked.login("pi-a"), *beyond)
    assert dict(zip(beyond, granted, strict=True)) == dict.fromkeys(beyond, REFUSED)
    own = (
        *(f"edgefleet/dev/pi-a/{kind}" for kind in DEVICE_DOWN),
        "edgefleet/fleet/tuf/#",
        "edgefleet/fleet/tuf/timestamp.json",
    )
    assert mosquitto_clients.suback(locked.login("pi-a"), *own) == [1] * len(own)


def test_the_hubs_share_group_gets_every_record_whoever_asks_to_join(
    locked: Locked, mosquitto_clients: MqttCli
) -> None:
    shared = f"$share/{GROUP}/edgefleet/dev/+/telemetry"
    hub = mosquitto_clients.subscriber(locked.login("edgehub-a"), shared)
    thief = mosquitto_clients.subscriber(locked.login("pi-a"), shared, "edgefleet/dev/pi-a/cmd")
    try:
        assert hub.granted == [1]
        assert thief.granted == [REFUSED, 1]  # connected, but not in the group
        records = [f"record-{n}" for n in range(60)]
        mosquitto_clients.publish(locked.login("pi-b"), "edgefleet/dev/pi-b/telemetry", *records)
        got = hub.wait_for(len(records))
        # after the records, so the thief's connection has seen everything it would be given
        mosquitto_clients.publish(locked.login("edgehub-b"), "edgefleet/dev/pi-a/cmd", "marker")
        assert thief.wait_payload("marker") == [("edgefleet/dev/pi-a/cmd", "marker")]
        assert sorted(p for _, p in hub.messages) == sorted(records), "lost or repeated"
        assert {t for t, _ in got} == {"edgefleet/dev/pi-b/telemetry"}
    finally:
        hub.stop()
        thief.stop()


_SUBSCRIBE = re.compile(r": Received SUBSCRIBE from (\S+)$")
_ASKED = re.compile(r": \t(\S+) \(QoS \d\)$")
_GRANTED = re.compile(r": (\S+) \d (\S+)$")


@contextmanager
def agent_on(locked: Locked, folder: Path) -> Iterator[Agent]:
    """A real agent, pi-a, on the locked broker with its own credential."""
    (folder / "broker-password").write_text(locked.credentials["pi-a"])
    config = folder / "agent.toml"
    config.write_text(
        '[device]\nid = "pi-a"\nstate_dir = "state"\n'
        f'[broker]\nhost = "127.0.0.1"\nport = {locked.port}\npassword_file = "broker-password"\n'
        "[telemetry]\nstatus_interval_s = 0.2\n"
    )
    agent = Agent(load_config(config))
    agent.start()
    thread = threading.Thread(target=agent.run_forever, daemon=True)
    thread.start()
    try:
        yield agent
    finally:
        agent.stop_event.set()
        thread.join(WAIT_S)


def test_the_agent_is_granted_every_subscription_it_makes(
    locked: Locked, mosquitto_clients: MqttCli, tmp_path: Path
) -> None:
    """A real agent on the locked broker: what it asks for is what its role allows."""
    hub = mosquitto_clients.subscriber(locked.login("edgehub-a"), "edgefleet/dev/+/status")
    try:
        with agent_on(locked, tmp_path / "pi-a"):
            # its subscriptions went out before its status (the session subscribes, then says so)
            hub.wait_for(1)
    finally:
        hub.stop()
    asked: set[str] = set()
    granted: set[str] = set()
    who = ""
    for line in locked.log().splitlines():
        if found := _SUBSCRIBE.search(line):
            who = found.group(1)
        elif (found := _ASKED.search(line)) and who == "pi-a":
            asked.add(found.group(1))
        elif (found := _GRANTED.search(line)) and found.group(1) == "pi-a":
            granted.add(found.group(2))
    mine = {f"edgefleet/dev/pi-a/{kind}" for kind in DEVICE_DOWN}
    assert asked == granted == {*mine, "edgefleet/fleet/tuf/#"}


def test_the_hubs_broker_credential_cannot_command_a_device(
    locked: Locked, mosquitto_clients: MqttCli, tmp_path: Path
) -> None:
    """The hub's own broker user may publish on a device's cmd topic; what it publishes there
    without the hub's command key is refused by the device, with its reason on events."""
    events = mosquitto_clients.subscriber(locked.login("edgehub-a"), "edgefleet/dev/pi-a/events")
    try:
        with agent_on(locked, tmp_path / "pi-a") as agent:
            rollback = '{"v": 1, "id": "evil", "kind": "rollback", "model": null}'
            mosquitto_clients.publish(locked.login("edgehub-b"), "edgefleet/dev/pi-a/cmd", rollback)
            [(_, payload)] = events.wait_for(1)
            [record] = decode_batch(payload.encode(), "events").records
            assert record.body["event"] == "rejected"
            assert record.body["reason"].startswith("unsigned: "), record.body
            assert agent.store.record().current is None  # nothing was rolled anywhere
    finally:
        events.stop()


# ---- PUBLISH --------------------------------------------------------------------------------
def test_a_device_cannot_publish_on_another_devices_topics_or_the_hubs(
    locked: Locked, mosquitto_clients: MqttCli
) -> None:
    cli = mosquitto_clients
    hub = cli.subscriber(locked.login("edgehub-a"), *(f"edgefleet/dev/+/{k}" for k in DEVICE_UP))
    b_reads = (*(f"edgefleet/dev/pi-b/{k}" for k in DEVICE_DOWN), "edgefleet/fleet/tuf/#")
    b = cli.subscriber(locked.login("pi-b"), *b_reads)
    try:
        assert hub.granted == [1] * len(DEVICE_UP)
        assert b.granted == [1] * len(b_reads)
        a = locked.login("pi-a")
        for kind in (*DEVICE_UP, *DEVICE_DOWN):
            cli.publish(a, f"edgefleet/dev/pi-b/{kind}", f"forged {kind}")
        cli.publish(a, "edgefleet/fleet/tuf/timestamp.json", "forged metadata")
        cli.publish(a, "edgefleet/dev/pi-a/telemetry", "mine")  # after the forgeries
        hub.wait_payload("mine")
        real = locked.login("edgehub-b")
        cli.publish(real, "edgefleet/dev/pi-b/cmd", "real command")
        cli.publish(real, "edgefleet/fleet/tuf/timestamp.json", "real metadata")
        b.wait_for(2)
        assert hub.messages == [("edgefleet/dev/pi-a/telemetry", "mine")]
        assert sorted(b.messages) == [
            ("edgefleet/dev/pi-b/cmd", "real command"),
            ("edgefleet/fleet/tuf/timestamp.json", "real metadata"),
        ]
    finally:
        hub.stop()
        b.stop()


# ---- hub workers ----------------------------------------------------------------------------
K = 150  # records a phase; the test stays well under 30 s (two hub processes start in parallel)


def _drained(device: Device) -> None:
    """Wait until every record the device holds was confirmed: committed by one of the hubs."""
    deadline = time.monotonic() + WAIT_S
    while not device.sender.idle():
        assert time.monotonic() < deadline, f"{device.buffer.pending()} never confirmed"
        device.sender.wake.wait(0.1)


def test_two_hub_workers_split_the_ingest_each_as_itself(
    locked: Locked,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],  # noqa: F811
    record_property: Callable[[str, object], None],
) -> None:
    """`edgehub serve --worker a|b --share hubs`, each logged in as its own broker user: no one
    closes the other's connection, each gets a share, and every record is stored once. When
    one stops, it leaves the group: the other gets every record at once, none waits in the
    stopped worker's session for the device to send it again."""
    workers = []
    for name in WORKERS:
        argv = serve_argv(locked.home, "127.0.0.1", locked.port, "--http", "off")
        password = locked.credentials[f"edgehub-{name}"]
        workers.append(
            launch(
                processes,
                *argv,
                "--worker",
                name,
                "--share",
                GROUP,
                env={"EDGEHUB_BROKER_PASSWORD": password},
            )
        )
    for name, proc in zip(WORKERS, workers, strict=True):
        said = Lines(proc.stdout)  # type: ignore[arg-type]
        said.expect(f"connecting to broker 127.0.0.1:{locked.port} as edgehub-{name}")
        said.expect("serving")
    device = Device(
        locked.broker,
        tmp_path / "pi-a" / "rig",
        "pi-a",
        port=locked.port,
        password=locked.credentials["pi-a"],
    )
    try:
        device.start()
        sent, until = 0, time.monotonic() + SOAK_S
        while sent == 0 or time.monotonic() < until:
            device.record(K)
            _drained(device)
            sent += K
        shared_log = locked.log()
        # (two hubs confirm out of order, and the device sends again what a later
        # confirmation overtook: the store keeps one of each)
        resent = device.sender.resends
        workers[1].send_signal(signal.SIGTERM)  # worker b goes
        assert workers[1].wait(WAIT_S) == 0
        device.record(K)
        _drained(device)
        sent += K
        assert device.sender.resends == resent, "records waited for the worker that stopped"
    finally:
        device.close()
    workers[0].send_signal(signal.SIGTERM)
    assert workers[0].wait(WAIT_S) == 0
    seqs = sorted(r.seq for r in Store(store_url(locked.home)).records("telemetry", "pi-a"))
    assert seqs == list(range(sent)), "missing or repeated records"
    record_property("records", sent)  # for the soak's report (--junitxml)
    record_property("resends", resent)
    assert "already connected" not in locked.log()
    for name in WORKERS:
        user = f"edgehub-{name}"
        # its own user and client id, a clean session (c1: a killed worker leaves the group at
        # once; tests/test_hub_cluster.py), and its share of the records
        assert re.search(rf" as {user} \(p\d, c1, k\d+, u'{user}'\)", shared_log), shared_log
        shares = [
            line
            for line in shared_log.splitlines()
            if f"Sending PUBLISH to {user} (" in line and "'edgefleet/dev/pi-a/telemetry'" in line
        ]
        assert shares, f"{user} was given no records"


# ---- names and arguments --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["edgehub", "EdgeHub", "edgehub-a", "edgehub-ha"])
def test_the_hubs_names_are_refused_at_enrollment(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "hub"
    init_hub(home)
    err = hub_fails(
        capsys,
        *("--home", str(home), "devices", "enroll", name, "--state-dir", str(tmp_path / "s")),
    )
    assert f"device id: {name!r} is reserved" in err
    assert Store(store_url(home)).devices() == []


def test_broker_config_refuses_a_hub_name_an_older_hub_enrolled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "hub"
    init_hub(home)
    Store(store_url(home)).register("edgehub-b")  # registered before enrollment refused it
    argv = ["--home", str(home), "broker-config", "--out", str(tmp_path / "o"), "--worker", "b"]
    err = hub_fails(capsys, *argv)
    assert "enrolled device 'edgehub-b' is reserved (names edgehub-* belong to the hub's" in err
    assert "edgehub devices remove edgehub-b" in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--worker", "a/b"], "--worker: expected a worker name"),
        (["--worker", ""], "--worker: expected a worker name"),
        (["--client-id", ""], "--client-id: expected a name without spaces"),
        (["--client-id", "a b"], "--client-id: expected a name without spaces"),
    ],
)
def test_serve_with_a_wrong_identity(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "hub"
    init_hub(home)
    assert expected in hub_fails(capsys, "--home", str(home), "serve", "--http", "off", *argv)
