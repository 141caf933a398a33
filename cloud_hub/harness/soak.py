"""`make soak` (`python -m cloud_hub.harness.soak --minutes N`): a simulated fleet, a few real agent
processes and the hub (its own process) for N minutes on a private mosquitto with a small queue
(50 messages for an offline client, state saved every 30 minutes as stock mosquitto does), under
faults drawn from a seeded schedule. Quick ones about every 8 s: the broker stopped and
restarted, the hub and agents SIGKILLed and restarted, malformed MQTT messages on device and hub
topics, malformed sensor lines, a device flooding its telemetry topic. Long ones a few times a
run: the hub away for minutes, the broker killed with -9 while the hub is down, the broker away
longer than the reconnect backoff's ceiling, a real agent's disk full for 30 s. Then it checks
the DESIGN.md promises and exits non-zero if one broke:

- telemetry exactly once: for every (device, boot) the hub holds seqs 0..n-1 without a gap,
  and for every simulated device exactly the records its agent accepted under this boot;
- every device runs a verified model (the one rolled out, installed through the agent's path);
- no stuck rollout (none still running at the end);
- bounded memory: the resident set of the fleet process does not keep growing;
- nothing from outside kills an agent (a full disk included);
- every simulated agent reconnects within 12 s of the broker's return after a long outage;
- a flood costs only the flooder: no other device has anything refused at the hub.

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
from pathlib import Path

from cloud_hub.harness.commands import agent_argv, serve_argv
from edge_agent.protocol.frozen import frozen

# quick faults, drawn about every 8 s
FAULTS = ("broker-restart", "hub-kill", "agent-kill", "bad-mqtt", "bad-lines", "flood")
# long faults, each a few times a run at spread-out moments
LONG_FAULTS = ("hub-away", "broker-kill-hub-down", "broker-away-long", "disk-full")
REAL_AGENTS = 3
SMALL_QUEUE = "max_queued_messages 50\nautosave_interval 1800\n"  # stock-like: kill -9 loses all
FLOODER = "flood-x"  # not an agent: it never resends, so it is left out of the checks
RECONNECT_S = 12.0  # devices back within this long of the broker's return (ceiling 10 s)


@frozen
class Fault:
    at_s: float
    kind: str


def fault_schedule(seconds: float, seed: int, every_s: float = 8.0) -> list[Fault]:
    """Faults at random times inside (10%, 80%) of the run (the rest is for settling): quick
    ones about `every_s` apart, each kind at least once when the run is long enough, in random
    order; and each long fault once per 10 minutes (at least once), spread over the run."""
    rng = random.Random(seed)
    start, end = seconds * 0.1, seconds * 0.8
    count = max(1, int((end - start) // every_s))
    kinds = [FAULTS[i % len(FAULTS)] for i in range(count)]
    rng.shuffle(kinds)
    times = sorted(rng.uniform(start, end) for _ in range(count))
    quick = [Fault(round(t, 2), k) for t, k in zip(times, kinds, strict=True)]
    rounds = max(1, int(seconds // 600))
    slots = len(LONG_FAULTS) * rounds
    long = [LONG_FAULTS[i % len(LONG_FAULTS)] for i in range(slots)]
    rng.shuffle(long)
    span = (end - start) / slots
    spread = [
        Fault(round(start + span * (i + rng.uniform(0.2, 0.8)), 2), k) for i, k in enumerate(long)
    ]
    return sorted(quick + spread, key=lambda f: f.at_s)


def long_fault_s(kind: str, seconds: float) -> float:
    """How long a long fault lasts in a run of `seconds`: the hub away for minutes (a tenth of
    the run, 60 s to 180 s); the broker away for 75 s, far past the reconnect backoff's ceiling;
    a disk full for 30 s."""
    if kind in ("hub-away", "broker-kill-hub-down"):
        return min(180.0, max(60.0, seconds / 10))
    return 75.0 if kind == "broker-away-long" else 30.0


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

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def run_soak(minutes: float, devices: int, seed: int, workdir: Path) -> int:
    from rich.console import Console
    from rich.table import Table
    from sqlalchemy import select

    from cloud_hub.broker.local import start_mosquitto
    from cloud_hub.harness.simulate import (
        SIM_MODEL,
        SimOptions,
        Simulation,
        build_sim_model,
        hub_counts,
        rss_bytes,
    )
    from cloud_hub.rollout import engine as ro
    from cloud_hub.rollout.operations import enroll_device, init_hub, start_rollout
    from cloud_hub.store.database import records

    console = Console()
    seconds = minutes * 60
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    init_hub(home)
    build_sim_model(home, workdir, SIM_MODEL)
    broker = start_mosquitto(workdir / "mosquitto", extra_config=SMALL_QUEUE)
    env_path = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = env_path + os.pathsep + os.environ.get("PYTHONPATH", "")
    hub = Proc("hub", serve_argv(home, broker.host, broker.port), logs)
    agents = []
    disk: Path | None = None
    for n in range(1, REAL_AGENTS + 1):
        device = f"real-{n:02d}"
        folder = workdir / device
        folder.mkdir()
        if n == 1:  # its state on a small disk of its own, to fill and free
            disk = _small_disk(folder / "state")
        enroll_device(home, device, folder / "state")
        (folder / "agent.toml").write_text(_agent_toml(device, broker.host, broker.port))
        agents.append(
            Proc(
                device,
                agent_argv(folder / "agent.toml"),
                logs,
            )
        )
    hub.start()
    for a in agents:
        a.start()
    opts = SimOptions(devices=devices, rate=5.0, drifting=max(1, devices // 10), window_s=1.0)
    sim = Simulation(home, workdir / "sim", opts, (broker.host, broker.port), embedded_hub=False)
    faults = Injector(random.Random(seed), broker, hub, agents, sim, disk, seconds)
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
            note = faults.inject(fault.kind)
            injected[fault.kind] = injected.get(fault.kind, 0) + 1
            console.print(f"  {time.monotonic() - began:6.1f} s  {fault.kind}  {note}")
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
        faults.deaths += [f"{a.name} was dead at the end" for a in agents if not a.alive()]
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
        stored = {k: v for k, v in stored.items() if k[0] != FLOODER}
        rollout_row = next(r for r in sim.store.rollouts() if r["id"] == rid)
        refused = sim.store.refusals()
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
            "nothing from outside kills an agent": faults.deaths,
            "reconnect within seconds": [
                f"back after {t:.1f} s" for t in faults.reconnect_s if t > RECONNECT_S
            ],
            "a flood costs only the flooder": [
                f"{d} refused: {r}" for d, r in refused.items() if d != FLOODER
            ],
        }
    finally:
        sim.close()
        for a in agents:
            a.stop()
        hub.stop()
        broker.stop()
        if disk is not None:
            subprocess.run(["umount", "-l", str(disk)], check=False)
    table = Table(title="faults injected")
    table.add_column("fault")
    table.add_column("times")
    for kind in (*FAULTS, *LONG_FAULTS):
        table.add_row(kind, str(injected.get(kind, 0)))
    console.print(table)
    accepted = sum(d.accepted() for d in sim.fleet.devices)
    console.print(
        f"simulated devices: {accepted} records accepted, {final['stored']} stored; "
        f"real agents: {sum(len(v) for (d, _), v in stored.items() if d.startswith('real-'))} "
        f"stored, none left buffered: {not any(k.startswith('real-') for k in final['mismatched'])}"
    )
    console.print(
        f"flood: {faults.flooded} batches sent, refused at the hub: {refused.get(FLOODER, {})}; "
        f"reconnects after the broker's return: "
        f"{', '.join(f'{t:.1f} s' for t in faults.reconnect_s) or 'none measured'}; "
        f"disk filled {faults.filled} times"
    )
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


def _small_disk(folder: Path) -> Path | None:
    """A 16 MB tmpfs mounted on `folder` (needs root), or None where it cannot be mounted."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    return folder if done.returncode == 0 else None


class Injector:
    """Does one fault at a time and notes what it measured."""

    def __init__(  # type: ignore[no-untyped-def]
        self, rng: random.Random, broker, hub: Proc, agents: list[Proc], sim, disk, seconds: float
    ) -> None:
        self.rng, self.broker, self.hub, self.agents, self.sim = rng, broker, hub, agents, sim
        self.disk: Path | None = disk
        self.seconds = seconds
        self.reconnect_s: list[float] = []
        self.deaths: list[str] = []
        self.flooded = 0
        self.filled = 0
        self._wait = threading.Event().wait

    def inject(self, kind: str) -> str:
        """Do `kind`; returns a note for the log. An agent found dead is noted and restarted."""
        for agent in self.agents:
            if not agent.alive():
                self.deaths.append(f"{agent.name} died before the {kind}")
                agent.start()
        if kind == "broker-restart":
            self.broker.stop()
            self._wait(self.rng.uniform(1, 4))  # the outage itself
            self.broker.restart()
        elif kind == "hub-kill":
            self.hub.kill()
            self.hub.start()
        elif kind == "agent-kill":
            agent = self.rng.choice(self.agents)
            agent.kill()
            agent.start()
        elif kind == "bad-mqtt":
            self._bad_mqtt()
        elif kind == "bad-lines":
            from cloud_hub.harness.simulate import MALFORMED_LINES

            fleet = self.sim.fleet.devices
            for d in self.rng.sample(fleet, k=min(5, len(fleet))):
                for line in MALFORMED_LINES:
                    d.put(line)
        elif kind == "flood":
            return self._flood(10.0)
        elif kind == "hub-away":
            self.hub.kill()
            self._wait(long_fault_s(kind, self.seconds))
            self.hub.start()
        elif kind == "broker-kill-hub-down":
            self.hub.kill()
            self._wait(long_fault_s(kind, self.seconds) / 2)
            self.broker.kill()  # what it queued for the hub since its last save is gone
            self.broker.restart()
            self._wait(long_fault_s(kind, self.seconds) / 2)
            self.hub.start()
        elif kind == "broker-away-long":
            self.broker.stop()
            self._wait(long_fault_s(kind, self.seconds))
            self.broker.restart()
            return self._reconnected()
        elif kind == "disk-full":
            return self._fill_disk(long_fault_s(kind, self.seconds))
        return ""

    def _reconnected(self) -> str:
        back = time.monotonic()
        devices = self.sim.fleet.devices
        while time.monotonic() - back < 120:
            if all(d.agent.session.connected.is_set() for d in devices):
                break
            self._wait(0.1)
        took = time.monotonic() - back
        self.reconnect_s.append(took)
        up = sum(d.agent.session.connected.is_set() for d in devices)
        return f"{up} of {len(devices)} simulated agents back after {took:.1f} s"

    def _fill_disk(self, hold_s: float) -> str:
        if self.disk is None:
            return "skipped: no small disk (mounting a tmpfs needs root)"
        filler = self.disk / "filler"
        with filler.open("wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:  # ENOSPC: full
                pass
        self.filled += 1
        self._wait(hold_s)
        agent = self.agents[0]  # the one whose state is on that disk
        if not agent.alive():
            self.deaths.append(f"{agent.name} died on a full disk")
        filler.unlink()
        if not agent.alive():
            agent.start()
        return f"{agent.name}'s disk full for {hold_s:.0f} s"

    def _bad_mqtt(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        c.connect(self.broker.host, self.broker.port)
        c.loop_start()
        target = self.rng.choice(self.sim.fleet.ids)
        for topic, payload in [
            (f"edgefleet/dev/{target}/cmd", b"\xff\xfe"),
            (f"edgefleet/dev/{target}/cmd", b'{"v": 1, "kind": "format-disk"}'),
            (f"edgefleet/dev/{target}/xfer/chunk", b"{}"),
            (f"edgefleet/dev/{target}/ack", b'{"v":1,"device":"x","spans":[[1,0,9]]}'),
            (f"edgefleet/dev/{target}/telemetry", b"not json"),
            ("edgefleet/dev/ghost/events", b'{"v":1,"device":"x"}'),
        ]:
            c.publish(topic, payload, qos=1).wait_for_publish(10)
        c.loop_stop()
        c.disconnect()

    def _flood(self, seconds: float) -> str:
        """A device publishing its own telemetry as fast as the broker takes it."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from edge_agent.protocol.messages import Batch, Record, encode

        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=FLOODER)
        c.max_queued_messages_set(500)
        c.connect(self.broker.host, self.broker.port)
        c.loop_start()
        sent, until = 0, time.monotonic() + seconds
        while time.monotonic() < until:
            batch = Batch(FLOODER, tuple(Record(0, sent * 20 + i, 0.0, {}) for i in range(20)))
            if c.publish(f"edgefleet/dev/{FLOODER}/telemetry", encode(batch)).rc == 0:
                sent += 1
            else:
                self._wait(0.001)  # paho's queue is full
        c.loop_stop()
        c.disconnect()
        self.flooded += sent
        return f"{sent} batches in {seconds:.0f} s"


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(
        prog="soak", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the working folder and logs")
    args = parser.parse_args(argv)
    if not 0 < args.minutes < 10_000 or not args.devices >= 1:
        print(
            f"soak: error: --minutes expected > 0 and --devices >= 1, "
            f"got {args.minutes} and {args.devices}",
            file=sys.stderr,
        )
        return 2
    if args.keep:
        workdir = Path(tempfile.mkdtemp(prefix="edgefleet-soak-"))
        print(f"soak: keeping {workdir} (logs in {workdir / 'logs'})")
        return run_soak(args.minutes, args.devices, args.seed, workdir)
    with tempfile.TemporaryDirectory(prefix="edgefleet-soak-") as tmp:
        return run_soak(args.minutes, args.devices, args.seed, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
