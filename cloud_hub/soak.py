"""`make soak` (`python -m cloud_hub.soak --minutes N`): a simulated fleet, a few real agent
processes and the hub (its own process) on a private mosquitto for N minutes, under faults
drawn from a seeded schedule: the broker stopped and restarted, the hub and agents SIGKILLed
and restarted, malformed MQTT messages on device and hub topics, malformed sensor lines. Then
it checks the DESIGN.md promises and exits non-zero if one broke:

- telemetry exactly once: for every (device, boot) the hub holds seqs 0..n-1 without a gap,
  and for every simulated device exactly the records its agent accepted under this boot;
- every device runs a verified model (the one rolled out, installed through the agent's path);
- no stuck rollout (none still running at the end);
- bounded memory: the resident set of the fleet process does not keep growing.

The schedule and the checks are pure functions (tests/test_soak.py); the runner is I/O.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

FAULTS = ("broker-restart", "hub-kill", "agent-kill", "bad-mqtt", "bad-lines")
REAL_AGENTS = 3


@dataclass(frozen=True)
class Fault:
    at_s: float
    kind: str


def fault_schedule(seconds: float, seed: int, every_s: float = 8.0) -> list[Fault]:
    """Faults at random times about `every_s` apart inside (10%, 80%) of the run (the rest
    is for settling), each kind at least once when the run is long enough, in random order."""
    rng = random.Random(seed)
    start, end = seconds * 0.1, seconds * 0.8
    count = max(1, int((end - start) // every_s))
    kinds = [FAULTS[i % len(FAULTS)] for i in range(count)]
    rng.shuffle(kinds)
    times = sorted(rng.uniform(start, end) for _ in range(count))
    return [Fault(round(t, 2), k) for t, k in zip(times, kinds, strict=True)]


def gaps(stored: Mapping[tuple[str, int], Iterable[int]]) -> list[str]:
    """Every (device, boot) whose stored seqs are not exactly 0..n-1."""
    out = []
    for (device, boot), seqs in sorted(stored.items()):
        have = sorted(set(seqs))
        missing = sorted(set(range(have[-1] + 1)) - set(have)) if have else []
        if missing:
            out.append(f"{device} boot {boot}: seqs {missing[:5]} missing of 0..{have[-1]}")
    return out


def count_mismatches(accepted: dict[str, int], stored: dict[str, int]) -> list[str]:
    return [
        f"{d}: accepted {n} records, the hub stored {stored.get(d, 0)}"
        for d, n in sorted(accepted.items())
        if stored.get(d, 0) != n
    ]


def unverified(models: dict[str, str | None], expected: str) -> list[str]:
    return [
        f"{d} runs {m or 'no model'}, expected {expected}"
        for d, m in sorted(models.items())
        if m != expected
    ]


def memory_growth(
    samples_mb: list[float], slack_mb: float = 40.0, ratio: float = 1.5
) -> str | None:
    """None if memory is bounded: the last third's peak within `ratio` x the first third's
    peak plus `slack_mb`; else what grew."""
    if len(samples_mb) < 3:
        return None
    third = len(samples_mb) // 3
    first, last = max(samples_mb[:third]), max(samples_mb[-third:])
    if last > first * ratio + slack_mb:
        return f"RSS grew from a peak of {first:.0f} MB to {last:.0f} MB"
    return None


# ---- the runner (I/O) -------------------------------------------------------------------------
def _agent_toml(device: str, host: str, port: int) -> str:
    return (
        f'[device]\nid = "{device}"\nstate_dir = "state"\n[broker]\nhost = "{host}"\n'
        f"port = {port}\n[telemetry]\ninterval_s = 1.0\nstatus_interval_s = 1.0\n"
    )


class Proc:
    def __init__(self, name: str, argv: list[str], logs: Path) -> None:
        self.name, self.argv, self.logs = name, argv, logs
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.logs / f"{self.name}.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *self.argv], stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def run_soak(minutes: float, devices: int, seed: int, workdir: Path) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from rich.console import Console
    from rich.table import Table
    from sqlalchemy import select

    from cloud_hub import rollout as ro
    from cloud_hub.broker import start_mosquitto
    from cloud_hub.operations import enroll_device, init_hub, start_rollout
    from cloud_hub.simulate import (
        SIM_MODEL,
        SimOptions,
        Simulation,
        build_sim_model,
        hub_counts,
        rss_bytes,
    )
    from cloud_hub.storage import records

    console = Console()
    seconds = minutes * 60
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    init_hub(home)
    build_sim_model(home, workdir, SIM_MODEL)
    broker = start_mosquitto(workdir / "mosquitto")
    env_path = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = env_path + os.pathsep + os.environ.get("PYTHONPATH", "")
    hub = Proc(
        "hub",
        ["-m", "cloud_hub.cli", "--home", str(home), "serve", "--broker-port", str(broker.port)],
        logs,
    )
    agents = []
    for n in range(1, REAL_AGENTS + 1):
        device = f"real-{n:02d}"
        folder = workdir / device
        folder.mkdir()
        enroll_device(home, device, folder / "state")
        (folder / "agent.toml").write_text(_agent_toml(device, broker.host, broker.port))
        agents.append(
            Proc(
                device,
                ["-m", "edge_agent.cli", "run", "--config", str(folder / "agent.toml")],
                logs,
            )
        )
    hub.start()
    for a in agents:
        a.start()
    opts = SimOptions(devices=devices, rate=5.0, drifting=max(1, devices // 10), window_s=1.0)
    sim = Simulation(home, workdir / "sim", opts, (broker.host, broker.port), embedded_hub=False)
    rng = random.Random(seed)
    injected: dict[str, int] = {}
    rss: list[float] = []
    stop = threading.Event()
    try:
        sim.wait_connected(60)
        rid = start_rollout(home, SIM_MODEL, "10%").id  # its own hub: every device is ours
        schedule = fault_schedule(seconds, seed)
        console.print(
            f"soak: {seconds:.0f} s, {len(schedule)} faults, {devices} simulated + "
            f"{REAL_AGENTS} real agents, workdir {workdir}"
        )
        began = time.monotonic()
        for fault in schedule:
            while time.monotonic() - began < fault.at_s:
                rss.append(rss_bytes() / 1e6)
                stop.wait(min(1.0, fault.at_s - (time.monotonic() - began)))
            _inject(fault.kind, rng, broker, hub, agents, sim, mqtt, CallbackAPIVersion.VERSION2)
            injected[fault.kind] = injected.get(fault.kind, 0) + 1
            console.print(f"  {time.monotonic() - began:6.1f} s  {fault.kind}")
        while time.monotonic() - began < seconds:
            rss.append(rss_bytes() / 1e6)
            stop.wait(1.0)
        # settle: the rollout must finish with every part up
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            row = next(r for r in sim.store.rollouts() if r["id"] == rid)
            if row["state"] != ro.RUNNING:
                break
            stop.wait(1.0)
        models = {
            d.id: (d.agent.pipeline.active.ref if d.agent.pipeline.active else None)
            for d in sim.fleet.devices
        }
        final = sim.finish(ingest_timeout=120)
        for a in agents:  # a clean stop drains their buffers
            a.stop()
        import json as _json

        for a in agents:
            status = _json.loads((workdir / a.name / "state" / "status.json").read_text())
            m = status.get("model")
            models[a.name] = f"{m['name']}@{m['version']}" if m else None
            if status["stats"].get("buffered", 0):
                final["mismatched"][a.name] = f"{status['stats']['buffered']} still buffered"
        with sim.store.engine.connect() as conn:
            rows = conn.execute(select(records.c.device, records.c.boot, records.c.seq)).all()
        stored: dict[tuple[str, int], list[int]] = {}
        for device, boot, seq in rows:
            stored.setdefault((device, boot), []).append(seq)
        rollout_row = next(r for r in sim.store.rollouts() if r["id"] == rid)
        problems = {
            "telemetry exactly once": gaps(stored)
            + count_mismatches(
                {d.id: d.accepted() for d in sim.fleet.devices},
                hub_counts(sim.store, sim.fleet.boots),
            )
            + [f"{k}: {v}" for k, v in final["mismatched"].items() if k.startswith("real-")],
            "every device on a verified model": unverified(
                models, f"{SIM_MODEL.name}@{SIM_MODEL.version}"
            ),
            "no stuck rollout": []
            if rollout_row["state"] == ro.COMPLETED
            else [
                f"rollout {rid} is {rollout_row['state']}: {rollout_row['body'].get('halt_reason')}"
            ],
            "bounded memory": [p for p in [memory_growth(rss)] if p],
        }
    finally:
        sim.close()
        for a in agents:
            a.stop()
        hub.stop()
        broker.stop()
    table = Table(title="faults injected")
    table.add_column("fault")
    table.add_column("times")
    for kind in FAULTS:
        table.add_row(kind, str(injected.get(kind, 0)))
    console.print(table)
    verdicts = Table(title="promises")
    for col in ("promise", "held", "detail"):
        verdicts.add_column(col)
    for promise, found in problems.items():
        verdicts.add_row(promise, "yes" if not found else "NO", "; ".join(found[:3]) or "-")
    console.print(verdicts)
    console.print(
        f"records stored: {len(rows)}; RSS samples {min(rss or [0]):.0f}-{max(rss or [0]):.0f} MB"
    )
    return 1 if any(problems.values()) else 0


def _inject(kind, rng, broker, hub, agents, sim, mqtt, api):  # type: ignore[no-untyped-def]
    if kind == "broker-restart":
        broker.stop()
        threading.Event().wait(rng.uniform(1, 4))  # the outage itself
        broker.restart()
    elif kind == "hub-kill":
        hub.kill()
        hub.start()
    elif kind == "agent-kill":
        agent = rng.choice(agents)
        agent.kill()
        agent.start()
    elif kind == "bad-mqtt":
        c = mqtt.Client(callback_api_version=api)
        c.connect(broker.host, broker.port)
        c.loop_start()
        target = rng.choice(sim.fleet.ids)
        for topic, payload in [
            (f"edgefleet/dev/{target}/cmd", b"\xff\xfe"),
            (f"edgefleet/dev/{target}/cmd", b'{"v": 1, "kind": "format-disk"}'),
            (f"edgefleet/dev/{target}/xfer/chunk", b"{}"),
            (f"edgefleet/dev/{target}/telemetry", b"not json"),
            ("edgefleet/dev/ghost/events", b'{"v":1,"device":"x"}'),
        ]:
            c.publish(topic, payload, qos=1).wait_for_publish(10)
        c.loop_stop()
        c.disconnect()
    elif kind == "bad-lines":
        from cloud_hub.simulate import MALFORMED_LINES

        for d in rng.sample(sim.fleet.devices, k=min(5, len(sim.fleet.devices))):
            for line in MALFORMED_LINES:
                d.put(line)


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(
        prog="soak", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not 0 < args.minutes < 10_000 or not args.devices >= 1:
        print(
            f"soak: error: --minutes expected > 0 and --devices >= 1, "
            f"got {args.minutes} and {args.devices}",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="edgefleet-soak-") as tmp:
        return run_soak(args.minutes, args.devices, args.seed, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
