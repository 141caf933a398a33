"""Rollout of a 1 MB and a 20 MB model to 100 simulated devices on loopback, against the
broker's raw throughput for the same bytes, side by side in one run.

"Ours": a private mosquitto, the hub (`edgehub serve`, its own process, as a hub runs) and 100
simulated devices (`cloud_hub.harness.simulate.Simulation`: real agents, each on its own MQTT
connection, verifying with TUF, pulling 64 KiB chunks, installing through ModelStore and
passing the health gate), split over one process a core (bench/fleet_shard.py), as `edgehub
simulate` splits a large fleet (--external-hub --prefix): in one process the 100 agents took
turns on one interpreter lock, about 1.1 of the 2 cores, where real devices each have a
processor of their own. The clock runs from `start_rollout` (one wave: --canary 100%) until
the rollout has ended in the hub's database: completed when every device reported `healthy`.

"Bare": the same mosquitto; one paho client publishes the same bundle bytes, cut into the same
64 KiB chunks, at QoS 1 to each of 100 paho subscribers on its own topic (the same fan-out,
unicast per device); the clock runs until every subscriber holds every byte.

    .venv/bin/python bench/rollout_bench.py [--devices 100] [--sizes 1,20] [--json]

DESIGN.md target checked: rollout of a 1 MB model to 100 simulated devices on loopback under
5 s; 20 MB to 100 devices completes.
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
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from bench_machine import help_line, machine
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from cloud_hub.broker.local import RunningBroker, start_mosquitto
from cloud_hub.harness.simulate import rollout_of, store_of
from cloud_hub.harness.soak import Proc
from cloud_hub.rollout import engine as ro
from cloud_hub.rollout.operations import init_hub, publish_bundle, start_rollout
from cloud_hub.store.database import Store
from converters.pipeline import build_bundle
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.transfer import CHUNK_SIZE

TARGET_WHAT = "rollout of a 1 MB model to 100 simulated devices on loopback"
TARGET_LINE = f"{TARGET_WHAT}: under 5 s"
TARGET_LARGE_LINE = f"{TARGET_WHAT}: 20 MB to 100 devices completes"
TARGET_S = 5.0
MB = 1_000_000
TIMEOUT_S = 600.0
SHARDS = max(1, os.cpu_count() or 1)  # processes the simulated devices are split over
HERE = Path(__file__).resolve().parent
POLL_S = 0.05  # the rollout's state in the hub's database, read this often


def hidden_for(megabytes: float) -> tuple[int, int]:
    """Two equal hidden layers whose float32 weights come to about `megabytes`."""
    width = int((megabytes * MB / 4) ** 0.5)
    return width, width


def build(folder: Path, megabytes: float) -> Path:
    """An MLP on iris, not quantized (its float32 weights are the size), as a bundle."""
    x, y = load_iris(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPClassifier(hidden_layer_sizes=hidden_for(megabytes), max_iter=3, random_state=0)
        est.fit(x, y)
    out = folder / f"mlp-{megabytes:g}mb.zip"
    build_bundle(est, x, y, name=f"mlp{megabytes:g}mb", version=1, out=out, quantize="none")
    return out


def serve(home: Path, broker: RunningBroker, logs: Path) -> Proc:
    """`edgehub serve` in its own process, as a hub runs (not sharing the fleet's GIL)."""
    hub = Proc(
        "hub",
        [
            *("-m", "cloud_hub.cli.app", "--home", str(home), "serve"),
            *("--broker-host", broker.host, "--broker-port", str(broker.port), "--http", "off"),
        ],
        logs,
    )
    hub.start()
    return hub


def check_alive(hub: Proc) -> None:
    assert hub.proc is not None
    if hub.proc.poll() is not None:
        raise RuntimeError(
            f"edgehub serve exited with status {hub.proc.returncode}; see {hub.logs}/hub.log"
        )


def wait_registered(store: Store, hub: Proc, devices: int) -> None:
    """Until the hub process has stored every device's birth: it is up and ingesting."""
    deadline = time.perf_counter() + 60
    while sum(bool(d["online"]) for d in store.devices()) < devices:
        check_alive(hub)
        if time.perf_counter() > deadline:
            raise RuntimeError("the hub did not register the simulated devices within 60 s")
        time.sleep(POLL_S)


@contextlib.contextmanager
def fleet(home: Path, workdir: Path, broker: RunningBroker, devices: int) -> Iterator[list[int]]:
    """`devices` simulated devices in SHARDS processes (bench/fleet_shard.py), started one
    after another (each enrolls its devices with the hub), each connected before the next."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for k in range(SHARDS):
            n = devices // SHARDS + (k < devices % SHARDS)
            argv = [str(home), str(workdir / f"shard-{k}"), broker.host, str(broker.port)]
            proc = subprocess.Popen(
                [sys.executable, str(HERE / "fleet_shard.py"), *argv, f"b{k}", str(n)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "connected":
                raise RuntimeError(f"simulated devices, process {k}: did not connect")
        yield [p.pid for p in procs]
    finally:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def ours(folder: Path, broker: RunningBroker, bundle: Path, devices: int) -> dict[str, Any]:
    home = folder / f"home-{bundle.stem}"
    init_hub(home)
    model, _ = publish_bundle(home, bundle)
    store = store_of(home)
    hub = serve(home, broker, folder)
    try:
        with fleet(home, folder / f"devices-{bundle.stem}", broker, devices) as pids:
            wait_registered(store, hub, devices)
            return {**roll(home, store, hub, model), "peak_rss_mb": peak_rss_mb(pids)}
    finally:
        hub.stop()


def roll(home: Path, store: Store, hub: Proc, model: ModelRef) -> dict[str, Any]:
    """Start the rollout and wait for its end in the hub's database."""
    start = time.perf_counter()
    started_at = time.time()  # device events carry wall-clock times
    rid = start_rollout(home, model, "100%").id  # the hub process picks it up
    while rollout_of(store, rid).state == ro.RUNNING:
        check_alive(hub)
        if time.perf_counter() - start > TIMEOUT_S:
            raise RuntimeError(f"rollout {rid} not done in {TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)  # another process's database: nothing to wait on but its rows
    seconds = time.perf_counter() - start
    r = rollout_of(store, rid)
    ids = [d["id"] for d in store.devices()]
    events = [
        e for e in store.records_since("events", ids, started_at) if e.body.get("rollout") == rid
    ]
    verified = [e.ts - started_at for e in events if e.body.get("event") == "verified"]
    failed = [e for e in events if e.body.get("event") in ("rejected", "rolled-back")]
    return {
        "seconds": seconds,
        "state": r.state,
        "healthy": ro.progress(r)["healthy"],
        "verified": len(verified),
        "last_verified_s": round(max(verified), 2) if verified else None,
        "failed": len(failed),
        "why": f"{r.halt_reason}; first device failure: {failed[0].body.get('reason')}"
        if failed
        else r.halt_reason,
    }


def peak_rss_mb(pids: list[int]) -> float:
    """The processes' resident high-water marks, added up (MB)."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024
    return round(total / MB, 1)


def bare(broker: RunningBroker, data: bytes, devices: int) -> dict[str, Any]:
    """One publisher, `devices` subscribers, the same bytes in the same chunks at QoS 1."""
    chunks = [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]
    remaining = threading.Semaphore(0)
    subs = []
    for n in range(devices):
        got = [0]
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"bare-{n}")

        def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage, got: list[int] = got) -> None:
            got[0] += len(msg.payload)
            if got[0] == len(data):
                remaining.release()

        subscribed = threading.Event()
        c.on_message = on_message
        c.on_subscribe = lambda *_a, ev=subscribed: ev.set()
        c.connect(broker.host, broker.port)
        c.loop_start()
        c.subscribe(f"bare/{n}/chunk", qos=1)
        if not subscribed.wait(30):
            raise RuntimeError(f"subscriber {n} got no SUBACK")
        subs.append(c)
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bare-pub")
    pub.max_inflight_messages_set(100)  # what the hub's MqttSession uses
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    start = time.perf_counter()
    for n in range(devices):
        for chunk in chunks:
            pub.publish(f"bare/{n}/chunk", chunk, qos=1)
    for _ in range(devices):
        if not remaining.acquire(timeout=TIMEOUT_S):
            raise RuntimeError("bare fan-out did not complete")
    seconds = time.perf_counter() - start
    for c in [*subs, pub]:
        c.loop_stop()
        c.disconnect()
    return {"seconds": seconds}


def measure(sizes: list[float], devices: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="rollout-bench-") as tmp:
        folder = Path(tmp)
        for mb in sizes:
            bundle = build(folder, mb)
            size = bundle.stat().st_size
            # each phase on a fresh mosquitto: nothing queued from the other one
            with start_mosquitto(folder / f"mosquitto-ours-{mb:g}") as broker:
                o = ours(folder, broker, bundle, devices)
            with start_mosquitto(folder / f"mosquitto-bare-{mb:g}") as broker:
                b = bare(broker, bundle.read_bytes(), devices)
            total = size * devices
            rows.append(
                {
                    "model_mb": mb,
                    "bundle_bytes": size,
                    "devices": devices,
                    "ours_s": round(o["seconds"], 2),
                    "bare_s": round(b["seconds"], 2),
                    "ours_MBps": round(total / o["seconds"] / MB, 1),
                    "bare_MBps": round(total / b["seconds"] / MB, 1),
                    "ours_over_bare": round(o["seconds"] / b["seconds"], 2),
                    "state": o["state"],
                    "healthy": o["healthy"],
                    "verified": o["verified"],  # transfers complete and checked
                    "last_verified_s": o["last_verified_s"],
                    "failed": o["failed"],  # devices that rejected the model or rolled back
                    "why": o["why"],  # the halt reason and the first device failure, if any
                    "peak_rss_mb": o["peak_rss_mb"],
                }
            )
    return rows


def outcome(r: dict[str, Any]) -> str:
    """One row in words: how far the rollout got, and what the bare fan-out took."""
    text = (
        f"{r['model_mb']:g} MB to {r['devices']} devices: {r['state']} after {r['ours_s']} s, "
        f"{r['healthy']} healthy, {r['verified']} transfers verified"
    )
    if r["state"] != ro.COMPLETED:
        text += f", {r['failed']} failed ({r['why']})"
    return text + f"; bare fan-out of the same bytes {r['bare_s']} s"


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if r["model_mb"] == 1 and r["devices"] == 100:
            ok = r["state"] == ro.COMPLETED and r["ours_s"] < TARGET_S
            out.append(
                {
                    "target": TARGET_LINE,
                    "subject": f"{r['bundle_bytes']} byte bundle to {r['devices']} devices (s)",
                    "value": r["ours_s"],
                    "limit": f"< {TARGET_S:g}",
                    "verdict": "PASS" if ok else "MISS",
                    "note": outcome(r),
                }
            )
        if r["model_mb"] == 20 and r["devices"] == 100:
            done = r["state"] == ro.COMPLETED
            out.append(
                {
                    "target": TARGET_LARGE_LINE,
                    "subject": f"{r['bundle_bytes']} byte bundle to {r['devices']} devices: "
                    f"{r['state']} after (s)",
                    "value": r["ours_s"],
                    "limit": "completes",
                    "verdict": "PASS" if done else "MISS",
                    "note": outcome(r),
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=help_line(__doc__))
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--sizes", default="1,20", help="model sizes in MB, comma separated")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = [float(s) for s in args.sizes.split(",")]
    info = machine()
    rows = measure(sizes, args.devices)
    report = {"bench": "rollout", "machine": info, "rows": rows, "targets": verdicts(rows)}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    console = Console()
    console.print(f"[bold]machine[/bold] {info['cpu']}, {info['cores']} cores")
    table = Table(title=f"rollout to {args.devices} devices vs bare paho fan-out, same bytes")
    for col in rows[0] if rows else []:
        table.add_column(col)
    for r in rows:
        table.add_row(*[str(v) for v in r.values()])
    console.print(table)
    for v in report["targets"]:
        console.print(f"{v['target']}: {v['value']} s -> {v['verdict']}", markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
