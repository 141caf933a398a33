"""`edgehub simulate --devices N`: a simulated fleet against a broker and a hub, with a live
summary, a rollout to every simulated device and an exactly-once check of their telemetry."""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from rich.live import Live
from rich.table import Table

from cloud_hub import rollout as ro
from cloud_hub.cli_output import console, show
from cloud_hub.operations import start_rollout
from cloud_hub.simulate import SimOptions, Simulation, ensure_model, parse_broker
from cloud_hub.storage import Store, default_url
from edge_agent.errors import ConfigError
from edge_agent.protocol.messages import ModelRef

SIM_GROUP = "simulated"
AddCommand = Callable[..., argparse.ArgumentParser]


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def summary_table(snap: dict[str, Any], title: str) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("what")
    table.add_column("value")
    rollout = snap.get("rollout")
    rows: list[tuple[str, Any]] = [
        ("elapsed", f"{snap['elapsed_s']} s"),
        ("devices connected", f"{snap['connected']} / {snap['devices']}"),
        ("models running", ", ".join(f"{m}: {n}" for m, n in sorted(snap["models"].items()))),
    ]
    if rollout:
        rows.append(
            (
                "rollout",
                f"{rollout['id']} {rollout['model']} {rollout['state']}: "
                f"{rollout['healthy']} healthy, {rollout['sent']} sent, "
                f"{rollout['waiting']} waiting, {rollout['failed']} failed",
            )
        )
    rows += [
        ("sensor rows fed", snap["rows_fed"]),
        ("inferences", snap["inferences"]),
        ("rows rejected", snap["rejected"]),
        (
            "records acked by broker",
            ", ".join(f"{k}: {v}" for k, v in sorted(snap["sent"].items())),
        ),
        ("records buffered", snap["buffered"]),
        ("records stored at hub", snap["hub_records"]),
        (
            "drift (latest per device)",
            ", ".join(f"{k}: {v}" for k, v in sorted(snap["drift"].items())) or "-",
        ),
        ("threads / RSS", f"{snap['threads']} / {snap['rss_mb']} MB"),
    ]
    for key in ("accepted", "stored", "exactly_once"):
        if key in snap:
            rows.append((f"final: {key}", snap[key]))
    for what, value in rows:
        table.add_row(what, str(value))
    return table


def cmd_simulate(args: argparse.Namespace) -> int:
    opts = SimOptions(
        devices=args.devices,
        rate=args.rate,
        drifting=args.drift,
        shift=args.shift,
        bad_lines=args.bad_lines,
        window_s=args.window,
        prefix=args.prefix,
    )
    if not 0 < args.duration < math.inf:
        raise ConfigError(f"--duration: expected seconds > 0, got {args.duration}")
    broker = parse_broker(args.broker) if args.broker else None
    model = ModelRef.parse(args.model) if args.model else None
    home = Path(args.home)
    workdir = Path(args.workdir) if args.workdir else home / "simulated"
    chosen = ensure_model(home, workdir, model)
    sim = Simulation(home, workdir, opts, broker, embedded_hub=not args.external_hub)
    try:
        store = Store(default_url(home))
        for device in sim.fleet.ids:  # the rollout targets the simulated devices only
            store.label_device(device, group=SIM_GROUP)
        rid = start_rollout(home, chosen, args.canary, target=f"group:{SIM_GROUP}").id
        end = time.monotonic() + args.duration
        live_view = not args.json and console.is_terminal
        with Live(console=console, transient=True) if live_view else nullcontext() as live:
            while time.monotonic() < end:
                threading.Event().wait(min(1.0, max(0.0, end - time.monotonic())))
                if live is not None:
                    live.update(summary_table(sim.snapshot(rid), "simulated fleet"))
        running = sim.snapshot(rid)
        final = sim.finish()  # stops the fleet: connections and threads are gone after it
        snap = {**sim.snapshot(rid), **final}
        snap.update({k: running[k] for k in ("connected", "threads", "fds", "rss_mb")})
    finally:
        sim.close()
    if args.json:
        print(json.dumps(snap, indent=2, default=str))
    else:
        show(summary_table(snap, f"simulated fleet: {opts.devices} devices"))
    problems = []
    if snap["rollout"]["state"] != ro.COMPLETED:
        problems.append(f"rollout {rid} is {snap['rollout']['state']}, not completed")
    if not snap["exactly_once"]:
        problems.append(f"records stored != accepted for {len(snap['mismatched'])} devices")
    for problem in problems:
        print(f"edgehub: simulate: {problem}", file=sys.stderr)
    return 1 if problems else 0


def register(sub: Any, add: AddCommand) -> None:
    sp = add(
        sub, "simulate", cmd_simulate, "a simulated fleet of N devices against a hub", json_out=True
    )
    sp.add_argument("--devices", type=_count, required=True, help="simulated devices")
    sp.add_argument("--broker", help="mqtt://HOST:PORT (default: start a private mosquitto)")
    sp.add_argument(
        "--external-hub",
        action="store_true",
        help="a hub already serves --home on that broker; do not start one",
    )
    sp.add_argument("--rate", type=_number, default=2.0, help="sensor rows per second per device")
    sp.add_argument("--drift", type=_count, default=0, help="devices whose inputs drift")
    sp.add_argument("--shift", type=_number, default=3.0, help="the drift, in reference std devs")
    sp.add_argument(
        "--bad-lines", type=_number, default=0.0, help="share of malformed sensor lines"
    )
    sp.add_argument("--window", type=_number, default=2.0, help="telemetry window, seconds")
    sp.add_argument("--duration", type=_number, default=30.0, help="seconds to run")
    sp.add_argument(
        "--model",
        help="NAME@VERSION to roll out (default: the newest published, or a small iris model)",
    )
    sp.add_argument("--canary", default="100%", help="first wave: a count or a percent")
    sp.add_argument("--prefix", default="sim", help="device ids are PREFIX-0001 ...")
    sp.add_argument(
        "--workdir",
        help="the simulated devices' state folders, kept between runs so each run is a new "
        "boot (default: HOME/simulated)",
    )
