"""How many devices one hub holds: devices each reporting once a second, stored exactly once and
confirmed, with the hub's CPU and memory side by side with a bare subscriber's, on PostgreSQL
(one hub worker, and two splitting the ingest) and on SQLite, in one run.

- The hub: `edgehub serve` as its own process on a private mosquitto, its store SQLite in its
  home or a fresh PostgreSQL database (127.0.0.1:5432; skipped, saying so, where none answers).
  With two workers: `edgehub serve --share capacity` and `edgehub serve --share capacity
  --ingest-only` on one home and store; the broker splits the messages between them (MQTT
  shared subscription), their CPU and memory are added up.
- The load: a light generator, not agents (bench/mqtt_load.py). Each device's telemetry record
  (one small window body, its own (boot, seq)) is encoded, with its MQTT packet, before the
  clock starts; CONNECTIONS plain sockets send them at QoS 1, each device once a second, spread
  over the second in TICKS steps (the PUBACKs only counted). One more connection counts the
  hub's confirmations (dev/+/ack): the distinct (device, boot, seq) confirmed. (With a paho
  client per connection, the generator took 0.7 of a core at 5,000 devices, from the hub.)
- The bare subscriber: a paho client in its own process subscribed to the same telemetry topics,
  receiving and counting, nothing else. It takes the same load (the same generator, the same
  fleet, packets encoded the same way) for BARE_S seconds on the level's broker before the hub
  starts, not beside the hub: beside it, it took 0.4-0.5 of a core at 5,000 devices and the
  broker sent every message twice, a quarter of the two cores the hub is measured on going to
  the measuring (a hub's machine runs no such process). Its CPU a second is a rate, so the
  shorter run measures it as well.
- Per fleet size: LEVEL_S seconds of load after a warm-up second; CPU is each process's user +
  system time over the level (from /proc), as a share of one core and of the machine (the
  broker's and the generator's too: they share the machine with the hub); memory its resident
  set at the end; the 1-minute load average at the end (the machine may be shared); the hub's
  CPU from the load's start until all was stored, a record. "Held" means every record sent
  was stored exactly once (counted in the database with SQL, not by the hub) and every one
  confirmed to the generator within CATCH_UP_S after the load (the hub kept pace, not caught
  up later), the generator kept its own pace (at most LAG_S late), and the hub's CPU stayed
  under 70% of the machine. A fleet size not held is run again once (a shared machine has bad
  seconds); it counts as held if either run held.

    .venv/bin/python bench/hub_capacity_bench.py [--sizes 500,2000,5000,8000,10000] [--workers 1,2]
        [--stores postgresql,sqlite] [--level-s 15] [--json]

DESIGN.md target: one hub on 2 cores with PostgreSQL: 5,000 devices reporting once a second,
stored exactly once, hub CPU under 70%.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from bench_machine import help_line, machine
from mqtt_load import Publishers, Subscriber
from sqlalchemy import create_engine, text

from cloud_hub.broker.config import MAX_QUEUED_MESSAGES
from cloud_hub.broker.local import RunningBroker, start_mosquitto
from cloud_hub.harness.commands import edgehub_argv, serve_argv
from edge_agent.protocol.messages import Batch, Record, decode_confirm, encode

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 20
TICKS = 100  # a second's load goes out in this many steps
LEVEL_S = 15.0
BARE_S = 5.0  # seconds of the same load for the bare subscriber, before the hub starts
BARE_FIRST_SEQ = 1_000_000  # its records' seqs (no hub stores them: it is not running yet)
DRAIN_S = 30.0  # how long the bench waits to count what was stored and confirmed
CATCH_UP_S = 2.0  # held: all stored and confirmed within this after the load (it kept pace)
LAG_S = 1.0  # how late the generator may finish its last second and still count as keeping pace
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
SHARE = "capacity"
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
    workers: int
    devices: int
    run: int  # 1, or 2 for the repeat of a size not held the first time
    sent: int
    stored: int
    distinct: int
    confirmed: int  # distinct (device, boot, seq) the generator saw confirmed
    late_s: float  # how late the generator finished its last second
    caught_up_s: float | None  # from the load's end until all was stored and confirmed
    hub_cpu_core: float  # share of one core over the level, all workers
    hub_cpu_machine: float
    bare_cpu_core: float
    broker_cpu_core: float
    generator_cpu_core: float
    database_cpu_core: float  # the PostgreSQL server processes serving the hub (0 on SQLite)
    hub_cpu_us_per_record: float  # hub CPU from the load's start until all was stored, a record
    hub_rss_mb: float  # all workers
    bare_rss_mb: float
    bare_sent: int  # in its own run, before the hub's
    bare_received: int
    loadavg_1min: float  # at the end of the level
    held: bool


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime, stime


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
    """CONNECTIONS publishing connections, each for its share of the devices, and one that
    notes which records the hub confirmed; plain sockets with packets encoded before the clock
    starts (bench/mqtt_load.py), so the generator takes little of the CPU the hub is measured on."""

    def __init__(self, port: int, devices: list[str]) -> None:
        self.devices = devices
        self._confirmed: set[tuple[str, int, int]] = set()
        self._lock = threading.Lock()
        self.acks = Subscriber(port, "load-acks", f"{PREFIX}/dev/+/ack", self._on_ack)
        self.publishers = Publishers(port, CONNECTIONS)

    def _on_ack(self, payload: bytes) -> None:
        confirm = decode_confirm(payload)
        keys = [
            (confirm.device, boot, seq)
            for boot, first, last in confirm.spans
            for seq in range(first, last + 1)
        ]
        with self._lock:
            self._confirmed.update(keys)

    def _ticks(self, first_seq: int, seconds: int) -> list[list[list[bytes]]]:
        """Per second, per tick: each connection's packets of the devices due in that tick
        (device i of n is due i / n into the second), joined."""
        now, n = time.time(), len(self.devices)
        topics = [f"{PREFIX}/dev/{d}/telemetry" for d in self.devices]
        out = []
        for s in range(first_seq, first_seq + seconds):
            ticks: list[list[list[bytes]]] = [
                [[] for _ in range(CONNECTIONS)] for _ in range(TICKS)
            ]
            for i, device in enumerate(self.devices):
                c = i % CONNECTIONS
                body = encode(Batch(device, (Record(1, s, now + s, {"count": s}),)))
                ticks[i * TICKS // n][c].append(self.publishers.packet(c, topics[i], body))
            out.append([[b"".join(p) for p in tick] for tick in ticks])
        return out

    def run(self, seconds: float, first_seq: int) -> tuple[int, float]:
        """Each device once a second for `seconds`; returns the records sent and how late the
        last tick went out."""
        planned = self._ticks(first_seq, int(seconds))
        send = self.publishers.send
        start = time.monotonic()
        for second, ticks in enumerate(planned):
            for t, tick in enumerate(ticks):
                delay = start + second + t / TICKS - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing the load, not synchronising a test
                for c, data in enumerate(tick):
                    if data:
                        send(c, data)
        late = time.monotonic() - (start + len(planned) - 1 / TICKS)
        return len(planned) * len(self.devices), max(0.0, late)

    def confirmed_total(self) -> int:
        with self._lock:
            return len(self._confirmed)

    def close(self) -> None:
        self.publishers.close()
        self.acks.close()


def backends(url: str) -> list[int]:
    """The process ids of the PostgreSQL server processes connected to the bench's database
    (the hub's; none on SQLite)."""
    if not url.startswith("postgresql"):
        return []
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            q = text(
                "select pid from pg_stat_activity "
                "where datname = current_database() and pid <> pg_backend_pid()"
            )
            return [int(pid) for (pid,) in c.execute(q)]
    finally:
        engine.dispose()


def cpu_of(pids: list[int]) -> float:
    """CPU seconds of these processes (those gone or not readable count 0)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def stored(url: str) -> tuple[int, int]:
    """Telemetry rows in the database, and distinct (device, boot, seq) among them."""
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            row = c.execute(
                text(
                    "select count(*), count(distinct device || ':' || boot || ':' || seq) "
                    "from records where kind = 'telemetry'"
                )
            ).one()
            return int(row[0]), int(row[1])
    finally:
        engine.dispose()


def start_hubs(home: Path, url: str, port: int, workers: int) -> list[subprocess.Popen[str]]:
    """`edgehub serve` (one, or `workers` of one --share group, all but the first
    --ingest-only), each started once the one before says it is serving."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEHUB_STORE": url}
    hubs = []
    for n in range(workers):
        argv = serve_argv(home, "127.0.0.1", port, "--http", "off")
        argv += ["--device-rate", "0", "--device-quota", "0"]
        if workers > 1:
            argv += ["--share", SHARE, "--client-id", f"edgehub-{n}"]
            argv += ["--ingest-only"] if n > 0 else []
        hub = subprocess.Popen(
            [sys.executable, *argv],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=(home / f"hub-{n}.log").open("w"),
            text=True,
        )
        hubs.append(hub)
        assert hub.stdout is not None
        for line in hub.stdout:
            if "serving" in line:
                break
    return hubs


def run_level(
    broker: RunningBroker,
    broker_pid: int,
    home: Path,
    url: str,
    store: str,
    workers: int,
    devices: int,
    run: int,
) -> Level:
    gen = Generator(
        broker.port, [f"cap-{store}-{workers}-{devices}-{run}-{i:05d}" for i in range(devices)]
    )
    hubs: list[subprocess.Popen[str]] = []
    try:
        bare = measure_bare(broker, gen)
        hubs = start_hubs(home, url, broker.port, workers)
        gen.run(1, 0)  # warm-up second
        pids = [h.pid for h in hubs]
        database = backends(url)
        stored0 = stored(url)[0]
        hub0, db0 = cpu_of(pids), cpu_of(database)
        broker0, gen0 = cpu_seconds(broker_pid), own_cpu_seconds()
        t0 = time.monotonic()
        sent, late = gen.run(LEVEL_S, 1)
        sent += devices
        hub1, db1 = cpu_of(pids), cpu_of(database)
        broker1, gen1 = cpu_seconds(broker_pid), own_cpu_seconds()
        wall = time.monotonic() - t0
        ended = time.monotonic()
        count = distinct = 0
        caught_up = None
        while time.monotonic() < ended + DRAIN_S:
            count, distinct = stored(url)
            if count >= sent and gen.confirmed_total() >= sent:
                caught_up = time.monotonic() - ended
                break
            time.sleep(0.2)  # polling the database the bench reads, not the code under test
        hub_drained = cpu_of(pids)
        hub_core = (hub1 - hub0) / wall
        cores = os.cpu_count() or 1
        confirmed = gen.confirmed_total()
        return Level(
            store=store,
            workers=workers,
            devices=devices,
            run=run,
            sent=sent,
            stored=count,
            distinct=distinct,
            confirmed=confirmed,
            late_s=round(late, 2),
            caught_up_s=None if caught_up is None else round(caught_up, 1),
            hub_cpu_core=round(hub_core, 3),
            hub_cpu_machine=round(hub_core / cores, 3),
            bare_cpu_core=bare.cpu_core,
            broker_cpu_core=round((broker1 - broker0) / wall, 3),
            database_cpu_core=round((db1 - db0) / wall, 3),
            hub_cpu_us_per_record=round((hub_drained - hub0) / max(1, count - stored0) * 1e6),
            generator_cpu_core=round((gen1 - gen0) / wall, 3),
            hub_rss_mb=round(sum(rss_mb(p) for p in pids), 1),
            bare_rss_mb=bare.rss_mb,
            bare_sent=bare.sent,
            bare_received=bare.received,
            loadavg_1min=round(os.getloadavg()[0], 2),
            held=count == distinct == sent
            and confirmed == sent
            and caught_up is not None
            and caught_up <= CATCH_UP_S
            and late <= LAG_S
            and hub_core / cores < CPU_LIMIT,
        )
    finally:
        gen.close()
        for proc in hubs:
            stop(proc)


@dataclass
class Bare:
    sent: int
    received: int
    cpu_core: float
    rss_mb: float


def measure_bare(broker: RunningBroker, gen: Generator) -> Bare:
    """The bare subscriber alone under the level's load: BARE_S seconds after a warm-up
    second; what it received once the broker has delivered all (it counts, we wait)."""
    bare = subprocess.Popen(
        [sys.executable, "-c", BARE, str(broker.port), f"{PREFIX}/dev/+/telemetry"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert bare.stdout is not None and bare.stdin is not None
        bare.stdout.readline()
        sent = gen.run(1, BARE_FIRST_SEQ)[0]
        cpu0, t0 = cpu_seconds(bare.pid), time.monotonic()
        sent += gen.run(BARE_S, BARE_FIRST_SEQ + 1)[0]
        cpu_core = (cpu_seconds(bare.pid) - cpu0) / (time.monotonic() - t0)
        received, ended = 0, time.monotonic()
        while time.monotonic() < ended + DRAIN_S:
            bare.stdin.write("?\n")
            bare.stdin.flush()
            received = int(bare.stdout.readline())
            if received >= sent:
                break
            time.sleep(0.2)  # polling its count, as the hub's is polled in the database
        return Bare(sent, received, round(cpu_core, 3), round(rss_mb(bare.pid), 1))
    finally:
        stop(bare)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    if proc.poll() is None:
        proc.kill()


def one_level(
    store: str, url: str | None, workers: int, devices: int, run: int, work: Path
) -> Level:
    home = work / f"{store}-{workers}w-{devices}-{run}"
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
    broker_dir = work / f"broker-{home.name}"
    # the queue a client may fall behind by, as `edgehub broker-config` writes it (the test
    # brokers' 10,000 would drop what a hub or the confirmation counter lags behind by)
    config = f"max_connections -1\nmax_queued_messages {MAX_QUEUED_MESSAGES}\n"
    broker = start_mosquitto(
        broker_dir, extra_config=config + f"pid_file {broker_dir / 'mosquitto.pid'}\n"
    )
    try:
        pid = int((broker_dir / "mosquitto.pid").read_text())
        level = run_level(broker, pid, home, level_url, store, workers, devices, run)
    finally:
        broker.stop()
    print(
        f"{store:10} {workers} worker{'s' if workers > 1 else ' '} {devices:6d} devices "
        f"(run {run}): sent {level.sent}, stored {level.stored} ({level.distinct} distinct), "
        f"confirmed {level.confirmed}, caught up {level.caught_up_s} s after the load, "
        f"generator {level.late_s:.1f} s late; CPU in cores: hub "
        f"{level.hub_cpu_core:.2f} ({level.hub_cpu_machine:.0%} of the machine, "
        f"{level.hub_cpu_us_per_record} us a record), bare subscriber alone "
        f"{level.bare_cpu_core:.2f} ({level.bare_received} of {level.bare_sent} received), "
        f"broker {level.broker_cpu_core:.2f}, database {level.database_cpu_core:.2f}, "
        f"generator {level.generator_cpu_core:.2f}; RSS hub {level.hub_rss_mb} MB, bare "
        f"{level.bare_rss_mb} MB; load average {level.loadavg_1min} "
        f"-> {'held' if level.held else 'NOT held'}",
        file=sys.stderr,
        flush=True,
    )
    if not level.held:
        for log in sorted(home.glob("hub-*.log")):
            said = log.read_text(errors="replace").strip().splitlines()
            if said:
                print(f"{log.name}, last words:\n  " + "\n  ".join(said[-5:]), file=sys.stderr)
    return level


def run_store(
    store: str, url: str | None, workers: int, sizes: list[int], work: Path
) -> list[Level]:
    """Each size in turn until one is not held twice."""
    levels = []
    for devices in sizes:
        level = one_level(store, url, workers, devices, 1, work)
        levels.append(level)
        if not level.held:
            level = one_level(store, url, workers, devices, 2, work)
            levels.append(level)
            if not level.held:
                break
    return levels


def main(argv: list[str] | None = None) -> int:
    global LEVEL_S
    parser = argparse.ArgumentParser(description=help_line(__doc__))
    parser.add_argument(
        "--sizes", default="500,2000,5000,8000,10000", help="fleet sizes, ascending"
    )
    parser.add_argument(
        "--workers", default="1,2", help="hub workers to try on PostgreSQL (SQLite: one)"
    )
    parser.add_argument("--stores", default="postgresql,sqlite")
    parser.add_argument("--level-s", type=float, default=LEVEL_S, help="seconds of load a size")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    LEVEL_S = args.level_s
    sizes = [int(s) for s in args.sizes.split(",")]
    stores = args.stores.split(",")
    results: list[Level] = []
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp, postgres_database() as pg:
        work = Path(tmp)
        if pg is not None and "postgresql" in stores:
            for workers in [int(w) for w in args.workers.split(",")]:
                results += run_store("postgresql", pg, workers, sizes, work)
        if "sqlite" in stores:
            results += run_store("sqlite", None, 1, sizes, work)
    largest = {
        f"{store}, {workers} worker{'s' if workers > 1 else ''}": max(
            (r.devices for r in results if (r.store, r.workers) == (store, workers) and r.held),
            default=0,
        )
        for store, workers in dict.fromkeys((r.store, r.workers) for r in results)
    }
    one = max(
        (r.devices for r in results if (r.store, r.workers) == ("postgresql", 1) and r.held),
        default=0,
    )
    verdict = one >= TARGET_DEVICES
    out = {
        "machine": machine(),
        "levels": [asdict(r) for r in results],
        "largest_held": [{"store": k, "devices": v} for k, v in largest.items()],
        "targets": [
            {
                "target": f"{TARGET_WHAT}: {TARGET_TEXT}",
                "subject": "largest fleet one hub held on PostgreSQL (stored once, confirmed, "
                "CPU < 70%)",
                "value": one,
                "limit": f">= {TARGET_DEVICES}",
                "verdict": "PASS" if verdict else "MISS",
                "note": "; ".join(f"{k}: {v} devices held" for k, v in largest.items()),
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
