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
from typing import TYPE_CHECKING, Any

from rich.live import Live
from rich.table import Table

from cloud_hub.cli.args import number
from cloud_hub.cli.output import console, show
from edge_agent.errors import ConfigError
from edge_agent.protocol.messages import ModelRef

if TYPE_CHECKING:  # the fleet, the hub and its store load when the command runs
    from cloud_hub.harness.simulate import SimOptions, Simulation
    from cloud_hub.store.database import Store

SIM_GROUP = "simulated"
FORGET_WAIT_S = 10.0
PROGRESS_S = 5.0  # a progress line this often when not on a terminal
AddCommand = Callable[..., argparse.ArgumentParser]


_count = number(int, "a whole number")
_number = number(float, "a number", finite="a finite number")


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


def progress_line(snap: dict[str, Any], duration: float) -> str:
    """One line of a running simulation, for a log or a pipe."""
    r = snap.get("rollout") or {}
    rollout = f"rollout {r['id']} {r['state']} ({r['healthy']} healthy), " if r else ""
    return (
        f"simulate: {snap['elapsed_s']:.0f} s of {duration:g}: {snap['connected']}/"
        f"{snap['devices']} devices connected, {rollout}{snap['inferences']} inferences, "
        f"{snap['hub_records']} records stored"
    )


def cmd_simulate(args: argparse.Namespace) -> int:
    from cloud_hub.harness.simulate import SimOptions, parse_broker
    from cloud_hub.home_lock import own_home
    from cloud_hub.rollout.operations import open_repo

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
    open_repo(home)  # no hub here: say so before anything starts
    # its own hub needs the home to itself; with --external-hub, that hub (serve) holds it
    owning = nullcontext() if args.external_hub else own_home(home, "edgehub simulate")
    with owning:
        return _simulate(args, opts, home, broker, model)


def _simulate(
    args: argparse.Namespace,
    opts: SimOptions,
    home: Path,
    broker: tuple[str, int] | None,
    model: ModelRef | None,
) -> int:
    from cloud_hub.harness.simulate import Simulation, ensure_model
    from cloud_hub.rollout import engine as ro
    from cloud_hub.rollout.operations import start_rollout
    from cloud_hub.store.database import Store
    from cloud_hub.store.url import store_url

    workdir = Path(args.workdir) if args.workdir else home / "simulated"
    chosen = ensure_model(home, workdir, model)
    store = Store(store_url(home))
    sim = Simulation(home, workdir, opts, broker, embedded_hub=not args.external_hub)
    try:
        for device in sim.fleet.ids:  # the rollout targets the simulated devices only
            store.label_device(device, group=SIM_GROUP)
        # the simulated devices only; a rollout someone else started keeps running
        target = f"group:{SIM_GROUP}"
        rid = start_rollout(home, chosen, args.canary, target=target, supersede=False).id
        end = time.monotonic() + args.duration
        live_view = not args.json and console.is_terminal
        # not on a terminal: a plain line now and then (on stderr under --json)
        lines_to = None if live_view else (sys.stderr if args.json else sys.stdout)
        next_line = time.monotonic()
        with Live(console=console, transient=True) if live_view else nullcontext() as live:
            while time.monotonic() < end:
                threading.Event().wait(min(1.0, max(0.0, end - time.monotonic())))
                if live is not None:
                    live.update(summary_table(sim.snapshot(rid), "simulated fleet"))
                elif lines_to is not None and time.monotonic() >= next_line:
                    print(
                        progress_line(sim.snapshot(rid), args.duration), file=lines_to, flush=True
                    )
                    next_line = time.monotonic() + PROGRESS_S
        running = sim.snapshot(rid)
        final = sim.finish()  # stops the fleet: connections and threads are gone after it
        snap = {**sim.snapshot(rid), **final}
        snap.update({k: running[k] for k in ("connected", "threads", "fds", "rss_mb")})
    finally:
        sim.close()
        forget(store, sim)
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


def forget(store: Store, sim: Simulation) -> None:
    """The simulated devices leave the registry when the run ends (their records stay). A hub
    in another process may still be storing their last words: wait (a while) until it has
    seen each go offline, so it does not register one again after it is removed."""
    fleet = getattr(sim, "fleet", None)
    if fleet is None:
        return
    ids = fleet.ids
    deadline = time.monotonic() + FORGET_WAIT_S
    while sim.hub is None and time.monotonic() < deadline:
        rows = {d["id"]: d for d in store.devices() if d["id"] in set(ids)}
        if not any(row["online"] for row in rows.values()):
            break
        sim.pause()
    store.remove_devices(ids)


def register(sub: Any, add: AddCommand) -> None:
    sp = add(
        sub,
        "simulate",
        cmd_simulate,
        "a simulated fleet of N devices against a hub; they leave the registry when it ends",
        json_out=True,
    )
    sp.add_argument("--devices", type=_count, required=True, help="simulated devices")
    sp.add_argument("--broker", help="mqtt://HOST:PORT (default: start a private mosquitto)")
    sp.add_argument(
        "--external-hub",
        action="store_true",
        help="a hub already serves --home on that broker (`edgehub serve`); do not start one. "
        "Without it, simulate runs its own hub and needs --home to itself",
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
