"""A `Hub` in this process (`new_hub`) running on its own thread until the halt `run_hub` returns
is called, and the device id and wait bound the ingest tests share."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloud_hub.broker.local import RunningBroker
from cloud_hub.hub import Hub
from edge_agent.mqtt.session import BrokerAddress

DEVICE = "pi-07"
WAIT_S = 30.0


def new_hub(home: Path, broker: RunningBroker, **kwargs: Any) -> Hub:
    home.mkdir(parents=True, exist_ok=True)
    return Hub(home, BrokerAddress(broker.host, broker.port), **kwargs)


def run_hub(hub: Hub) -> Callable[[], None]:
    stop = threading.Event()
    thread = threading.Thread(target=hub.run, args=(stop,), daemon=True)
    thread.start()
    assert hub.ready.wait(WAIT_S), "hub did not connect"

    def halt() -> None:
        stop.set()
        thread.join(WAIT_S)

    return halt
