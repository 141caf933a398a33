"""A simulated fleet in one process: N devices, each a real `edge_agent.agent.Agent` on its own
MQTT connection, so verification (TUF), installation (ModelStore), telemetry (Buffer + Sender)
and drift run the agent's own code. Only two things are simulated:

- the sensors: rows drawn from the model card's reference sample (so an undrifted device
  reports "ok"; a categorical feature's texts in the reference's shares), shifted by `shift`
  standard deviations on the drifting devices, with an optional share of malformed lines;
  they enter through the same callback a serial source uses;
- the runtime: one real onnxruntime session per distinct model, shared read-only by every device
  (`SharedRuntimes`), instead of one session per device.

Threads per device: its MQTT session's network thread, the agent's updater and sender threads,
and its main loop (`run_forever`): 4. One feeder thread serves every device.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloud_hub.rollout import engine as ro
from cloud_hub.rollout.operations import enroll_device, open_repo, publish_bundle
from cloud_hub.store.database import Store
from cloud_hub.store.url import store_url
from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.errors import ConfigError, MessageError, TransportError
from edge_agent.inference.runtime import Runtime, load_runtime
from edge_agent.protocol.card import FeatureProfile, ModelCard
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.topics import check_device_id
from edge_agent.sources.csv_fields import quoted
from edge_agent.update.digest import sha256_hex
from edge_agent.update.verify import CheckInProcess

FEED_TICK_S = 0.1
# the MQTT client's network loop uses select(), which takes file descriptors below 1024 only;
# each simulated device holds about 6 (its buffer's segment and gone log, the client's socket
# pair, the connection), so one process holds about 150 devices next to the hub
FD_SETSIZE = 1024
FDS_PER_DEVICE = 6
# what a broken sensor or a noisy serial line sends (each is rejected and counted by reason)
MALFORMED_LINES = (
    b"\xff\xfe\x00 garbage",
    b"1.0,2.0",
    b"nan,nan,nan,nan",
    b"",
    b"1e999," * 3 + b"1",
    b'{"not": "csv"}',
)
SIM_MODEL = ModelRef("sim-iris", 1)
# a categorical feature shifted by this many "standard deviations" sends only its rarest category
CATEGORY_SHIFT_SD = 4.0


@frozen
class SimOptions:
    """What `edgehub simulate` was asked for, validated."""

    devices: int
    rate: float = 2.0  # sensor rows per second per device
    drifting: int = 0  # devices whose inputs are shifted
    shift: float = 3.0  # the shift, in reference standard deviations
    bad_lines: float = 0.0  # share of malformed sensor lines
    window_s: float = 2.0  # telemetry window (records per device = duration / window)
    status_s: float = 5.0  # heartbeat
    prefix: str = "sim"  # device ids: {prefix}-0001 ...

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ConfigError(f"--devices: expected at least 1, got {self.devices}")
        if not 0 <= self.rate < math.inf:
            raise ConfigError(f"--rate: expected rows per second >= 0, got {self.rate}")
        if not 0 <= self.drifting <= self.devices:
            raise ConfigError(
                f"--drift: expected 0 to {self.devices} devices (of --devices), got {self.drifting}"
            )
        if not math.isfinite(self.shift):
            raise ConfigError(f"--shift: expected a finite number of std devs, got {self.shift}")
        if not 0 <= self.bad_lines <= 1:
            raise ConfigError(f"--bad-lines: expected a share from 0 to 1, got {self.bad_lines}")
        for name, value in (("--window", self.window_s), ("--status-every", self.status_s)):
            if not 0 < value < math.inf:
                raise ConfigError(f"{name}: expected seconds > 0, got {value}")
        try:
            check_device_id(self.device_id(1), "--prefix")
        except MessageError as exc:
            raise ConfigError(str(exc)) from exc

    def device_id(self, n: int) -> str:
        return f"{self.prefix}-{n:04d}"


# ---- sensors (pure) --------------------------------------------------------------------
def sample_feature(profile: FeatureProfile, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` values distributed like the reference: drawn from the card's KS reference sample
    (order statistics at evenly spaced ranks, so within 1/len(ks) of the reference's ECDF); a
    card without one: a bin by its count, uniform inside it (which the KS test can tell)."""
    if profile.ks:
        return rng.choice(np.asarray(profile.ks), size=n)
    counts = np.asarray(profile.counts, dtype=np.float64)
    if counts.sum() <= 0 or not profile.edges:
        return np.full(n, profile.mean)
    bounds = [profile.min, *profile.edges, profile.max]
    bins = rng.choice(len(counts), size=n, p=counts / counts.sum())
    low = np.asarray(bounds[:-1])[bins]
    high = np.maximum(np.asarray(bounds[1:])[bins], low)
    return low + rng.random(n) * (high - low)


def sample_category(
    profile: FeatureProfile, n: int, rng: np.random.Generator, shift: float = 0.0
) -> np.ndarray:
    """`n` category codes of a categorical feature in the reference's shares (its bins are
    its categories, the last one unknown texts, which a simulated sensor never sends); with a
    `shift`, a share min(1, |shift| / CATEGORY_SHIFT_SD) of them moved to its rarest category."""
    counts = np.asarray(profile.counts[:-1], dtype=np.float64)
    shares = counts / counts.sum() if counts.sum() > 0 else np.full(len(counts), 1 / len(counts))
    codes = rng.choice(len(counts), size=n, p=shares)
    if shift:
        moved = rng.random(n) < min(1.0, abs(shift) / CATEGORY_SHIFT_SD)
        codes[moved] = int(np.argmin(counts))
    return codes


def sensor_lines(
    card: ModelCard,
    n: int,
    rng: np.random.Generator,
    shift: float = 0.0,
    bad_share: float = 0.0,
) -> list[bytes]:
    """`n` CSV sensor lines for `card`'s features; the first half of the features is moved by
    `shift` reference standard deviations (a categorical feature by `sample_category`); about
    `bad_share` of the lines are malformed. A categorical feature's values are its texts,
    quoted where they hold a comma."""
    if n <= 0:
        return []
    shifted = max(1, len(card.features) // 2) if shift else 0
    cats = card.input.categories if card.input.kind == "row" else {}
    cols: list[list[str]] = []
    for j, f in enumerate(card.features):
        move = shift if j < shifted else 0.0
        texts = cats.get(f.name)
        if texts is not None:
            cols.append([quoted(texts[c]) for c in sample_category(f, n, rng, move)])
        else:
            values = sample_feature(f, n, rng) + move * max(f.std, 1e-6)
            # 9 digits: a float32 reads back exactly (5 moved values off the card's KS sample,
            # enough for undrifted devices to warn)
            cols.append([f"{v:.9g}" for v in values])
    bad = rng.random(n) < bad_share
    return [
        MALFORMED_LINES[int(rng.integers(len(MALFORMED_LINES)))]
        if bad[i]
        else ",".join(col[i] for col in cols).encode()
        for i in range(n)
    ]


def rows_due(rate: float, elapsed: float, fed: int) -> int:
    """Rows to feed now so that `fed` keeps up with `rate` rows/s after `elapsed` seconds."""
    return max(0, math.floor(rate * elapsed) - fed)


# ---- runtime stand-in ------------------------------------------------------------------
class SharedRuntimes:
    """One real onnxruntime session per distinct model bytes, shared read-only by the fleet
    (onnxruntime's `run` is thread-safe); a `RuntimeLoader` for `Agent(open_runtime=...)`.

    The session runs each call on its caller's thread (one intra-op thread), whatever the
    device profile asks: a real device's pool has the device's cores to itself, while one pool
    shared by every simulated device would queue them all on it and keep its threads spinning
    between their calls (a quarter of the fleet process's CPU in a rollout to 100 devices)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, Runtime] = {}

    def __call__(self, card: ModelCard, model_bytes: bytes, threads: int) -> Runtime:
        key = sha256_hex(model_bytes)
        with self._lock:
            runtime = self._cache.get(key)
            if runtime is None:
                runtime = self._cache[key] = load_runtime(card, model_bytes, 1)
            return runtime

    def __len__(self) -> int:
        return len(self._cache)


# ---- devices ---------------------------------------------------------------------------
def device_toml(device_id: str, host: str, port: int, opts: SimOptions) -> str:
    return (
        f'profile = "generic-x86_64"\n\n[device]\nid = "{device_id}"\nstate_dir = "state"\n\n'
        f'[broker]\nhost = "{host}"\nport = {port}\n\n'
        f"[telemetry]\ninterval_s = {opts.window_s}\nstatus_interval_s = {opts.status_s}\n"
    )


@dataclass
class SimDevice:
    agent: Agent
    shift: float
    rng: np.random.Generator
    fed: int = 0
    put: Callable[[bytes], None] = field(init=False)
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.put = self.agent._on_line("csv", waits=False)  # as a serial source is given
        self.thread = threading.Thread(
            target=self.agent.run_forever, name=f"sim-{self.id}", daemon=True
        )

    @property
    def id(self) -> str:
        return self.agent.cfg.device.id

    def accepted(self) -> int:
        """Records this device's agent accepted under its current boot."""
        return self.agent.buffer.appended


class SimFleet:
    """N agents in this process, enrolled with the hub at `home`, on the broker at host:port."""

    def __init__(
        self, home: Path, workdir: Path, host: str, port: int, opts: SimOptions, seed: int = 0
    ) -> None:
        # python-tuf for every device's check (CheckInProcess), loaded with the fleet: loaded at
        # the first command instead, its import held a rollout's first checks waiting on the
        # import lock (a device's check process has it loaded before it answers)
        import edge_agent.update.tuf_check  # noqa: F401

        self.opts = opts
        self.runtimes = SharedRuntimes()
        self.devices: list[SimDevice] = []
        self.rows_fed = 0
        self._stop = threading.Event()
        self._feeder = threading.Thread(target=self._feed, name="sim-feeder", daemon=True)
        self._started = 0.0
        room = (FD_SETSIZE - 64 - open_fds()) // FDS_PER_DEVICE
        if opts.devices > room:
            raise ConfigError(
                f"--devices: one process holds at most {room} simulated devices (the MQTT select() "
                f"loop needs file descriptors below {FD_SETSIZE}, each device uses about "
                f"{FDS_PER_DEVICE}), got {opts.devices}; run more `edgehub simulate "
                "--external-hub --prefix NAME` processes against the same broker and hub"
            )
        for n in range(1, opts.devices + 1):
            device_id = opts.device_id(n)
            folder = workdir / device_id
            folder.mkdir(parents=True, exist_ok=True)
            enroll_device(home, device_id, folder / "state")
            (folder / "agent.toml").write_text(device_toml(device_id, host, port, opts))
            agent = Agent(
                load_config(folder / "agent.toml"),
                open_runtime=self.runtimes,
                open_check=CheckInProcess,  # one python-tuf for the simulated fleet
            )
            shift = opts.shift if n <= opts.drifting else 0.0
            self.devices.append(SimDevice(agent, shift, np.random.default_rng(seed + n)))

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.devices]

    @property
    def boots(self) -> dict[str, int]:
        return {d.id: d.agent.boot for d in self.devices}

    def start(self) -> None:
        for d in self.devices:
            d.agent.start()
            d.thread.start()
        self._started = time.monotonic()
        self._feeder.start()

    def _feed(self) -> None:
        opts = self.opts
        while not self._stop.wait(FEED_TICK_S):
            elapsed = time.monotonic() - self._started
            for d in self.devices:
                active = d.agent.pipeline.active
                n = rows_due(opts.rate, elapsed, d.fed)
                d.fed += n
                if active is None or n == 0:
                    continue  # no model yet: the sensor's rows go nowhere
                for line in sensor_lines(active.card, n, d.rng, d.shift, opts.bad_lines):
                    d.put(line)
                self.rows_fed += n

    def connected(self) -> int:
        return sum(d.agent.session.connected.is_set() for d in self.devices)

    def models(self) -> Counter[str]:
        """How many devices run which model ("none" for a device without one)."""
        out: Counter[str] = Counter()
        for d in self.devices:
            active = d.agent.pipeline.active
            out[active.ref if active else "none"] += 1
        return out

    def stop(self, timeout: float = 30.0) -> None:
        """Stop feeding, wait (within `timeout`) until the hub has confirmed every record the
        agents hold, then let every agent finish its batch and say goodbye (in parallel: each
        agent's own main loop does it). A record still unconfirmed then stays in its buffer."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        if self._feeder.is_alive():
            self._feeder.join(timeout)
        while time.monotonic() < deadline and not all(d.agent.sender.idle() for d in self.devices):
            self._stop.wait(0.2)  # the senders' own pace: a probe, a resend, a confirmation
        for d in self.devices:
            d.agent.stop_event.set()
        for d in self.devices:
            d.thread.join(max(0.1, deadline - time.monotonic()))

    def stats(self) -> dict[str, Any]:
        """Device-side totals: what the agents counted."""
        total: Counter[str] = Counter()
        sent: Counter[str] = Counter()
        for d in self.devices:
            snap = d.agent.pipeline.stats.snapshot()
            total["inferences"] += int(snap.get("inferences", 0))
            total["rejected"] += sum(snap.get("rejected", {}).values())
            total["buffered"] += d.agent.buffer.pending()
            total["bad_messages"] += d.agent.bad_messages
            sent.update(d.agent.sender.sent)
        return {**total, "sent": dict(sent), "rows_fed": self.rows_fed}


# ---- the hub's side --------------------------------------------------------------------
def hub_counts(store: Store, boots: dict[str, int]) -> dict[str, int]:
    """Records the hub stored per device under the given boot (all kinds)."""
    from sqlalchemy import func, select

    from cloud_hub.store.database import records

    q = (
        select(records.c.device, records.c.boot, func.count())
        .where(records.c.device.in_(list(boots)))
        .group_by(records.c.device, records.c.boot)
    )
    with store.engine.connect() as conn:
        got = {(str(dev), int(boot)): int(n) for dev, boot, n in conn.execute(q).all()}
    return {d: got.get((d, boot), 0) for d, boot in boots.items()}


def drift_statuses(store: Store, devices: Sequence[str]) -> Counter[str]:
    """The latest drift status of each device that reported one."""
    latest: dict[str, str] = {}
    wanted = set(devices)
    for rec in store.records("drift"):
        if rec.device in wanted:
            latest[rec.device] = str(rec.body.get("status"))
    return Counter(latest.values())


def ensure_model(home: Path, workdir: Path, model: ModelRef | None) -> ModelRef:
    """`model` if it is published; else the newest published model; else a small iris model
    trained and published now (so `edgehub simulate` works on a fresh hub)."""
    targets = open_repo(home).targets()
    workdir.mkdir(parents=True, exist_ok=True)
    published = [
        ModelRef(str(i["model"]), int(i["model_version"]))
        for i in targets.values()
        if "model" in i and "model_version" in i
    ]
    if model is not None:
        if model not in published:
            raise ConfigError(f"--model {model} is not published; run `edgehub model publish`")
        return model
    if published:
        return max(published, key=lambda m: (m.name == SIM_MODEL.name, m.version))
    return build_sim_model(home, workdir, SIM_MODEL)


def build_sim_model(home: Path, workdir: Path, model: ModelRef, **kw: Any) -> ModelRef:
    """Train a logistic regression on iris, bundle, sign and publish it as `model`."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from converters.pipeline import build_bundle

    x, y = load_iris(return_X_y=True)
    out = workdir / f"{model.name}-{model.version}.zip"
    build_bundle(
        LogisticRegression(max_iter=500).fit(x, y),
        x,
        y,
        name=model.name,
        version=model.version,
        out=out,
        **kw,
    )
    publish_bundle(home, out)
    return model


def rollout_of(store: Store, rollout_id: str) -> ro.Rollout:
    row = next(r for r in store.rollouts() if r["id"] == rollout_id)
    return ro.Rollout.from_json(row["body"])


def parse_broker(text: str) -> tuple[str, int]:
    """`mqtt://host:port` or `host:port` -> (host, port)."""
    rest = text.removeprefix("mqtt://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or "/" in rest or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"--broker: expected mqtt://HOST:PORT (e.g. mqtt://127.0.0.1:1883), got {text!r}"
        )
    return host, int(port)


# ---- one run ---------------------------------------------------------------------------
class Simulation:
    """A broker (given, or a private mosquitto), a hub (in this process, or one already serving
    `home`), and the simulated fleet; `close()` stops what it started."""

    def __init__(
        self,
        home: Path,
        workdir: Path,
        opts: SimOptions,
        broker: tuple[str, int] | None = None,
        embedded_hub: bool = True,
    ) -> None:
        from cloud_hub.broker.local import start_broker
        from cloud_hub.hub import Hub
        from edge_agent.mqtt.session import BrokerAddress

        open_repo(home)  # a clear error before anything starts
        self.home = home
        self.opts = opts
        self._broker_dir = None if broker else tempfile.TemporaryDirectory(prefix="edgehub-sim-")
        self.broker = (
            start_broker(Path(self._broker_dir.name), prefer="mosquitto")
            if self._broker_dir
            else None
        )
        host, port = broker or (self.broker.host, self.broker.port)  # type: ignore[union-attr]
        self.address = (host, port)
        self.store = store_of(home)
        self._hub_stop = threading.Event()
        self._hub_thread: threading.Thread | None = None
        self.hub = None
        try:
            if embedded_hub:
                self.hub = Hub(home, BrokerAddress(host, port), client_id="edgehub-sim")
                self._hub_thread = threading.Thread(
                    target=self.hub.run, args=(self._hub_stop,), name="sim-hub", daemon=True
                )
                self._hub_thread.start()
                if not self.hub.ready.wait(30):
                    raise TransportError(f"the hub did not connect to {host}:{port} in 30 s")
            self.fleet = SimFleet(home, workdir / "devices", host, port, opts)
            self.fleet.start()
            self.started = time.monotonic()
        except BaseException:
            self.close()
            raise

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for d in self.fleet.devices:
            if not d.agent.session.wait_connected(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def snapshot(self, rollout_id: str | None = None) -> dict[str, Any]:
        """What the live view shows: device side, hub side, rollout, process."""
        fleet = self.fleet
        out: dict[str, Any] = {
            "elapsed_s": round(time.monotonic() - self.started, 1),
            "devices": len(fleet.devices),
            "connected": fleet.connected(),
            "models": dict(fleet.models()),
            **fleet.stats(),
            "hub_records": sum(hub_counts(self.store, fleet.boots).values()),
            "drift": dict(drift_statuses(self.store, fleet.ids)),
            "threads": threading.active_count(),
            "rss_mb": round(rss_bytes() / 1e6, 1),
            "fds": open_fds(),
            "runtimes": len(fleet.runtimes),
        }
        if rollout_id is not None:
            r = rollout_of(self.store, rollout_id)
            out["rollout"] = {"id": r.id, "model": str(r.model), "state": r.state, **ro.progress(r)}
        return out

    def finish(self, ingest_timeout: float = 60.0) -> dict[str, Any]:
        """Stop the fleet (each agent drains its buffer), wait for the hub to store what the
        devices accepted, and compare per device: exactly once means equal counts."""
        self.fleet.stop(ingest_timeout)
        accepted = {d.id: d.accepted() for d in self.fleet.devices}
        deadline = time.monotonic() + ingest_timeout
        while True:
            stored = hub_counts(self.store, self.fleet.boots)
            if stored == accepted or time.monotonic() > deadline:
                break
            self.pause()
        mismatched = {d: (accepted[d], stored[d]) for d in accepted if accepted[d] != stored[d]}
        return {
            "accepted": sum(accepted.values()),
            "stored": sum(stored.values()),
            "exactly_once": not mismatched,
            "mismatched": mismatched,
        }

    def pause(self, seconds: float = 0.2) -> None:
        """Wait for the hub to store something (in this process), or a moment (another)."""
        if self.hub is not None:
            with self.hub.handled:
                self.hub.handled.wait(seconds)
        else:
            self._hub_stop.wait(seconds)  # another process's database: nothing to wait on

    def close(self) -> None:
        fleet = getattr(self, "fleet", None)
        if fleet is not None:
            fleet.stop(timeout=10)
        self._hub_stop.set()
        if self._hub_thread is not None:
            self._hub_thread.join(15)
        if self.broker is not None:
            self.broker.stop()
        if self._broker_dir is not None:
            self._broker_dir.cleanup()


def rss_bytes() -> int:
    """This process's resident set (VmRSS), 0 where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def open_fds() -> int:
    """File descriptors this process holds (0 where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def store_of(home: Path) -> Store:
    return Store(store_url(home))
