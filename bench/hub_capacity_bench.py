"""How many devices one hub holds: devices each reporting once a second, stored exactly once and
confirmed, with the hub's CPU and memory side by side with a bare subscriber's, on SQLite and
on PostgreSQL, in one run.

- The hub: `edgehub serve` as its own process on a private mosquitto, its store SQLite in its
  home or a fresh PostgreSQL database (127.0.0.1:5432; skipped, saying so, where none answers).
- The load: a light generator, not agents. Each device's telemetry record (one small window
  body, its own (boot, seq)) is encoded before the clock starts; CONNECTIONS paho clients publish
  them at QoS 1, each device once a second, spread evenly over the second. A second client per
  connection counts the hub's confirmations (dev/+/ack).
- The bare subscriber: a paho client in its own process subscribed to the same telemetry topics,
  receiving and counting, nothing else; it runs beside the hub during the same load, so both
  see the same messages.
- Per fleet size: LEVEL_S seconds of load after a warm-up second; CPU is each process's user +
  system time over the level (from /proc), as a share of one core and of the machine; memory
  its resident set at the end. "Held" means every record sent was stored exactly once (counted
  in the database, not by the hub) and confirmed, within DRAIN_S after the load, and the hub's
  CPU stayed under 70% of the machine.

    .venv/bin/python bench/hub_capacity_bench.py [--sizes 500,1000,2000,5000] [--json]

DESIGN.md target: one hub on 2 cores with PostgreSQL: 5,000 devices reporting once a second,
stored exactly once, hub CPU under 70%.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from bench_machine import machine
from sqlalchemy import create_engine, text

from cloud_hub.broker.local import RunningBroker, start_mosquitto
from cloud_hub.harness.commands import edgehub_argv, serve_argv
from edge_agent.protocol.messages import Batch, Record, decode_confirm, encode

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 20
LEVEL_S = 15.0
DRAIN_S = 30.0
CPU_LIMIT = 0.70  # of the machine
TARGET_DEVICES = 5000
TARGET_WHAT = (
    "one hub on 2 cores, PostgreSQL store: devices each reporting once a second, stored "
    "exactly once"
)
TARGET_TEXT = (
    "5,000 devices (5x the load ThingsBoard reports for one 2-vCPU node), hub CPU under 70%"
)
PREFIX = "edgefleet"
CLK = os.sysconf("SC_CLK_TCK")
PG_SERVER = os.environ.get(
    "EDGEFLEET_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432"
)

BARE = """
import sys, threading, time
import paho.mqtt.client as mqtt
port, topic = int(sys.argv[1]), sys.argv[2]
got = [0]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bare-subscriber")
c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
def on_message(c, u, m): got[0] += 1
c.on_message = on_message
c.connect("127.0.0.1", port)
c.loop_start()
print("ready", flush=True)
for line in sys.stdin:
    print(got[0], flush=True)
"""


@dataclass
class Level:
    store: str
    devices: int
    sent: int
    stored: int
    distinct: int
    confirmed: int
    hub_cpu_core: float  # share of one core over the level
    hub_cpu_machine: float
    bare_cpu_core: float
    hub_rss_mb: float
    bare_rss_mb: float
    bare_received: int
    held: bool


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime, stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    return 0.0


@contextlib.contextmanager
def postgres_database() -> Iterator[str | None]:
    name = f"edgefleet_bench_{os.getpid()}"
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # no server: say so and skip that store
        print(f"PostgreSQL skipped: {str(exc).splitlines()[0]}", file=sys.stderr)
        yield None
        return
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Generator:
    """CONNECTIONS publishers, each for its share of the devices, and the confirmations."""

    def __init__(self, port: int, devices: list[str]) -> None:
        self.devices = devices
        self.confirmed: dict[str, int] = {}
        self._lock = threading.Lock()
        self.clients = []
        for i in range(CONNECTIONS):
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"load-{i}")
            c.max_inflight_messages_set(1000)
            c.max_queued_messages_set(0)
            c.on_message = self._on_ack
            c.connect("127.0.0.1", port)
            c.subscribe(f"{PREFIX}/dev/+/ack", qos=1) if i == 0 else None
            c.loop_start()
            self.clients.append(c)

    def _on_ack(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        confirm = decode_confirm(msg.payload)
        n = sum(last - first + 1 for _, first, last in confirm.spans)
        with self._lock:
            self.confirmed[confirm.device] = self.confirmed.get(confirm.device, 0) + n

    def run(self, seconds: float, first_seq: int) -> int:
        """Each device once a second for `seconds`; returns the records sent."""
        now = time.time()
        payloads = [
            [encode(Batch(d, (Record(1, s, now + s, {"count": s}),))) for d in self.devices]
            for s in range(first_seq, first_seq + int(seconds))
        ]
        topics = [f"{PREFIX}/dev/{d}/telemetry" for d in self.devices]
        n, sent = len(self.devices), 0
        start = time.monotonic()
        for second, batch in enumerate(payloads):
            for i in range(n):
                due = start + second + i / n
                delay = due - time.monotonic()
                if delay > 0.002:
                    time.sleep(delay)  # pacing the load, not synchronising a test
                self.clients[i % CONNECTIONS].publish(topics[i], batch[i], qos=1)
                sent += 1
        return sent

    def confirmed_total(self) -> int:
        with self._lock:
            return sum(self.confirmed.values())

    def close(self) -> None:
        for c in self.clients:
            c.loop_stop()
            c.disconnect()


def stored(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            row = c.execute(
                text(
                    "select count(*), count(distinct device || ':' || seq) from records "
                    "where kind = 'telemetry'"
                )
            ).one()
            return int(row[0]), int(row[1])
    finally:
        engine.dispose()


def run_level(broker: RunningBroker, home: Path, url: str, store: str, devices: int) -> Level:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEHUB_STORE": url}
    argv = serve_argv(home, "127.0.0.1", broker.port, "--http", "off")
    argv += ["--device-rate", "0", "--device-quota", "0"]
    hub = subprocess.Popen(
        [sys.executable, *argv],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=(home / "hub.log").open("w"),
        text=True,
    )
    bare = subprocess.Popen(
        [sys.executable, "-c", BARE, str(broker.port), f"{PREFIX}/dev/+/telemetry"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    gen = None
    try:
        assert hub.stdout is not None and bare.stdout is not None and bare.stdin is not None
        for line in hub.stdout:
            if "serving" in line:
                break
        bare.stdout.readline()
        names = [f"cap-{store}-{devices}-{i:05d}" for i in range(devices)]
        gen = Generator(broker.port, names)
        gen.run(1, 0)  # warm-up second
        hub0, bare0, t0 = cpu_seconds(hub.pid), cpu_seconds(bare.pid), time.monotonic()
        sent = devices + gen.run(LEVEL_S, 1)
        hub1, bare1, t1 = cpu_seconds(hub.pid), cpu_seconds(bare.pid), time.monotonic()
        deadline = time.monotonic() + DRAIN_S
        count = distinct = 0
        while time.monotonic() < deadline:
            count, distinct = stored(url)
            if count >= sent and gen.confirmed_total() >= sent:
                break
            time.sleep(0.5)  # polling the database the bench reads, not the code under test
        bare.stdin.write("?\n")
        bare.stdin.flush()
        received = int(bare.stdout.readline())
        wall = t1 - t0
        hub_core = (hub1 - hub0) / wall
        cores = os.cpu_count() or 1
        confirmed = gen.confirmed_total()
        return Level(
            store=store,
            devices=devices,
            sent=sent,
            stored=count,
            distinct=distinct,
            confirmed=confirmed,
            hub_cpu_core=round(hub_core, 3),
            hub_cpu_machine=round(hub_core / cores, 3),
            bare_cpu_core=round((bare1 - bare0) / wall, 3),
            hub_rss_mb=round(rss_mb(hub.pid), 1),
            bare_rss_mb=round(rss_mb(bare.pid), 1),
            bare_received=received,
            held=count == distinct == sent and confirmed >= sent and hub_core / cores < CPU_LIMIT,
        )
    finally:
        if gen is not None:
            gen.close()
        for proc in (hub, bare):
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.poll() is None:
                proc.kill()


def run_store(store: str, url: str | None, sizes: list[int], work: Path) -> list[Level]:
    levels = []
    for devices in sizes:
        home = work / f"{store}-{devices}"
        level_url = url or f"sqlite:///{home / 'hub.sqlite'}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEHUB_STORE": level_url}
        subprocess.run(
            [sys.executable, *edgehub_argv(home, "keys", "init")],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        if url is not None:  # a fresh table for each level
            engine = create_engine(url)
            with engine.begin() as c:
                c.execute(text("delete from records"))
            engine.dispose()
        broker = start_mosquitto(
            work / f"broker-{store}-{devices}", extra_config="max_connections -1\n"
        )
        try:
            level = run_level(broker, home, level_url, store, devices)
        finally:
            broker.stop()
        levels.append(level)
        print(
            f"{store:10} {devices:6d} devices: sent {level.sent}, stored {level.stored} "
            f"({level.distinct} distinct), confirmed {level.confirmed}, hub CPU "
            f"{level.hub_cpu_machine:.0%} of the machine ({level.hub_cpu_core:.2f} cores), "
            f"bare subscriber {level.bare_cpu_core:.2f} cores, hub RSS {level.hub_rss_mb} MB "
            f"-> {'held' if level.held else 'NOT held'}",
            file=sys.stderr,
        )
        if not level.held:
            said = (home / "hub.log").read_text(errors="replace").strip().splitlines()
            print("the hub's last words:\n  " + "\n  ".join(said[-5:]), file=sys.stderr)
            break
    return levels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="500,1000,2000,5000", help="fleet sizes, ascending")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    results: list[Level] = []
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp, postgres_database() as pg:
        work = Path(tmp)
        if pg is not None:
            results += run_store("postgresql", pg, sizes, work)
        results += run_store("sqlite", None, sizes, work)
    largest = {
        store: max((r.devices for r in results if r.store == store and r.held), default=0)
        for store in ("postgresql", "sqlite")
    }
    verdict = largest["postgresql"] >= TARGET_DEVICES
    out = {
        "machine": machine(),
        "levels": [asdict(r) for r in results],
        "largest_held": largest,
        "targets": [
            {
                "target": f"{TARGET_WHAT}: {TARGET_TEXT}",
                "subject": "largest fleet held on PostgreSQL (stored once, confirmed, CPU < 70%)",
                "value": largest["postgresql"],
                "limit": f">= {TARGET_DEVICES}",
                "verdict": "PASS" if verdict else "MISS",
            }
        ],
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for store, n in largest.items():
            print(f"largest fleet held, {store}: {n} devices")
        print(f"target {TARGET_DEVICES} devices on PostgreSQL: {'PASS' if verdict else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
