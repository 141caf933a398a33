"""Rigs for tests: a device's buffer and sender on their own MQTT session (what the agent wires
up for delivery, without a model or sensors, so a test decides exactly which records go in), a
hub with a whole agent, each on its own thread in this process, and that pair with a model
rolled out and healthy (`deployed`: the end-to-end tests of each input kind)."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cloud_hub.broker.local import RunningBroker
from cloud_hub.cli import app as hub_cli
from cloud_hub.harness.inprocess import hub_and_agent as running
from cloud_hub.hub import Hub
from cloud_hub.rollout.operations import (
    enroll_device,
    init_hub,
    publish_bundle,
    read_bundle_file,
    start_rollout,
)
from cloud_hub.store.database import typed
from edge_agent.agent import Agent
from edge_agent.mqtt.session import BrokerAddress, MqttSession
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.records import DriftReport, TelemetryWindow
from edge_agent.protocol.topics import Topics
from edge_agent.uplink.buffer import Buffer
from edge_agent.uplink.delivery import Sender
from tests.support.watch import WAIT_S, DeviceWatcher, LocalResults, close

D = TypeVar("D", bound="Deployed")


class Device:
    def __init__(
        self,
        broker: RunningBroker,
        state: Path,
        device_id: str,
        batch_size: int = 5,
        window: int = 4,
        confirm_timeout: float = 10.0,
        *,
        port: int | None = None,
        password: str | None = None,
    ) -> None:
        """On `broker`'s own port, anonymous; or on `port` of its host (a listener of a
        generated conf) as user `device_id` with `password`."""
        self.id = device_id
        self.buffer = Buffer(state / "buffer", boot=1)
        user = device_id if password is not None else None
        self.session = MqttSession(
            device_id,
            BrokerAddress(broker.host, port or broker.port, user, password),
            on_published=lambda mid: self.sender.on_published(mid),
        )
        self.sender = Sender(
            self.buffer,
            self.session,
            Topics("edgefleet"),
            device_id,
            batch_size,
            window,
            confirm_timeout=confirm_timeout,
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sender.run, args=(self.stop,), daemon=True)
        # notified after each confirmation the sender applies to the buffer (`wait_drained`)
        self.confirmed = threading.Condition()
        apply = self.buffer.confirm

        def confirm(*args: Any, **kwargs: Any) -> Any:
            out = apply(*args, **kwargs)
            with self.confirmed:
                self.confirmed.notify_all()
            return out

        self.buffer.confirm = confirm  # type: ignore[method-assign]

    def record(self, n: int) -> None:
        for i in range(n):
            self.buffer.append("telemetry", {"count": i})
        self.sender.wake.set()

    def start(self) -> None:
        self.session.start()
        self.thread.start()

    def wait_drained(self, timeout: float = WAIT_S) -> bool:
        """Until the hub confirmed every buffered record (False if `timeout` passed first)."""
        with self.confirmed:
            return self.confirmed.wait_for(lambda: self.buffer.pending() == 0, timeout)

    def close(self) -> None:
        self.stop.set()
        self.sender.wake.set()
        if self.thread.is_alive():
            self.thread.join(5)
        self.session.stop()
        self.buffer.close()


def enrolled(tmp_path: Path, broker: RunningBroker, device: str, more: str) -> tuple[Path, Path]:
    """A hub at tmp_path/hub and `device` enrolled with it, its device file at
    tmp_path/dev/agent.toml on `broker`, with `more` TOML after the [broker] table. Returns
    (the hub's home, the device file)."""
    home = tmp_path / "hub"
    init_hub(home)
    (tmp_path / "dev").mkdir()
    enroll_device(home, device, tmp_path / "dev" / "state")
    config = tmp_path / "dev" / "agent.toml"
    config.write_text(
        f'[device]\nid = "{device}"\nstate_dir = "state"\n'
        f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\n{more}'
    )
    return home, config


@contextlib.contextmanager
def hub_and_agent(home: Path, broker: RunningBroker, config: Path) -> Iterator[tuple[Hub, Agent]]:
    """The hub at `home` and the agent of the device file `config`, both running on `broker`
    until the block ends (the hub connected before it starts)."""
    with running(home, BrokerAddress(broker.host, broker.port), config) as both:
        yield both


@dataclasses.dataclass
class Deployed:
    """A hub and a whole agent on a private mosquitto, `model` rolled out to `device` and
    healthy: what the hub stored of it, and the hub's CLI. A test's own rig extends it."""

    home: Path
    hub: Hub
    agent: Agent
    results: LocalResults  # what the agent publishes on its local results topic
    device: str
    model: ModelRef
    folder: Path  # the device's: its agent.toml, state/ and the `folders` made beside them

    def extended(self, cls: type[D], **more: Any) -> D:
        """This rig as `cls`, a subclass with the fields `more` gives."""
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, **more)

    def wait(self, what: str, check: Callable[[], bool], timeout: float = WAIT_S) -> None:
        """Until `check()` holds; the hub notifies after each message it handles."""
        with self.hub.handled:
            assert self.hub.handled.wait_for(check, timeout), f"timed out waiting for {what}"

    def windows(self) -> list[TelemetryWindow]:
        """The device's telemetry windows of the model, as the hub stored them."""
        stored = typed(self.hub.store.records("telemetry", self.device), TelemetryWindow)
        return [w for _, w in stored if w.model == self.model]

    def drift(self) -> list[DriftReport]:
        return [r for _, r in typed(self.hub.store.records("drift", self.device), DriftReport)]

    def open_inputs(self) -> list[str]:
        """The names of the device's inputs open in its last status at the hub."""
        row = self.hub.store.device(self.device) or {}
        return [i["name"] for i in (row.get("stats") or {}).get("inputs", []) if i.get("open")]

    def cli(self, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
        """`edgehub --home HOME argv...`, which must succeed: what it printed."""
        capsys.readouterr()
        code = hub_cli.main(["--home", str(self.home), *argv])
        out, err = capsys.readouterr()
        assert code == 0, err
        return out


@contextlib.contextmanager
def deployed(
    broker: RunningBroker,
    tmp_path: Path,
    device: str,
    bundle: Path,
    more: str,
    folders: tuple[str, ...] = (),
) -> Iterator[Deployed]:
    """A hub and `device`'s agent (its file: `more` after [broker], with a [results] table;
    `folders` made beside it first), the bundle published and rolled out to it, until the
    block ends; yields once the model is healthy and the results publisher connected."""
    home, config = enrolled(tmp_path, broker, device, more)
    for folder in folders:
        (config.parent / folder).mkdir()
    model = read_bundle_file(bundle).card.model
    watcher = DeviceWatcher(broker, device)
    results = LocalResults(broker, device)
    try:
        with hub_and_agent(home, broker, config) as (hub, agent):
            watcher.wait("the agent's birth", lambda: watcher.status.get("online") is True)
            publish_bundle(home, bundle)
            start_rollout(home, model, "1")
            watcher.wait(f"{model} healthy", lambda: watcher.has_event("healthy", model.version))
            assert agent.results is not None and agent.results.wait_connected(WAIT_S)
            yield Deployed(home, hub, agent, results, device, model, config.parent)
    finally:
        watcher.stop()
        close(results.client)
