"""One process's share of a simulated fleet, for a bench that splits its devices over the
cores (bench/rollout_bench.py): `Simulation` agents against a hub already serving HOME.
Prints "connected" once every device is, and runs until its stdin closes.

    .venv/bin/python bench/fleet_shard.py HOME WORKDIR HOST PORT PREFIX DEVICES
"""

from __future__ import annotations

import sys
from pathlib import Path

from cloud_hub.harness.simulate import SimOptions, Simulation

CONNECT_S = 60.0


def main(argv: list[str]) -> int:
    home, workdir, host, port, prefix, devices = argv
    opts = SimOptions(devices=int(devices), rate=0.0, window_s=60.0, status_s=60.0, prefix=prefix)
    sim = Simulation(Path(home), Path(workdir), opts, (host, int(port)), embedded_hub=False)
    try:
        if not sim.wait_connected(CONNECT_S):
            print(f"not every device connected within {CONNECT_S:.0f} s", file=sys.stderr)
            return 1
        print("connected", flush=True)
        sys.stdin.read()  # until the bench closes it
    finally:
        sim.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
