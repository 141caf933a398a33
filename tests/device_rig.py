"""A device's buffer and sender on their own MQTT session: what the agent wires up for delivery,
without a model or sensors, so a test decides exactly which records go in."""

from __future__ import annotations

import threading
from pathlib import Path

from cloud_hub.broker import RunningBroker
from edge_agent.buffer import Buffer
from edge_agent.delivery import Sender
from edge_agent.mqtt_session import BrokerAddress, MqttSession
from edge_agent.protocol.topics import Topics


class Device:
    def __init__(
        self,
        broker: RunningBroker,
        state: Path,
        device_id: str,
        batch_size: int = 5,
        window: int = 4,
        confirm_timeout: float = 10.0,
    ) -> None:
        self.id = device_id
        self.buffer = Buffer(state / "buffer.sqlite", boot=1)
        self.session = MqttSession(
            device_id,
            BrokerAddress(broker.host, broker.port),
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
