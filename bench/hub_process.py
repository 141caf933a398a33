"""A hub in a process of its own, for the benches: a real hub is another process (another
machine), not a thread sharing the agent's interpreter lock.

    python bench/hub_process.py HOME HOST PORT CLIENT_ID

Prints "ready" once connected to the broker; stops (cleanly: the session closed, the store
committed) when its stdin closes.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

from cloud_hub.hub import Hub
from edge_agent.mqtt.session import BrokerAddress

CONNECT_WAIT_S = 30.0


def main(argv: list[str]) -> int:
    home, host, port, client_id = Path(argv[0]), argv[1], int(argv[2]), argv[3]
    logging.basicConfig(level=logging.WARNING)
    hub = Hub(home, BrokerAddress(host, port), client_id=client_id)
    stop = threading.Event()
    thread = threading.Thread(target=hub.run, args=(stop,), daemon=True)
    thread.start()
    if not hub.ready.wait(CONNECT_WAIT_S):
        print("the hub did not connect", file=sys.stderr)
        return 1
    print("ready", flush=True)
    sys.stdin.read()  # until the bench closes it
    stop.set()
    thread.join(CONNECT_WAIT_S)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
