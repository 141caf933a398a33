"""Input loss reaches the hub: an agent reading a serial port (a socat pty pair whose ends vanish
when socat stops, as a USB adapter pulled out, and return when it starts again), a real hub and a
private mosquitto. The test counts its own unplugs and silences, and reads the hub's registry,
`edgehub devices --json`, the stored telemetry windows and /metrics."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cloud_hub.broker.local import RunningBroker
from cloud_hub.cli import app as hub_cli
from cloud_hub.hub import Hub
from cloud_hub.web.metrics import registry_for
from edge_agent.agent import Agent
from tests.support.device_rig import enrolled, hub_and_agent
from tests.support.serial import WAIT_S, Socat

pytestmark = pytest.mark.broker
DEVICE = "pi-serial"
NO_INPUT_S = 1  # the device's telemetry.no_input_s, small so the test is quick
LINE = b"13.2,1.78,2.14,112\n"


class Feeder:
    """A sensor that keeps talking: a line every 0.1 s into the pty's device end, until stopped
    (stop it before the port is pulled: the end it writes to vanishes)."""

    def __init__(self, socat: Socat) -> None:
        self.socat = socat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.socat.write(LINE)
        while not self._stop.wait(0.1):
            self.socat.write(LINE)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(WAIT_S)


@dataclass
class Rig:
    home: Path
    hub: Hub
    agent: Agent
    socat: Socat
    feeder: Feeder

    def inputs(self) -> list[dict[str, Any]]:
        """The device's inputs as the hub's registry holds them (its last status)."""
        row = self.hub.store.device(DEVICE)
        return list(((row or {}).get("stats") or {}).get("inputs", []))

    def port(self) -> dict[str, Any]:
        found = self.inputs()
        return found[0] if found else {}

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 15) -> None:
        """Until `check()` holds; the hub notifies after each message it handles."""
        with self.hub.handled:
            ok = self.hub.handled.wait_for(check, timeout)
        assert ok, f"timed out waiting for {what}; the hub has {self.inputs()}"


@pytest.fixture
def rig(broker: RunningBroker, tmp_path: Path) -> Iterator[Rig]:
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed")
    socat = Socat(tmp_path)
    socat.start()
    home, cfg = enrolled(
        tmp_path,
        broker,
        DEVICE,
        f"[telemetry]\nstatus_interval_s = 0.2\ninterval_s = 0.2\nno_input_s = {NO_INPUT_S}\n"
        f'[[inputs]]\nkind = "serial"\nport = "{socat.b}"\nreopen_delay = 0.05\n',
    )
    with hub_and_agent(home, broker, cfg) as (hub, agent):
        rig = Rig(home, hub, agent, socat, Feeder(socat))
        rig.wait("the port open, at the hub", lambda: rig.port().get("open") is True)
        yield rig
        rig.feeder.stop()
    socat.stop()


def devices_json(home: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    capsys.readouterr()
    assert hub_cli.main(["--home", str(home), "devices", "list", "--json"]) == 0
    return {row["device"]: row for row in json.loads(capsys.readouterr().out)}


def metrics(rig: Rig) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry_for(rig.hub.store)).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_an_unplugged_port_is_counted_at_the_hub(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    rig.feeder.start()
    rig.wait("lines flowing", lambda: rig.agent.pipeline.stats.rejected["no-model"] > 0)
    unplugs = 2
    for n in range(1, unplugs + 1):
        rig.feeder.stop()
        rig.socat.stop()  # the USB adapter is pulled out: both pty ends vanish
        rig.wait(
            f"unplug {n} at the hub",
            lambda n=n: rig.port().get("lost") == n and rig.port().get("open") is False,
        )
        rig.socat.start()  # ... and plugged back in
        rig.feeder.start()
        rig.wait(
            f"replug {n} at the hub",
            lambda n=n: rig.port().get("reopened") == n and rig.port().get("open") is True,
        )

    row = devices_json(rig.home, capsys)[DEVICE]
    (port,) = row["inputs"]
    assert (port["name"], port["lost"], port["reopened"]) == (f"serial:{rig.socat.b}", 2, 2)
    assert "port lost x2" in row["input"]
    # the telemetry windows carry it too, in their compact field
    rig.wait(
        "a telemetry window after the second replug",
        lambda: any(
            r.body.get("inputs", {}).get("reopened") == unplugs
            for r in rig.hub.store.records("telemetry", DEVICE)
        ),
    )
    window = next(
        r.body["inputs"]
        for r in rig.hub.store.records("telemetry", DEVICE)
        if r.body.get("inputs", {}).get("reopened") == unplugs
    )
    assert window["lost"] == unplugs and set(window) == {"lost", "reopened", "idle_s", "no_input"}
    samples = metrics(rig)
    labels = (("device", DEVICE), ("input", f"serial:{rig.socat.b}"))
    assert samples[("edgefleet_device_input_lost_total", labels)] == unplugs
    assert samples[("edgefleet_device_input_reopened_total", labels)] == unplugs
    assert samples[("edgefleet_device_input_open", labels)] == 1


def test_no_input_is_flagged_at_the_hub_and_clears_when_lines_flow(
    rig: Rig, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.agent")
    # the port is open and nothing talks on it
    rig.wait("the no-input flag at the hub", lambda: rig.port().get("no_input") is True)
    row = devices_json(rig.home, capsys)[DEVICE]
    assert row["online"] is True and row["input"].startswith("no input ")
    (port,) = row["inputs"]
    assert port["open"] is True and port["idle_s"] >= NO_INPUT_S and port["lost"] == 0
    labels = (("device", DEVICE), ("input", f"serial:{rig.socat.b}"))
    assert metrics(rig)[("edgefleet_device_no_input", labels)] == 1

    rig.feeder.start()  # lines flow again: the flag clears
    rig.wait("the flag cleared at the hub", lambda: rig.port().get("no_input") is False)
    row = devices_json(rig.home, capsys)[DEVICE]
    assert row["input"] == "ok" and row["inputs"][0]["idle_s"] < NO_INPUT_S
    assert metrics(rig)[("edgefleet_device_no_input", labels)] == 0

    rig.feeder.stop()  # and silence raises it again
    rig.wait("the flag raised again", lambda: rig.port().get("no_input") is True)
    said = [r.getMessage() for r in caplog.records if r.name == "edge_agent.agent"]
    name = f"serial:{rig.socat.b}"
    assert said.count(f"input {name}: no line for {NO_INPUT_S:g} s or more") == 2  # once a spell
    assert said.count(f"input {name}: lines again") == 1
