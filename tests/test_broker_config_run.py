"""`edgehub broker-config` runs as written: `mosquitto -c broker/mosquitto.conf` started the way
the README says (as root in CI, so mosquitto drops to its own user before its dynamic security
plugin reads the users and the ACL), with the broker's own limits set."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.broker.config import MAX_PACKET_BYTES, MAX_QUEUED_MESSAGES, conf_text
from cloud_hub.broker.local import free_port
from cloud_hub.cli import app as hub_cli
from cloud_hub.rollout.operations import enroll_device, init_hub

pytestmark = pytest.mark.broker


def test_the_conf_sets_the_brokers_limits(tmp_path: Path) -> None:
    plugin, users = tmp_path / "dynsec.so", tmp_path / "dynamic-security.json"
    text = conf_text(8883, plugin, users, data_dir=tmp_path / "data")
    keys = dict(line.split(" ", 1) for line in text.splitlines() if line and line[0] != "#")
    assert keys["max_packet_size"] == str(MAX_PACKET_BYTES)
    assert keys["max_queued_messages"] == str(MAX_QUEUED_MESSAGES)
    assert int(keys["autosave_interval"]) <= 60, "mosquitto's stock 30 minutes loses state"
    assert keys["persistence_location"] == f"{tmp_path / 'data'}/"


class Written:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, out: Path) -> None:
        self.proc, self.port, self.out = proc, port, out
        self.credentials: dict[str, str] = json.loads((out / "credentials.json").read_text())

    def log(self) -> str:
        return (self.out / "stderr.log").read_text(errors="replace")


@pytest.fixture
def written(
    mosquitto_binary: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Iterator[Written]:
    home = tmp_path / "hub"
    init_hub(home)
    enroll_device(home, "pi-a", tmp_path / "pi-a")
    # a folder mosquitto's own user can enter (pytest's tmp_path is root's alone)
    shared = Path(tempfile.mkdtemp(prefix="edgefleet-broker-"))
    shared.chmod(0o755)
    out, port = shared / "broker", free_port()
    argv = ["--home", str(home), "broker-config", "--out", str(out), "--port", str(port)]
    assert hub_cli.main(argv) == 0
    assert "cannot enter" not in capsys.readouterr().out  # mosquitto's user reaches the files
    with (out / "stderr.log").open("wb") as log:
        proc = subprocess.Popen(
            [mosquitto_binary, "-c", str(out / "mosquitto.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    w = Written(proc, port, out)
    try:
        yield w
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        shutil.rmtree(shared)


def _connect(w: Written, user: str) -> tuple[mqtt.Client, threading.Event]:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=user)
    client.username_pw_set(user, w.credentials[user])
    connected = threading.Event()
    client.on_connect = lambda _c, _u, _f, reason, _p: (
        None if reason.is_failure else connected.set()
    )
    for _ in range(100):  # mosquitto is starting: the port opens within a moment
        try:
            client.connect("127.0.0.1", w.port)
            break
        except ConnectionRefusedError:
            assert w.proc.poll() is None, w.log()
            threading.Event().wait(0.05)
    client.loop_start()
    return client, connected


def test_mosquitto_started_as_written_reads_its_files_and_saves_its_state(
    written: Written,
) -> None:
    w = written
    hub, hub_in = _connect(w, "edgehub")
    device, device_in = _connect(w, "pi-a")
    try:
        assert hub_in.wait(10), f"the hub could not log in:\n{w.log()}"
        assert device_in.wait(10), f"the device could not log in:\n{w.log()}"
        got: list[int] = []
        arrived = threading.Event()

        def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
            got.append(len(msg.payload))
            arrived.set()

        hub.on_message = on_message
        hub.subscribe("edgefleet/dev/+/telemetry", qos=1)
        gone = threading.Event()
        device.on_disconnect = lambda *_a: gone.set()
        # a packet past the limit: mosquitto closes the sender's connection, forwards nothing
        device.publish("edgefleet/dev/pi-a/telemetry", b"x" * (MAX_PACKET_BYTES + 1), qos=0)
        assert gone.wait(10), "an oversized publish was accepted"
        device.reconnect()
        device.publish("edgefleet/dev/pi-a/telemetry", b"ok", qos=1)
        assert arrived.wait(10), w.log()
        assert got == [2]
        assert "Unable to open" not in w.log()
        assert "Error loading Dynamic security plugin config" not in w.log()
    finally:
        for client in (hub, device):
            client.loop_stop()
            client.disconnect()
    os.killpg(w.proc.pid, signal.SIGTERM)  # mosquitto saves its state on the way out
    assert w.proc.wait(10) == 0, w.log()
    assert (w.out / "data" / "mosquitto.db").stat().st_size > 0, w.log()


@pytest.mark.skipif(os.geteuid() != 0, reason="mosquitto drops to its own user only as root")
def test_a_folder_mosquitto_cannot_enter_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "hub"
    init_hub(home)
    tmp_path.chmod(0o700)
    out = tmp_path / "broker"
    assert hub_cli.main(["--home", str(home), "broker-config", "--out", str(out)]) == 0
    assert f"user mosquitto, which cannot enter {tmp_path}" in capsys.readouterr().out
