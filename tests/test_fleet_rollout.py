"""Staged rollouts through real agents, a real hub and mosquitto: gates that halt and roll back,
a hub restarted mid-rollout, a device that was offline, and a hub loop that survives its disk.

The hub's clock is `time.time() + offset`: soak times are an hour, and a test moves the offset
past them once what it waits for has arrived (nothing sleeps)."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sklearn.datasets import load_iris
from sqlalchemy import text

from cloud_hub.broker.local import RunningBroker
from cloud_hub.hub import Hub
from cloud_hub.rollout import engine as ro
from cloud_hub.rollout.gates import Gates
from cloud_hub.rollout.operations import enroll_device, init_hub, publish_bundle, start_rollout
from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.mqtt.session import BrokerAddress
from edge_agent.protocol.messages import ModelRef, XferRequest, encode
from tests.support.fleet import _bundle, _publish
from tests.support.watch import DeviceWatcher

pytestmark = pytest.mark.broker
WAIT_S = 60
SOAK = 3600.0


@dataclass
class Rig:
    tmp: Path
    broker: RunningBroker
    home: Path
    watcher: DeviceWatcher
    readings: Path
    offset: float = 0.0
    hub: Hub | None = None
    hub_stop: threading.Event = field(default_factory=threading.Event)
    hub_thread: threading.Thread | None = None
    agents: dict[str, tuple[Agent, threading.Thread]] = field(default_factory=dict)

    # ---- hub ----------------------------------------------------------------------------
    def start_hub(self) -> Hub:
        self.hub_stop = threading.Event()
        hub = Hub(
            self.home,
            BrokerAddress(self.broker.host, self.broker.port),
            clock=lambda: time.time() + self.offset,
        )
        self.hub_thread = threading.Thread(target=hub.run, args=(self.hub_stop,), daemon=True)
        self.hub_thread.start()
        assert hub.ready.wait(30)
        self.hub = hub
        return hub

    def stop_hub(self) -> None:
        self.hub_stop.set()
        if self.hub_thread is not None:
            self.hub_thread.join(15)
            assert not self.hub_thread.is_alive()
        self.hub = None

    def hub_wait(self, what: str, check: Callable[[], bool]) -> None:
        hub = self.hub
        assert hub is not None
        with hub.handled:  # re-checked after each message; agents send status every 0.2 s
            assert hub.handled.wait_for(check, WAIT_S), f"timed out waiting for {what}"

    def rollout(self, rollout_id: str) -> ro.Rollout:
        assert self.hub is not None
        row = self.hub.store.rollout(rollout_id)
        assert row is not None
        return ro.Rollout.from_json(row["body"])

    # ---- agents -------------------------------------------------------------------------
    def enroll(self, name: str, source: Path | None = None, interval_s: float = 0.2) -> Path:
        """Config and enrollment. The input is the iris readings looped at 200 Hz, or
        `source`: a pipe the test writes sensor lines into."""
        folder = self.tmp / name
        folder.mkdir(exist_ok=True)
        enroll_device(self.home, name, folder / "state")
        cfg = folder / "agent.toml"
        looped = f'path = "{self.readings}"\nrate_hz = 200\nloop = true\n'
        piped = f'path = "{source}"\n'
        cfg.write_text(
            f'profile = "generic-x86_64"\n[device]\nid = "{name}"\nstate_dir = "state"\n'
            f'[broker]\nhost = "{self.broker.host}"\nport = {self.broker.port}\n'
            f"[telemetry]\ninterval_s = {interval_s}\nstatus_interval_s = 0.2\n"
            "[drift]\nwindow = 50\n"
            f'[[inputs]]\nkind = "file"\n{piped if source else looped}'
        )
        return cfg

    def start_agent(self, name: str) -> Agent:
        agent = Agent(load_config(self.tmp / name / "agent.toml"))
        agent.start()
        thread = threading.Thread(target=agent.run_forever, daemon=True)
        thread.start()
        self.agents[name] = (agent, thread)
        self.watcher.wait(f"{name} online", lambda: self.online(name))
        return agent

    def stop_agent(self, name: str) -> None:
        agent, thread = self.agents.pop(name)
        agent.stop_event.set()
        thread.join(20)
        assert not thread.is_alive()

    def online(self, name: str) -> bool:
        return bool(self.watcher.status_of(name).get("online"))

    def running(self, name: str) -> int | None:
        model = self.watcher.status_of(name).get("model")
        return model["version"] if model else None

    def events_of(self, name: str, version: int) -> list[str]:
        return self.watcher.names(version, name)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bundles")
    (folder / "bad").mkdir()
    return {
        "v1": _bundle(folder, 1),
        "v2": _bundle(folder, 2),
        "v2-unhealthy": _bundle(folder / "bad", 2, max_latency_ms=1e-6),
    }


@pytest.fixture
def rig(broker: RunningBroker, tmp_path: Path) -> Iterator[Rig]:
    home = tmp_path / "hub"
    init_hub(home)
    x, _ = load_iris(return_X_y=True)
    readings = tmp_path / "readings.csv"
    readings.write_text("".join(",".join(f"{v:g}" for v in row) + "\n" for row in x))
    watcher = DeviceWatcher(broker)
    r = Rig(tmp_path, broker, home, watcher, readings)
    r.start_hub()
    try:
        yield r
    finally:
        for name in list(r.agents):
            r.stop_agent(name)
        r.stop_hub()
        watcher.stop()


def _fleet(rig: Rig, names: list[str]) -> None:
    for name in names:
        rig.enroll(name)
    for name in names:
        rig.start_agent(name)


def _roll_out_v1(rig: Rig, bundle: Path, names: list[str]) -> None:
    publish_bundle(rig.home, bundle)
    r = start_rollout(rig.home, ModelRef("iris", 1), "1")
    rig.hub_wait("iris@1 everywhere", lambda: rig.rollout(r.id).state == ro.COMPLETED)
    rig.watcher.wait("iris@1 running", lambda: all(rig.running(n) == 1 for n in names))


# ---- gates ------------------------------------------------------------------------------------
def test_canary_failing_its_health_gate_halts_and_nobody_else_gets_it(
    rig: Rig, bundles: dict[str, Path]
) -> None:
    names = ["pi-1", "pi-2", "pi-3"]
    _fleet(rig, names)
    _roll_out_v1(rig, bundles["v1"], names)
    publish_bundle(rig.home, bundles["v2-unhealthy"])
    r = start_rollout(rig.home, ModelRef("iris", 2), "1", waves="50%,100%")
    rig.hub_wait("the rollout to halt", lambda: rig.rollout(r.id).state == ro.HALTED)
    done = rig.rollout(r.id)
    assert done.devices == {"pi-1": ro.FAILED, "pi-2": ro.WAITING, "pi-3": ro.WAITING}
    assert "pi-1 health gate failed" in done.halt_reason
    rig.watcher.wait("the canary back on iris@1", lambda: rig.running("pi-1") == 1)
    assert rig.events_of("pi-1", 2)[-1] == "rolled-back"
    assert rig.events_of("pi-2", 2) == rig.events_of("pi-3", 2) == []
    assert done.rollback == {}  # it rolled itself back; the hub sends nothing more


@pytest.mark.parametrize("gate", ["latency", "drift"])
def test_canary_installing_but_breaking_a_model_gate_is_rolled_back(
    rig: Rig, bundles: dict[str, Path], gate: str
) -> None:
    names = ["pi-1", "pi-2"]
    _fleet(rig, names)
    _roll_out_v1(rig, bundles["v1"], names)
    publish_bundle(rig.home, bundles["v2"])
    # iris rows as they come are far from the card's reference for a PSI limit of 0: any
    # window drifts; any real inference takes longer than a nanosecond
    limits = {"max_p95_ms": 1e-6} if gate == "latency" else {"max_psi": 0.0}
    r = start_rollout(rig.home, ModelRef("iris", 2), "1", gates=Gates(soak_s=SOAK, **limits))
    rig.hub_wait(
        "the canary healthy on iris@2", lambda: rig.rollout(r.id).devices["pi-1"] == ro.HEALTHY
    )
    kind = "telemetry" if gate == "latency" else "drift"

    def measured() -> bool:
        assert rig.hub is not None
        started = rig.rollout(r.id).stages[0].started or 0.0
        return any(
            rec.body.get("model") == {"name": "iris", "version": 2}
            for rec in rig.hub.store.records_since(kind, ["pi-1"], started)
        )

    rig.hub_wait(f"{kind} of iris@2 from the canary", measured)
    assert rig.rollout(r.id).state == ro.RUNNING  # still soaking
    rig.offset = SOAK + 1
    rig.hub_wait("the gate to halt it", lambda: rig.rollout(r.id).state == ro.HALTED)
    done = rig.rollout(r.id)
    expected = "p95_ms" if gate == "latency" else "max_psi"
    assert done.halt_reason.startswith(f"wave 1: {expected} ")
    assert done.stages[0].gate is not None
    assert any(c["name"] == expected and c["ok"] is False for c in done.stages[0].gate["checks"])
    rig.watcher.wait("the canary rolled back to iris@1", lambda: rig.running("pi-1") == 1)
    rig.hub_wait("the rollback confirmed", lambda: rig.rollout(r.id).rollback == {"pi-1": "done"})
    assert rig.events_of("pi-2", 2) == []
    assert rig.running("pi-2") == 1


class SensorPipe:
    """A named pipe the agent reads as its input, as from a sensor daemon: lines arrive when
    the test writes them. The test holds it open for writing too, so the agent's open does
    not block and it never sees the end of it."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self._fd = os.open(path, os.O_RDWR)

    def write(self, rows: Any) -> None:
        os.write(self._fd, "".join(",".join(f"{v:g}" for v in row) + "\n" for row in rows).encode())

    def close(self) -> None:
        os.close(self._fd)


def _stats(rig: Rig, name: str) -> dict[str, Any]:
    return dict(rig.watcher.status_of(name).get("stats", {}))


def _telemetry_of(rig: Rig, name: str, version: int) -> list[dict[str, Any]]:
    assert rig.hub is not None
    model = {"name": "iris", "version": version}
    return [r.body for r in rig.hub.store.records("telemetry", name) if r.body["model"] == model]


def test_no_model_rejections_before_the_install_do_not_count_against_the_canary(
    rig: Rig, bundles: dict[str, Path]
) -> None:
    """A device refuses its sensor lines (`no-model`) until its first model is installed. Its
    telemetry window here is an hour long, so one window would span the install: what the
    device refused before it must not count as the new model's errors."""
    pipe = SensorPipe(rig.tmp / "sensor.fifo")
    try:
        rig.enroll("pi-1", source=pipe.path, interval_s=3600)
        rig.start_agent("pi-1")
        x, _ = load_iris(return_X_y=True)
        pipe.write(x[:30])
        rig.watcher.wait(
            "30 lines refused for want of a model",
            lambda: _stats(rig, "pi-1").get("rejected") == {"no-model": 30},
        )
        publish_bundle(rig.home, bundles["v1"])
        gates = Gates(soak_s=SOAK, max_error_rate=0.05)
        r = start_rollout(rig.home, ModelRef("iris", 1), "1", gates=gates)
        rig.hub_wait("the canary healthy", lambda: rig.rollout(r.id).devices["pi-1"] == ro.HEALTHY)
        pipe.write(x[30:90])
        rig.watcher.wait("60 lines inferred", lambda: _stats(rig, "pi-1").get("inferences") == 60)
        rig.stop_agent("pi-1")  # its open window goes out as it stops
        rig.start_agent("pi-1")  # back (on iris@1), its status wakes the hub_wait checks
        rig.hub_wait("iris@1 telemetry of the canary", lambda: bool(_telemetry_of(rig, "pi-1", 1)))
        rig.offset = SOAK + 1
        rig.hub_wait("the gate's verdict", lambda: rig.rollout(r.id).state != ro.RUNNING)
    finally:
        pipe.close()
    done = rig.rollout(r.id)
    assert done.state == ro.COMPLETED, done.halt_reason
    assert done.stages[0].gate is not None
    checks = {c["name"]: c["value"] for c in done.stages[0].gate["checks"]}
    assert checks["error_rate"] == 0.0
    # each window is stamped with what handled its lines: nothing, then iris@1
    assert rig.hub is not None
    lines: dict[str, Counter[str]] = {}
    for rec in rig.hub.store.records("telemetry", "pi-1"):
        seen = lines.setdefault(str(rec.body["model"]), Counter())
        seen.update({"inferred": rec.body["count"], **rec.body["errors"]})
    assert lines == {
        "None": Counter({"no-model": 30}),
        str({"name": "iris", "version": 1}): Counter({"inferred": 60}),
    }


def _roll_out_to(rig: Rig, version: int, target: str) -> None:
    r = start_rollout(rig.home, ModelRef("iris", version), "1", target=target)
    rig.hub_wait(f"iris@{version} on {target}", lambda: rig.rollout(r.id).state == ro.COMPLETED)


def test_a_gate_rollback_returns_each_device_to_the_model_it_ran_before(
    rig: Rig, bundles: dict[str, Path]
) -> None:
    """pi-1 ran iris@1 and installs iris@2 in the rollout; pi-2 already ran iris@2 (its first
    and only model). The gate fails: pi-1 goes back to iris@1, pi-2 keeps iris@2."""
    names = ["pi-1", "pi-2"]
    _fleet(rig, names)
    assert rig.hub is not None
    rig.hub.store.label_device("pi-1", add=["old"])
    rig.hub.store.label_device("pi-2", add=["new"])
    publish_bundle(rig.home, bundles["v1"])
    publish_bundle(rig.home, bundles["v2"])
    _roll_out_to(rig, 1, "tag:old")
    _roll_out_to(rig, 2, "tag:new")
    rig.watcher.wait(
        "pi-1 on iris@1, pi-2 on iris@2",
        lambda: rig.running("pi-1") == 1 and rig.running("pi-2") == 2,
    )
    # both in the canary; no real inference meets a nanosecond latency budget
    gates = Gates(soak_s=SOAK, max_p95_ms=1e-6)
    r = start_rollout(rig.home, ModelRef("iris", 2), "2", gates=gates)
    rig.hub_wait(
        "both healthy on iris@2",
        lambda: set(rig.rollout(r.id).devices.values()) == {ro.HEALTHY},
    )
    rig.hub_wait("iris@2 telemetry of pi-1", lambda: bool(_telemetry_of(rig, "pi-1", 2)))
    rig.offset = SOAK + 1
    rig.hub_wait("the gate to halt it", lambda: rig.rollout(r.id).state == ro.HALTED)
    rig.hub_wait(
        "both rollbacks confirmed",
        lambda: rig.rollout(r.id).rollback == {"pi-1": "done", "pi-2": "done"},
    )
    rig.watcher.wait(
        "each device on the model it ran before the rollout",
        lambda: rig.running("pi-1") == 1 and rig.running("pi-2") == 2,
    )
    assert rig.agents["pi-1"][0].store.record().current == ModelRef("iris", 1)
    assert rig.agents["pi-2"][0].store.record().current == ModelRef("iris", 2)
    said = {
        name: [e["reason"] for e in rig.watcher.device_events[name] if e["event"] == "rolled-back"]
        for name in names
    }
    assert said["pi-1"] == ["requested by the hub"]
    assert (
        len(said["pi-2"]) == 1
        and f"kept iris@2, which this device ran before rollout {r.id}" in said["pi-2"][0]
    )


# ---- persistence and catching up --------------------------------------------------------------
def test_hub_restarted_mid_rollout_resumes_it(rig: Rig, bundles: dict[str, Path]) -> None:
    names = ["pi-1", "pi-2", "pi-3"]
    _fleet(rig, names)
    publish_bundle(rig.home, bundles["v1"])
    r = start_rollout(rig.home, ModelRef("iris", 1), "1", gates=Gates(soak_s=SOAK))
    rig.hub_wait("the canary soaking", lambda: rig.rollout(r.id).stages[0].settled is not None)
    rig.stop_hub()
    rig.offset = SOAK + 1  # the hub was down for longer than the soak
    rig.start_hub()
    rig.hub_wait("wave 2 soaking", lambda: rig.rollout(r.id).stages[1].settled is not None)
    rig.offset = 2 * SOAK + 2
    rig.hub_wait("the rollout complete", lambda: rig.rollout(r.id).state == ro.COMPLETED)
    rig.watcher.wait("iris@1 everywhere", lambda: all(rig.running(n) == 1 for n in names))
    assert all(rig.events_of(n, 1).count("offered") == 1 for n in names)  # nothing sent twice


def test_device_offline_during_its_wave_catches_up_when_it_returns(
    rig: Rig, bundles: dict[str, Path]
) -> None:
    names = ["pi-1", "pi-2"]
    _fleet(rig, names)
    rig.stop_agent("pi-2")
    rig.watcher.wait("pi-2 offline", lambda: not rig.online("pi-2"))
    publish_bundle(rig.home, bundles["v1"])
    r = start_rollout(rig.home, ModelRef("iris", 1), "1")
    rig.hub_wait("wave 2 sent", lambda: rig.rollout(r.id).devices["pi-2"] == ro.SENT)
    assert rig.rollout(r.id).devices["pi-1"] == ro.HEALTHY
    assert rig.rollout(r.id).state == ro.RUNNING  # waiting for pi-2, holding nobody else
    rig.start_agent("pi-2")
    rig.hub_wait("the rollout complete", lambda: rig.rollout(r.id).state == ro.COMPLETED)
    assert rig.rollout(r.id).devices["pi-2"] == ro.HEALTHY
    rig.watcher.wait("pi-2 running iris@1", lambda: rig.running("pi-2") == 1)


def test_a_new_device_matching_the_target_joins(rig: Rig, bundles: dict[str, Path]) -> None:
    _fleet(rig, ["pi-1"])
    publish_bundle(rig.home, bundles["v1"])
    r = start_rollout(rig.home, ModelRef("iris", 1), "1")
    rig.hub_wait("the rollout complete", lambda: rig.rollout(r.id).state == ro.COMPLETED)
    _fleet(rig, ["pi-9"])
    rig.hub_wait(
        "the newcomer healthy", lambda: rig.rollout(r.id).devices.get("pi-9") == ro.HEALTHY
    )


# ---- the hub loop survives --------------------------------------------------------------------
def test_hub_survives_a_missing_target_file_and_a_failing_store(
    rig: Rig, bundles: dict[str, Path]
) -> None:
    hub = rig.hub
    assert hub is not None
    _, target = publish_bundle(rig.home, bundles["v1"])
    (hub.repo.targets_dir / target).unlink()  # the signed target's file is gone from disk
    hub.store.issue_commands([("pi-1", [(target, False)])], 0, time.time())  # as a deploy
    request = XferRequest(target, (0,))
    _publish(rig.broker, "edgefleet/dev/pi-1/xfer/req", encode(request))
    with hub.handled:
        assert hub.handled.wait_for(lambda: hub.rejected["FileNotFoundError"] >= 1, WAIT_S)
    with hub.store.engine.begin() as conn:  # the database loses a table under the hub
        conn.execute(text("DROP TABLE records"))
    _publish(
        rig.broker,
        "edgefleet/dev/pi-1/telemetry",
        b'{"v":1,"device":"pi-1","records":[{"boot":1,"seq":0,"ts":1,"count":1}]}',
    )
    with hub.handled:
        assert hub.handled.wait_for(lambda: hub.rejected["StoreError"] >= 1, WAIT_S)
    # still alive: a birth reaches the registry
    _fleet(rig, ["pi-2"])
    rig.hub_wait(
        "pi-2 registered online", lambda: bool((hub.store.device("pi-2") or {}).get("online"))
    )
    assert rig.hub_thread is not None and rig.hub_thread.is_alive()
