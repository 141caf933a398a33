"""Telemetry end to end (agent buffer -> QoS 1 -> mosquitto -> hub store) against bare paho QoS 0,
side by side in one run, on one private mosquitto.

- "Ours": N telemetry window records (the body `Pipeline.flush_window` builds, with resources)
  appended to the agent's `Buffer` (its files; group commit as base.toml's [buffer] sets it for
  the agent: see edge_agent.uplink.buffer for what survives a kill), drained by
  the agent's `Sender` over its `MqttSession` at QoS 1 (batch size and in-flight window from
  firmware_configs/base.toml, drain pacing off: the pipe's capacity), to the `Hub` running in a
  process of its own (bench/hub_process.py: a real hub is another process or machine, not a
  thread sharing the agent's interpreter lock), which stores each record once per (device,
  boot, seq) and confirms on dev/{id}/ack after its commit. The clock runs from the first
  append to the device holding the hub's confirmation of all N (its buffer empty, nothing in
  flight); then exactly once is checked by reading the hub's store (SQL): each of the N
  (boot, seq) stored once.
- "Bare": one paho client publishing the same N bodies, one small message each, at QoS 0
  (`loop_start`, publish in a loop), and a paho subscriber counting what arrives; the clock
  runs from the first publish to the last arrival (or the end of a quiet period if some were
  lost, reported as lost).

A third row, "ours, draining a backlog", is the same path with the records in the buffer before
the clock starts (a device back from an outage): the drain without the appends. The verdict is
the live figure's. Repetitions alternate (ours, bare, backlog, backlog, bare, ours, ...) and
medians are reported. The hub's ingest
rate (records/s it stores) is ours' figure; it is set against `telemetry.drain_rate` of
base.toml: how many devices draining at once at that rate one hub absorbs.

    .venv/bin/python bench/telemetry_bench.py          # table (about 30 s)
    .venv/bin/python bench/telemetry_bench.py --json   # the same figures as JSON

DESIGN.md target: at least 3x more records per second than bare paho QoS 0, QoS 1, zero loss.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from bench_machine import help_line, machine
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console
from rich.table import Table

from cloud_hub import jsoncodec
from cloud_hub.broker.local import RunningBroker, start_mosquitto
from cloud_hub.hub import check_bodies
from cloud_hub.store.database import Store
from cloud_hub.store.url import store_url
from edge_agent.mqtt.session import BrokerAddress, MqttSession
from edge_agent.protocol.messages import (
    Confirm,
    decode_batch,
    decode_confirm,
    encode,
    encode_records,
    spans_of,
)
from edge_agent.protocol.topics import Topics
from edge_agent.uplink.buffer import Buffer
from edge_agent.uplink.delivery import Sender
from firmware_configs import profile_path

RECORDS = 20_000  # per repetition and side
REPS = 3  # pairs, alternating order
WAIT_S = 120.0  # the longest one repetition may take
QUIET_S = 2.0  # bare: nothing more arrived for this long -> the rest is lost
TARGET_RATIO = 3.0
TARGET_LINE = (
    "telemetry end to end (agent buffer, broker, hub store, hub confirmation) vs bare paho QoS 0 "
    "publish of one small message each: at least 3x more records per second (batching), QoS 1, "
    "zero loss"
)
MIN_PIPED_WIDTH = 120

BODY = {  # a telemetry window as Window.to_record and the agent build it
    "window_s": 2.0,
    "model": {"name": "iris", "version": 3},
    "count": 400,
    "latency_ms": {"p50": 0.0312, "p95": 0.0521, "p99": 0.0733},
    "errors": {"garbage": 1},
    "predictions": {"0": 130, "1": 140, "2": 130},
    "resources": {"cpu_pct": 12.5, "rss_mb": 41.2, "rss_peak_mb": 44.0},
}


def base_section(name: str) -> dict[str, Any]:
    """A section of firmware_configs/base.toml: the agent's defaults."""
    return dict(tomllib.loads(profile_path("base").read_text(encoding="utf-8"))[name])


def base_telemetry() -> dict[str, Any]:
    return base_section("telemetry")


def ours(
    broker: RunningBroker, folder: Path, rep: int, n: int, backlog: bool = False
) -> dict[str, Any]:
    """Buffer -> Sender (QoS 1) -> mosquitto -> Hub store: records/s, and what the store holds.
    Live: the clock runs while the records are appended and drained at once. Backlog: the N
    records are in the buffer before the clock starts (a device back from an outage), and the
    clock runs from the sender's start until the hub holds them all."""
    settings, grouped = base_telemetry(), base_section("buffer")
    device = f"bench-{rep}-{'backlog' if backlog else 'live'}"
    home = folder / f"hub-{device}"
    home.mkdir()
    script = Path(__file__).with_name("hub_process.py")
    hub = subprocess.Popen(
        [sys.executable, str(script), str(home), broker.host, str(broker.port), f"edgehub-{rep}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert hub.stdout is not None and hub.stdin is not None
    if hub.stdout.readline().strip() != "ready":
        hub.kill()
        raise RuntimeError("the hub did not connect")
    buffer = Buffer(
        folder / f"dev-{device}" / "buffer",
        boot=1,
        max_rows=n + 1,
        group_rows=grouped["group_rows"],
        group_window_s=grouped["group_window_s"],
    )
    sender: Sender | None = None
    session = MqttSession(
        device,
        BrokerAddress(broker.host, broker.port),
        on_published=lambda mid: sender.on_published(mid) if sender else None,
        max_inflight=settings["max_inflight"] * 2,  # as the agent sets it
    )
    sender = Sender(
        buffer,
        session,
        Topics("edgefleet"),
        device,
        settings["batch_size"],
        settings["max_inflight"],
    )
    session.start()
    if not session.connected.wait(30):
        raise RuntimeError("the device session did not connect")
    halt = threading.Event()
    drain = threading.Thread(target=sender.run, args=(halt,), daemon=True)
    for _ in range(n if backlog else 0):
        buffer.append("telemetry", BODY)
    try:
        started = time.perf_counter()
        drain.start()
        for i in range(0 if backlog else n):
            buffer.append("telemetry", BODY)
            if i % settings["batch_size"] == 0:
                sender.wake.set()
        sender.wake.set()
        deadline = time.monotonic() + WAIT_S
        while not sender.idle():  # the device has the hub's confirmation of the last batch
            if time.monotonic() > deadline:
                raise RuntimeError(f"{buffer.pending()} records still unconfirmed")
            sender.wake.wait(0.01)
        took = time.perf_counter() - started
    finally:
        halt.set()
        sender.wake.set()
        drain.join(10)
        session.stop()
        buffer.close()
        hub.stdin.close()  # the hub stops
        hub.wait(30)
        hub.stdout.close()
    store = Store(store_url(home))  # what the hub committed, by SQL
    try:
        seqs = sorted(r.seq for r in store.records("telemetry", device))
    finally:
        store.engine.dispose()
    return {
        "records": n,
        "stored": len(seqs),
        "lost": n - len(set(seqs)),
        "duplicates": len(seqs) - len(set(seqs)),
        "exactly_once": seqs == list(range(n)),
        "seconds": took,
        "records_per_s": n / took,
    }


def bare(broker: RunningBroker, rep: int, n: int) -> dict[str, Any]:
    """paho publishing one small message each at QoS 0, a paho subscriber counting them."""
    topic = f"bench/bare/{rep}"
    payload = json.dumps(BODY).encode()
    arrived = 0
    last = 0.0
    changed = threading.Condition()
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, _m: mqtt.MQTTMessage) -> None:
        nonlocal arrived, last
        with changed:
            arrived += 1
            last = time.perf_counter()
            if arrived == n:
                changed.notify_all()

    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    sub.on_message = on_message
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.on_connect = lambda c, *_: c.subscribe(topic, 0)
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    pub.max_queued_messages_set(0)  # unlimited: paho queues what the socket cannot take yet
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    try:
        if not subscribed.wait(30):
            raise RuntimeError("the subscriber did not subscribe")
        started = time.perf_counter()
        for _ in range(n):
            pub.publish(topic, payload, qos=0)
        with changed:
            while arrived < n:
                before = arrived
                changed.wait(QUIET_S)
                if arrived == before:  # quiet: the rest is lost
                    break
        took = (last or time.perf_counter()) - started
    finally:
        pub.loop_stop()
        pub.disconnect()
        sub.loop_stop()
        sub.disconnect()
    return {
        "records": n,
        "arrived": arrived,
        "lost": n - arrived,
        "seconds": took,
        "records_per_s": arrived / took,
    }


def stages(folder: Path, n: int) -> list[dict[str, Any]]:
    """Each step of ours alone on the same N records, records/s: where the time goes."""
    grouped, batch_size = base_section("buffer"), base_telemetry()["batch_size"]
    buffer = Buffer(
        folder / "stages" / "buffer",
        boot=1,
        max_rows=n + 1,
        group_rows=grouped["group_rows"],
        group_window_s=grouped["group_window_s"],
    )
    timed: dict[str, float] = {}
    started = time.perf_counter()
    for _ in range(n):
        buffer.append("telemetry", BODY)
    buffer.flush()
    timed["device: Buffer.append (group commit) + flush"] = time.perf_counter() - started
    payloads, spans = [], []
    took = {"take": 0.0, "confirm": 0.0}
    while True:  # take and confirm in turn, as the sender's window does
        started = time.perf_counter()
        pending = buffer.take(batch_size, set())
        if not pending:
            break
        payloads.append(encode_records("stages", [p.wire() for p in pending]))  # as Sender does
        taken = time.perf_counter()
        buffer.confirm(spans_of(pending))
        took["take"] += taken - started
        took["confirm"] += time.perf_counter() - taken
    timed["device: Buffer.take + encode"] = took["take"]
    started = time.perf_counter()
    batches = [decode_batch(p, "telemetry", jsoncodec.loads) for p in payloads]  # as Hub does
    timed["hub: decode_batch"] = time.perf_counter() - started
    started = time.perf_counter()
    batches = [check_bodies("telemetry", b)[0] for b in batches]
    timed["hub: check_bodies (each body validated)"] = time.perf_counter() - started
    store = Store(store_url(folder / "stages"))
    started = time.perf_counter()
    for i in range(0, len(batches), 5):  # a few messages per transaction, as the hub takes them
        store.ingest([("telemetry", b) for b in batches[i : i + 5]])
    timed["hub: Store.ingest (SQLite)"] = time.perf_counter() - started
    started = time.perf_counter()
    confirms = [encode(Confirm("stages", spans_of(b.records))) for b in batches]
    timed["hub: confirm (spans + encode)"] = time.perf_counter() - started
    started = time.perf_counter()
    spans = [decode_confirm(payload).spans for payload in confirms]
    decoded = time.perf_counter() - started
    timed["device: decode_confirm + Buffer.confirm"] = decoded + took["confirm"]
    assert buffer.pending() == 0 and len(spans) == len(batches)
    buffer.close()
    rows = [{"stage": k, "records_per_s": round(n / v)} for k, v in timed.items()]
    for side, prefix in (("the device's", "device:"), ("the hub's", "hub:")):
        spent = sum(v for k, v in timed.items() if k.startswith(prefix))
        rows.append({"stage": f"{side} steps one after another", "records_per_s": round(n / spent)})
    rows.append(
        {
            "stage": "all of them one after another (one core's bound)",
            "records_per_s": round(n / sum(timed.values())),
        }
    )
    return rows


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "records_per_s": statistics.median(r["records_per_s"] for r in runs),
        "lost": sum(r["lost"] for r in runs),
        "runs": runs,
    }


def measure(n: int, reps: int) -> dict[str, Any]:
    logging.getLogger("cloud_hub").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="telemetry-bench-") as tmp:
        folder = Path(tmp)
        broker = start_mosquitto(folder / "broker")
        try:
            a: list[dict[str, Any]] = []
            b: list[dict[str, Any]] = []
            c: list[dict[str, Any]] = []  # ours, draining a backlog
            sides = ("ours", "bare", "backlog")
            for rep in range(reps):
                for side in sides if rep % 2 == 0 else reversed(sides):
                    if side == "bare":
                        b.append(bare(broker, rep, n))
                    else:
                        out = c if side == "backlog" else a
                        out.append(ours(broker, folder, rep, n, backlog=side == "backlog"))
        finally:
            broker.stop()
        parts = stages(folder, n)
    mine, theirs, drained = summary(a), summary(b), summary(c)
    ratio = mine["records_per_s"] / theirs["records_per_s"]
    drain_rate = base_telemetry()["drain_rate"]
    zero_loss = all(r["exactly_once"] for r in [*a, *c])
    verdict = "PASS" if ratio >= TARGET_RATIO and zero_loss else "MISS"
    return {
        "setup": {
            "records": n,
            "reps": reps,
            "batch_size": base_telemetry()["batch_size"],
            "max_inflight": base_telemetry()["max_inflight"],
            "group_rows": base_section("buffer")["group_rows"],
            "group_window_s": base_section("buffer")["group_window_s"],
            "body_bytes": len(json.dumps(BODY)),
        },
        "paths": [  # the headline figures as rows (for BENCHMARKS.md)
            {"path": label, "records_per_s": round(side["records_per_s"]), "lost": side["lost"]}
            for label, side in (
                ("ours, appended and drained live", mine),
                ("ours, draining a backlog", drained),
                ("bare paho QoS 0, one message each", theirs),
            )
        ],
        "ours": mine,
        "bare": theirs,
        "ratio": ratio,
        "backlog": drained,
        "backlog_ratio": drained["records_per_s"] / theirs["records_per_s"],
        "zero_loss": zero_loss,
        "drain_rate": drain_rate,
        "devices_draining_per_hub": mine["records_per_s"] / drain_rate if drain_rate else None,
        "target": {
            "line": TARGET_LINE,
            "ratio": TARGET_RATIO,
            "verdict": verdict,
        },
        "targets": [  # what make_benchmarks.py collects
            {
                "target": TARGET_LINE,
                "subject": "records/s ours / bare, appended and drained live, exactly once",
                "value": round(ratio, 2),
                "limit": f">= {TARGET_RATIO:g}",
                "verdict": verdict,
                "note": (
                    f"{TARGET_RATIO:g}x bare is {TARGET_RATIO * theirs['records_per_s']:,.0f} "
                    f"records/s; the steps of ours alone (stages) run at "
                    + ", ".join(f"{r['stage']} {r['records_per_s']:,}" for r in parts)
                ),
            }
        ],
        "stages": parts,
    }


def print_table(info: dict[str, Any], result: dict[str, Any]) -> None:
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, MIN_PIPED_WIDTH)
    cores = f"{info['cores']} cores" + (
        f" ({info['cores_usable']} usable)" if info["cores_usable"] != info["cores"] else ""
    )
    setup = result["setup"]
    console.print(f"[bold]machine[/bold]  {info['cpu']}, {cores}, Python {info['python']}")
    console.print(f"[bold]versions[/bold] paho-mqtt {info['paho-mqtt']}, mosquitto (private)")
    console.print(
        f"[bold]setup[/bold]    {setup['records']} records of {setup['body_bytes']} B per side "
        f"and repetition, {setup['reps']} interleaved pairs, medians; batch "
        f"{setup['batch_size']}, {setup['max_inflight']} in flight"
    )
    grid = Table(title="telemetry: agent buffer to hub store vs bare paho", title_justify="left")
    for title in ("path", "records/s", "lost", "per run (records/s)"):
        grid.add_column(title, justify="left" if title == "path" else "right", no_wrap=True)
    for label, side in (
        ("ours: Buffer -> Sender QoS 1 -> mosquitto -> Hub store", result["ours"]),
        ("ours, draining a backlog already buffered", result["backlog"]),
        ("bare: paho QoS 0, one message each -> subscriber", result["bare"]),
    ):
        grid.add_row(
            label,
            f"{side['records_per_s']:,.0f}",
            str(side["lost"]),
            ", ".join(f"{r['records_per_s']:,.0f}" for r in side["runs"]),
        )
    console.print(grid)
    parts = Table(title="each step of ours alone, same records", title_justify="left")
    parts.add_column("stage", no_wrap=True)
    parts.add_column("records/s", justify="right")
    for row in result["stages"]:
        parts.add_row(row["stage"], f"{row['records_per_s']:,}")
    console.print(parts)
    verdict = result["target"]["verdict"]
    style = "green" if verdict == "PASS" else "red"
    console.print(f"target: {TARGET_LINE}")
    console.print(
        f"  ratio {result['ratio']:.2f}x, exactly once at the hub: {result['zero_loss']} -> "
        f"[bold {style}]{verdict}[/bold {style}]"
    )
    console.print(f"  (a backlog drains at {result['backlog_ratio']:.2f}x bare)")
    if result["devices_draining_per_hub"] is not None:
        console.print(
            f"drain_rate {result['drain_rate']} records/s (base.toml): the hub's ingest absorbs "
            f"{result['devices_draining_per_hub']:.0f} devices draining at once"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=help_line(__doc__))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--records", type=int, default=RECORDS, help="records per repetition")
    parser.add_argument("--reps", type=int, default=REPS, help="interleaved pairs")
    args = parser.parse_args(argv)
    if args.records < 1 or args.reps < 1:
        parser.error("--records and --reps expected positive numbers")
    result = measure(args.records, args.reps)
    info = machine(**{"paho-mqtt": version("paho-mqtt")})
    if args.json:
        print(json.dumps({"machine": info, **result}, indent=2))
    else:
        print_table(info, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
