"""Staged rollouts through real agents, a real hub and mosquitto: gates that halt and roll back,
a hub restarted mid-rollout, a device that was offline, and a hub loop that survives its disk.

The hub's clock is `time.time() + offset`: soak times are an hour, and a test moves the offset
past them once what it waits for has arrived (nothing sleeps)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sklearn.datasets import load_iris
from sqlalchemy import text
from test_agent_hub import Watcher, _bundle, _publish

from cloud_hub import rollout as ro
from cloud_hub.broker import RunningBroker
from cloud_hub.gates import Gates
from cloud_hub.operations import enroll_device, init_hub, publish_bundle, start_rollout
from cloud_hub.service import Hub
from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.mqtt_session import BrokerAddress
from edge_agent.protocol.messages import ModelRef, XferRequest, encode

pytestmark = pytest.mark.broker
WAIT_S = 60
SOAK = 3600.0


@dataclass
class Rig:
    tmp: Path
    broker: RunningBroker
    home: Path
    watcher: Watcher
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
    def enroll(self, name: str) -> Path:
        folder = self.tmp / name
        folder.mkdir(exist_ok=True)
        enroll_device(self.home, name, folder / "state")
        cfg = folder / "agent.toml"
        cfg.write_text(
            f'profile = "generic-x86_64"\n[device]\nid = "{name}"\nstate_dir = "state"\n'
            f'[broker]\nhost = "{self.broker.host}"\nport = {self.broker.port}\n'
            "[telemetry]\ninterval_s = 0.2\nstatus_interval_s = 0.2\n"
            "[drift]\nwindow = 50\n"
            f'[[inputs]]\nkind = "file"\npath = "{self.readings}"\nrate_hz = 200\nloop = true\n'
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
        return bool(self.watcher.statuses.get(name, {}).get("online"))

    def running(self, name: str) -> int | None:
        model = self.watcher.statuses.get(name, {}).get("model")
        return model["version"] if model else None

    def events_of(self, name: str, version: int) -> list[str]:
        return [
            e["event"]
            for e in self.watcher.device_events.get(name, [])
            if (e["model"] or {}).get("version") == version
        ]


class FleetWatcher(Watcher):
    """The Watcher of test_agent_hub, keeping status and events per device."""

    def __init__(self, broker: RunningBroker) -> None:
        self.statuses: dict[str, dict[str, Any]] = {}
        self.device_events: dict[str, list[dict[str, Any]]] = {}
        super().__init__(broker)
        self.client.on_message = self._each

    def _each(self, c: Any, u: Any, msg: Any) -> None:
        before = len(self.events)
        self._message(c, u, msg)
        device = msg.topic.split("/")[2]
        with self._changed:
            if msg.topic.endswith("/status") and self.status.get("device") == device:
                self.statuses[device] = dict(self.status)
            self.device_events.setdefault(device, []).extend(self.events[before:])
            self._changed.notify_all()


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
    watcher = FleetWatcher(broker)
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
        assert hub.handled.wait_for(lambda: hub.rejected["OperationalError"] >= 1, WAIT_S)
    # still alive: a birth reaches the registry
    _fleet(rig, ["pi-2"])
    rig.hub_wait(
        "pi-2 registered online", lambda: bool((hub.store.device("pi-2") or {}).get("online"))
    )
    assert rig.hub_thread is not None and rig.hub_thread.is_alive()
