"""Rigs for tests: a device's buffer and sender on their own MQTT session (what the agent wires
up for delivery, without a model or sensors, so a test decides exactly which records go in), and
a hub with a whole agent, each on its own thread in this process."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from cloud_hub.broker.local import RunningBroker
from cloud_hub.harness.inprocess import hub_and_agent as running
from cloud_hub.hub import Hub
from cloud_hub.rollout.operations import enroll_device, init_hub
from edge_agent.agent import Agent
from edge_agent.mqtt.session import BrokerAddress, MqttSession
from edge_agent.protocol.topics import Topics
from edge_agent.uplink.buffer import Buffer
from edge_agent.uplink.delivery import Sender


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
        self.buffer = Buffer(state / "buffer.sqlite", boot=1)
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

    def record(self, n: int) -> None:
        for i in range(n):
            self.buffer.append("telemetry", {"count": i})
        self.sender.wake.set()

    def start(self) -> None:
        self.session.start()
        self.thread.start()

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
