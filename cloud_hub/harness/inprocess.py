"""A hub and an agent on threads of this process (the loop demo, and tests that want both)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cloud_hub.hub import Hub
from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.errors import TransportError
from edge_agent.mqtt.session import BrokerAddress

CONNECT_S = 30.0


@contextmanager
def hub_and_agent(home: Path, broker: BrokerAddress, config: Path) -> Iterator[tuple[Hub, Agent]]:
    """The hub at `home` and the agent of the device file `config`, both running on `broker`
    until the block ends (the hub connected before it starts)."""
    stop = threading.Event()
    hub = Hub(home, broker)
    agent = Agent(load_config(config))
    hub_thread = threading.Thread(target=hub.run, args=(stop,), daemon=True)
    agent_thread = threading.Thread(target=agent.run_forever, daemon=True)
    agent.start()
    hub_thread.start()
    agent_thread.start()
    try:
        if not hub.ready.wait(CONNECT_S):
            raise TransportError(f"the hub did not connect to {broker.host}:{broker.port}")
        yield hub, agent
    finally:  # the agent first: it drains its buffer to the hub, which confirms while it runs
        agent.stop_event.set()
        agent_thread.join(timeout=15)
        stop.set()
        hub_thread.join(timeout=15)
