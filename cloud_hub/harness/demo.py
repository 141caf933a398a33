"""`edgehub demo`: the whole product loop on one machine, every step verified.

Trains a scikit-learn model, converts and quantizes it, signs it into the hub's TUF repository,
starts a broker, the hub and three agents as separate processes, rolls the model out (canary
first), feeds sensor lines through virtual serial ports, shifts one device's input until drift
is reported, sends a tampered bundle that must be rejected, and ends with a summary per device.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tty
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from cloud_hub.broker.local import RunningBroker, start_broker
from cloud_hub.cli.output import p_text
from cloud_hub.drift.source import PublishedCards
from cloud_hub.harness.commands import agent_argv, serve_argv
from cloud_hub.rollout import engine as ro
from cloud_hub.rollout.operations import enroll_device, init_hub, publish_bundle, start_rollout
from cloud_hub.signing.tuf_repo import TufRepository
from cloud_hub.store.database import Store, stats_of
from cloud_hub.store.url import store_url
from cloud_hub.web.api import WebAuth, create_app
from cloud_hub.web.server import WebServer, load_token, parse_listen
from edge_agent.errors import TransportError
from edge_agent.protocol.messages import ModelRef

DEVICES = ("greenhouse-1", "greenhouse-2", "greenhouse-3")
MODEL = "tumor"
FEED_HZ = 100.0
GARBAGE_EVERY = 40  # one malformed line in this many
DRIFT_WINDOW = 500


@dataclass
class DemoOptions:
    seconds: float = 6.0
    broker: str = "auto"
    keep: bool = False
    workdir: Path | None = None
    broker_address: tuple[str, int] | None = None  # use a running broker instead of starting one
    http: str = "127.0.0.1:8080"  # the dashboard; another free port when this one is taken
    console: Console | None = None


@dataclass
class Checks:
    rows: list[tuple[str, bool, str]] = field(default_factory=list)
    say: Callable[[str], None] | None = None  # not on a terminal: a plain line per step

    def add(self, step: str, ok: bool, detail: str) -> bool:
        self.rows.append((step, ok, detail))
        if self.say is not None:
            self.say(
                f"demo: {step}: {'ok' if ok else 'FAILED'}" + (f" ({detail})" if detail else "")
            )
        return ok

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(ok for _, ok, _ in self.rows)

    def table(self) -> Table:
        t = Table(title="verified steps")
        t.add_column("step")
        t.add_column("result")
        t.add_column("detail")
        for step, ok, detail in self.rows:
            t.add_row(step, "[green]ok[/green]" if ok else "[red]FAILED[/red]", detail)
        return t


# ---- data and model -------------------------------------------------------------------------
@dataclass
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_feed: np.ndarray
    names: list[str]


def load_data() -> Dataset:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    names = ["".join(c if c.isalnum() else "_" for c in n) for n in data.feature_names]
    x = data.data.astype(np.float32)
    x_train, _, y_train, _ = train_test_split(
        x, data.target, test_size=0.3, random_state=0, stratify=data.target
    )
    # The sensors draw from the population the training rows were sampled from: the whole data
    # set. Replaying the 171 held-out rows alone would be one small sample of it, which the
    # drift monitor, pooling thousands of rows, rightly tells apart from the reference.
    return Dataset(x_train, y_train, x, names)


def train_bundle(data: Dataset, version: int, out: Path) -> dict[str, Any]:
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from converters.pipeline import build_bundle

    model = make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=1000, random_state=version),
    ).fit(data.x_train, data.y_train)
    report = build_bundle(
        model,
        data.x_train,
        data.y_train,
        name=MODEL,
        version=version,
        out=out,
        feature_names=data.names,
    )
    return report.report


# ---- sensor feeds through virtual serial ports -------------------------------------------
class Feeder:
    """Writes CSV lines to the master side of a pseudo-terminal the agent reads with pyserial."""

    def __init__(self, x: np.ndarray, seed: int) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.x = x
        self.std = x.std(axis=0)
        self.shift = np.zeros(x.shape[1], dtype=np.float32)
        self.rng = np.random.default_rng(seed)
        self.sent = 0
        self.garbage = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def drift(self, features: int) -> None:
        """Shift the first `features` inputs by three standard deviations."""
        self.shift[:features] = 3 * self.std[:features]

    def _line(self) -> bytes:
        self.sent += 1
        if self.sent % GARBAGE_EVERY == 0:
            self.garbage += 1
            return [b"\xff\xfe garbage\n", b"1.0,2.0\n", b"nan," * 29 + b"nan\n"][self.garbage % 3]
        row = self.x[self.rng.integers(len(self.x))]
        row = row + self.rng.normal(0, 0.02, row.shape) * self.std + self.shift
        return (",".join(f"{v:.4f}" for v in row) + "\n").encode()

    def _run(self) -> None:
        period = 1.0 / FEED_HZ
        next_at = time.monotonic()
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += period
            with contextlib.suppress(OSError):
                os.write(self.master, self._line())

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def device_config(device: str, port: str, broker: tuple[str, int]) -> str:
    return f"""profile = "generic-x86_64"

[device]
id = "{device}"
state_dir = "state"

[broker]
host = "{broker[0]}"
port = {broker[1]}

[telemetry]
interval_s = 1.0
status_interval_s = 0.5

[drift]
window = {DRIFT_WINDOW}

[[inputs]]
kind = "serial"
port = "{port}"
baudrate = 115200
format = "csv"
"""


# ---- processes ------------------------------------------------------------------------------
class Processes:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str]) -> None:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        self.procs[name] = subprocess.Popen(
            [sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def stop(self, name: str, timeout: float = 15.0) -> int | None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name, timeout=5)


# ---- live view ------------------------------------------------------------------------------
class View:
    def __init__(
        self, store: Store, feeders: dict[str, Feeder], say: Callable[[str], None] | None = None
    ) -> None:
        self.store = store
        self.feeders = feeders
        self.phase = ""
        self.say = say  # not on a terminal: a plain line per phase (the live view prints none)

    def set_phase(self, phase: str) -> None:
        if phase != self.phase and self.say is not None:
            self.say(f"demo: {phase}...")
        self.phase = phase

    def devices(self) -> dict[str, dict[str, Any]]:
        return {d["id"]: d for d in self.store.devices()}

    def latest_drift(self, device: str) -> dict[str, Any] | None:
        recs = self.store.records("drift", device)
        return recs[-1].body if recs else None

    def render(self) -> Table:
        t = Table(title=f"fleet: {self.phase}")
        for col in (
            "device",
            "online",
            "model",
            "inferences",
            "rejected lines",
            "p50 ms",
            "telemetry at hub",
            "drift",
        ):
            t.add_column(col)
        devices = self.devices()
        for name in DEVICES:
            d = devices.get(name)
            if d is None:
                t.add_row(name, "-", "-", "", "", "", "", "")
                continue
            stats = stats_of(d)
            drift = self.latest_drift(name)
            status = drift["status"] if drift else "-"
            color = {"ok": "green", "warn": "yellow", "alert": "red"}.get(status, "white")
            t.add_row(
                name,
                "yes" if d["online"] else "no",
                f"{d['model']}@{d['version']}" if d["model"] else "none",
                str(stats.inferences),
                str(sum(stats.rejected.values())),
                f"{stats.latency_ms.get('p50', 0):.3f}",
                str(self.store.count("telemetry", name)),
                f"[{color}]{status}[/{color}]"
                + (f" p {p_text(drift.get('p'))} ({drift['worst_feature']})" if drift else ""),
            )
        return t


def wait_for(live: Live, view: View, what: str, check: Callable[[], bool], timeout: float) -> bool:
    """Refresh the live view until `check()` holds or `timeout` passes."""
    view.set_phase(what)
    deadline = time.monotonic() + timeout
    while True:
        live.update(view.render())
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)


def rollout_state(store: Store, rollout_id: str) -> ro.Rollout:
    row = next(r for r in store.rollouts() if r["id"] == rollout_id)
    return ro.Rollout.from_json(row["body"])


# ---- the demo -------------------------------------------------------------------------------
def run_demo(opts: DemoOptions) -> int:
    console = opts.console or Console()
    _interrupt_on_signals()
    listen = parse_listen(opts.http)
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    say = None if console.is_terminal else _plain(console)
    checks = Checks(say=say)
    procs = Processes(workdir / "logs")
    broker: RunningBroker | None = None
    web: WebServer | None = None
    feeders: dict[str, Feeder] = {}
    try:
        if say is not None:
            say("demo: training a scikit-learn MLP on the breast cancer data set...")
        with console.status(
            "training a scikit-learn MLP on the breast cancer data set..."
        ) as status:
            data = load_data()
            report = train_bundle(data, 1, workdir / f"{MODEL}-1.zip")
            status.update("training version 2 (the one that will be tampered with)...")
            train_bundle(data, 2, workdir / f"{MODEL}-2.zip")
        checks.add(
            "convert + quantize",
            report["label_agreement"] >= 0.97,
            f"skl2onnx -> int8: {report['size_bytes_before']} -> {report['size_bytes_after']} "
            f"bytes, label agreement {report['label_agreement']:.3f}, accuracy "
            f"{report['accuracy_before']:.3f} -> {report['accuracy_after']:.3f}",
        )
        home = workdir / "hub"
        init_hub(home)
        model, target = publish_bundle(home, workdir / f"{MODEL}-1.zip")
        checks.add("sign", True, f"{model} signed into the TUF repository as {target}")

        if opts.broker_address is None:
            broker = start_broker(workdir / "broker", prefer=opts.broker)
            address = (broker.host, broker.port)
            checks.add("broker", True, f"{broker.kind} on {broker.host}:{broker.port}")
        else:
            address = opts.broker_address
        # the demo serves the dashboard itself, on the port it was given
        procs.start("hub", serve_argv(home, address[0], address[1], "--http", "off"))
        for i, device in enumerate(DEVICES):
            feeders[device] = Feeder(data.x_feed, seed=i)
            folder = workdir / device
            folder.mkdir()
            enroll_device(home, device, folder / "state")
            (folder / "agent.toml").write_text(device_config(device, feeders[device].port, address))
            procs.start(device, agent_argv(folder / "agent.toml"))
        store = Store(store_url(home))
        view = View(store, feeders, say)
        web, token = _dashboard(store, home, *listen)
        console.print(f"[bold]dashboard:[/bold] {web.url}#token={token}", soft_wrap=True)
        with Live(view.render(), console=console, refresh_per_second=4) as live:
            online = wait_for(
                live,
                view,
                "starting the hub and three agents",
                lambda: sum(bool(d["online"]) for d in view.devices().values()) == len(DEVICES),
                timeout=60,
            )
            if not checks.add("start", online, "hub and 3 agents running, each reported online"):
                return report_checks(console, checks, workdir, opts)
            _rollout_good(live, view, home, store, checks)
            for f in feeders.values():
                f.start()
            fed_until = time.monotonic() + opts.seconds
            wait_for(
                live,
                view,
                f"serving: {FEED_HZ:.0f} lines/s per device over serial ptys",
                lambda: time.monotonic() > fed_until,
                timeout=opts.seconds + 1,
            )
            devices = view.devices()
            checks.add(
                "serve",
                all(stats_of(devices[d]).inferences > 0 for d in DEVICES),
                "every agent infers on its serial input; malformed lines rejected by reason: "
                + ", ".join(f"{k} {v}" for k, v in stats_of(devices[DEVICES[0]]).rejected.items()),
            )
            _drift(live, view, feeders[DEVICES[2]], checks)
            _dashboard_shows(web.url, token, checks)
            _tamper(live, view, home, store, workdir, checks)
            for f in feeders.values():
                f.stop()
            _wrap_up(live, view, procs, store, checks)
        console.print(_summary(view))
    except KeyboardInterrupt:
        checks.add("interrupted", False, "Ctrl-C: stopping everything the demo started")
    finally:
        for f in feeders.values():
            f.stop()
        procs.stop_all()
        if broker is not None:
            broker.stop()
        if web is not None:
            web.stop()
    return report_checks(console, checks, workdir, opts)


def _plain(console: Console) -> Callable[[str], None]:
    """Print one progress line at once (a pipe or a log, where the live view stays blank)."""

    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
        console.file.flush()

    return say


def _dashboard(store: Store, home: Path, host: str, port: int) -> tuple[WebServer, str]:
    token, _ = load_token({}, None)
    app = create_app(store, WebAuth(token), PublishedCards(TufRepository(home)))
    try:
        web = WebServer(app, host, port)
    except TransportError:
        web = WebServer(app, host, 0)
    web.start()
    return web, token


def _dashboard_shows(url: str, token: str, checks: Checks) -> None:
    """What the page shows, through the API it reads: the fleet and the drifting device."""
    headers = {"Authorization": f"Bearer {token}"}
    try:
        fleet, drift = (
            json.loads(
                urllib.request.urlopen(
                    urllib.request.Request(url + path, headers=headers), timeout=10
                ).read()
            )
            for path in ("api/fleet", "api/drift")
        )
    except (OSError, ValueError) as exc:
        checks.add("dashboard", False, f"{url}: {exc}")
        return
    online = [d["id"] for d in fleet["devices"] if d["online"]]
    alerts = [r["device"] for r in drift["rows"] if r["status"] == "alert"]
    checks.add(
        "dashboard",
        sorted(online) == sorted(DEVICES) and DEVICES[2] in alerts,
        f"{url} shows {len(online)} devices online and {', '.join(alerts) or 'no'} drift alert",
    )


def _interrupt_on_signals() -> None:
    """Ctrl-C and SIGTERM both end the demo through its clean-up, even when the demo was
    started from a shell that ignores SIGINT for background jobs."""
    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)


def _roll_out(
    live: Live, view: View, home: Path, store: Store, version: int, what: str, timeout: float
) -> tuple[ro.Rollout, bool]:
    """Start a canary-first rollout of MODEL@version; wait until it stops running."""
    r = start_rollout(home, ModelRef(MODEL, version), "1")
    ended = wait_for(
        live,
        view,
        f"rollout {r.id} of {MODEL}@{version}: {what}",
        lambda: rollout_state(store, r.id).state != ro.RUNNING,
        timeout=timeout,
    )
    return rollout_state(store, r.id), ended


def _rollout_good(live: Live, view: View, home: Path, store: Store, checks: Checks) -> None:
    r, done = _roll_out(live, view, home, store, 1, "canary, then the rest", timeout=90)
    checks.add(
        "rollout",
        done and r.state == ro.COMPLETED,
        f"{r.id}: {r.state}; waves {[len(w) for w in r.waves]}",
    )
    events = store.records("events", rollout=r.id)
    canary = r.waves[0][0]
    healthy_at = min(
        (e.ts for e in events if e.device == canary and e.body["event"] == "healthy"),
        default=float("inf"),
    )
    others_offered = [e.ts for e in events if e.device != canary and e.body["event"] == "offered"]
    checks.add(
        "canary first",
        bool(others_offered) and healthy_at < min(others_offered),
        f"{canary} was healthy before any other device was offered the model",
    )
    order = ["offered", "downloading", "verified", "installed", "healthy"]
    each = all([e.body["event"] for e in events if e.device == d] == order for d in DEVICES)
    checks.add(
        "verify before install",
        each,
        "every device: " + " -> ".join(order) + " (TUF-verified before install)",
    )


def _drift(live: Live, view: View, feeder: Feeder, checks: Checks) -> None:
    """The shifted device alerts; the others, fed from the training population, stay ok in
    every window they reported (a false alarm fails the demo)."""
    device = DEVICES[2]
    feeder.drift(features=4)
    alerted = wait_for(
        live,
        view,
        f"shifting {device}'s inputs by 3 standard deviations...",
        lambda: any(r.body["status"] == "alert" for r in view.store.records("drift", device)),
        timeout=60,
    )
    report = view.latest_drift(device) or {}
    calm = {d: [r.body["status"] for r in view.store.records("drift", d)] for d in DEVICES[:2]}
    quiet = all(statuses and set(statuses) == {"ok"} for statuses in calm.values())
    checks.add(
        "drift",
        alerted and quiet,
        f"{device}: {report.get('status', '-')}, p {p_text(report.get('p'))} "
        f"(worst {report.get('worst_feature', '-')}); "
        + ", ".join(f"{d}: {s.count('ok')} of {len(s)} windows ok" for d, s in calm.items()),
    )


def _tamper(
    live: Live, view: View, home: Path, store: Store, workdir: Path, checks: Checks
) -> None:
    _, target = publish_bundle(home, workdir / f"{MODEL}-2.zip")
    stored = home / "tuf" / "targets" / target
    blob = bytearray(stored.read_bytes())
    middle = len(blob) // 2
    blob[middle : middle + 16] = bytes(b ^ 0xFF for b in blob[middle : middle + 16])
    stored.write_bytes(bytes(blob))  # an attacker swaps bytes after signing
    r, halted = _roll_out(live, view, home, store, 2, "tampered, to the canary", timeout=60)
    canary = r.waves[0][0]
    served_before = stats_of(view.devices()[canary]).inferences
    keeps_serving = wait_for(
        live,
        view,
        f"{canary} rejected the bundle; is it still serving {MODEL}@1?",
        lambda: (
            stats_of(view.devices()[canary]).inferences > served_before + 20
            and view.devices()[canary]["version"] == 1
        ),
        timeout=20,
    )
    checks.add(
        "tampered bundle",
        halted and r.state == ro.HALTED and "tampered" in r.halt_reason,
        f"rollout {r.state}: {r.halt_reason[:90]}",
    )
    checks.add(
        "old model keeps serving",
        keeps_serving,
        f"{canary} still runs {MODEL}@1 and keeps inferring",
    )


def _wrap_up(live: Live, view: View, procs: Processes, store: Store, checks: Checks) -> None:
    view.set_phase("stopping agents (they flush their buffers)")
    live.update(view.render())
    codes = {d: procs.stop(d) for d in DEVICES}
    checks.add("agents stop cleanly", all(c == 0 for c in codes.values()), f"exit codes {codes}")

    def delivered() -> bool:
        devices = view.devices()
        for d in DEVICES:
            sent = stats_of(devices[d]).sent
            if not sent or any(store.count(kind, d) != n for kind, n in sent.items()):
                return False
        return True

    exact = wait_for(live, view, "hub ingesting the last records", delivered, timeout=20)
    devices = view.devices()
    counted = all(
        store.telemetry_totals(d)["inferences"] == stats_of(devices[d]).inferences for d in DEVICES
    )
    checks.add(
        "telemetry exactly once",
        exact and counted,
        "every record each agent sent is stored once at the hub; window counts add up "
        "to the agents' inference counts",
    )
    checks.add("hub stops cleanly", procs.stop("hub") == 0, "")


def _summary(view: View) -> Table:
    t = Table(title="summary per device")
    for col in (
        "device",
        "model",
        "inferences",
        "p50/p99 ms",
        "bad lines",
        "telemetry sent",
        "at hub",
        "drift",
    ):
        t.add_column(col)
    devices = view.devices()
    for d in DEVICES:
        row = devices.get(d, {})
        stats = stats_of(row)
        drift = view.latest_drift(d)
        lat = stats.latency_ms
        t.add_row(
            d,
            f"{row.get('model')}@{row.get('version')}",
            str(stats.inferences),
            f"{lat.get('p50', 0):.2f}/{lat.get('p99', 0):.2f}",
            str(sum(stats.rejected.values())),
            str(stats.sent.get("telemetry", 0)),
            str(view.store.count("telemetry", d)),
            f"{drift['status']} p {p_text(drift.get('p'))}" if drift else "-",
        )
    return t


def report_checks(console: Console, checks: Checks, workdir: Path, opts: DemoOptions) -> int:
    console.print(checks.table())
    if checks.ok:
        console.print("[bold green]demo passed: every step verified[/bold green]")
    else:
        logs = workdir / "logs"
        where = logs if logs.is_dir() else workdir
        console.print(f"[bold red]demo failed[/bold red]; logs in {where}")
    if checks.ok and not opts.keep and opts.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if checks.ok else 1
