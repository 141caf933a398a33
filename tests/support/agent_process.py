"""The device's agent as a real `edge-agent run` process (so SIGKILL means SIGKILL) beside the
hub running in-process: the `rig` fixture (`Rig`), the `bundles` fixture (iris@1 and iris@2),
and the agent's buffer files read as another process would (`_buffer_rows`, `_pending_count`,
`every_record_once`, `_until`)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from cloud_hub.broker.local import RunningBroker
from cloud_hub.hub import Hub
from cloud_hub.rollout.operations import enroll_device, init_hub
from converters.pipeline import build_bundle
from edge_agent.mqtt.session import BrokerAddress
from edge_agent.protocol.messages import ModelRef
from edge_agent.update.store import ModelStore
from tests.support.buffer_files import ever_appended, held
from tests.support.watch import DeviceWatcher

DEVICE = "pi-01"
WAIT_S = 30.0  # the longest any one condition may take before the test fails
STOP_TIMEOUT_S = 30.0  # the unit's TimeoutStopSec: SIGTERM must be done well within it


def _device_file(
    folder: Path, broker: RunningBroker | None, readings: Path | None = None, rate_hz: float = 200
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    host, port = (broker.host, broker.port) if broker else ("127.0.0.1", 1883)
    text = (
        'profile = "generic-x86_64"\n'
        f'[device]\nid = "{DEVICE}"\nstate_dir = "state"\n'
        f'[broker]\nhost = "{host}"\nport = {port}\n'
        "[telemetry]\ninterval_s = 0.2\nstatus_interval_s = 0.2\n"
    )
    if readings is not None:
        text += f'[[inputs]]\nkind = "file"\npath = "{readings}"\nrate_hz = {rate_hz}\n'
        text += "loop = true\n"
    path = folder / "agent.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """iris@1 and iris@2: LogisticRegression on scikit-learn's iris, converted and quantized."""
    folder = tmp_path_factory.mktemp("bundles")
    x, y = load_iris(return_X_y=True)
    out = {}
    for version, c in ((1, 1.0), (2, 0.5)):
        out[version] = folder / f"iris-{version}.zip"
        model = LogisticRegression(max_iter=500, C=c).fit(x, y)
        build_bundle(model, x, y, name="iris", version=version, out=out[version])
    return out


@dataclass
class Rig:
    """A hub home and the hub running in-process, one device folder, and the device's agent
    as a real `edge-agent run` process (so SIGKILL means SIGKILL)."""

    tmp: Path
    broker: RunningBroker
    home: Path
    hub: Hub
    watcher: DeviceWatcher
    config: Path
    state: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_agent(self) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"agent-{len(self.procs) + 1}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.cli", "-v", "run", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.config.parent,
            start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.tmp.glob("agent-*.log"))
        )

    def hub_wait(self, what: str, check: Callable[[], bool], timeout: float = WAIT_S) -> None:
        """Wait until `check()` holds; re-checked after every message the hub handles."""
        hub = self.hub
        with hub.handled:
            ok = hub.handled.wait_for(check, timeout)
        assert ok, f"timed out waiting for {what}\n{self.logs()}"

    def stop_agent(self, proc: subprocess.Popen[bytes]) -> tuple[int, float]:
        """SIGTERM, as systemd stops the unit: (exit code, seconds it took)."""
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the agent ignored SIGTERM for {STOP_TIMEOUT_S}s\n{self.logs()}")
        return code, time.monotonic() - started

    def sigkill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL

    def preinstall(self, bundle: Path, version: int) -> None:
        """As an earlier verified install left it (the store is what the updater writes)."""
        ModelStore(self.state / "models").install(ModelRef("iris", version), bundle.read_bytes())

    # ---- the hub's view -------------------------------------------------------------------
    def hub_device(self) -> dict[str, Any]:
        return next(d for d in self.hub.store.devices() if d["id"] == DEVICE)

    def hub_keys(self) -> list[tuple[int, int]]:
        """(boot, seq) of every record the hub stored for the device, of every kind."""
        store = self.hub.store
        return [
            (r.boot, r.seq)
            for kind in ("telemetry", "drift", "events")
            for r in store.records(kind, DEVICE)
        ]

    def telemetry_with_inferences(self, boot: int) -> int:
        return sum(
            1
            for r in self.hub.store.records("telemetry", DEVICE)
            if r.boot == boot and r.body["count"] > 0
        )

    def rollout_state(self, rollout_id: str) -> str:
        row = next(x for x in self.hub.store.rollouts() if x["id"] == rollout_id)
        return str(row["state"])


@pytest.fixture
def rig(broker: RunningBroker, tmp_path: Path) -> Iterator[Rig]:
    home = tmp_path / "hub"
    init_hub(home)
    x, _ = load_iris(return_X_y=True)
    readings = tmp_path / "readings.csv"
    readings.write_text("".join(",".join(f"{v:g}" for v in row) + "\n" for row in x))
    config = _device_file(tmp_path / "dev", broker, readings)
    state = tmp_path / "dev" / "state"
    enroll_device(home, DEVICE, state)
    watcher = DeviceWatcher(broker, DEVICE)
    hub = Hub(home, BrokerAddress(broker.host, broker.port))
    stop = threading.Event()
    thread = threading.Thread(target=hub.run, args=(stop,), daemon=True)
    thread.start()
    assert hub.ready.wait(WAIT_S)
    rig = Rig(tmp_path, broker, home, hub, watcher, config, state)
    try:
        yield rig
    finally:
        for proc in rig.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        stop.set()
        thread.join(15)
        watcher.stop()


def _buffer_rows(state: Path) -> tuple[set[tuple[int, int]], int]:
    """What the agent's buffer holds, read from its files as a separate process would: ((boot,
    seq) of the records the hub has not confirmed, how many records were ever appended)."""
    return held(state / "buffer"), ever_appended(state / "buffer")


def every_record_once(rig: Rig, boots: tuple[int, ...]) -> list[tuple[int, int]]:
    """After the agent stopped: its buffer is empty and the hub holds every record it ever
    buffered exactly once, each boot's sequence without a gap. Returns the hub's keys."""
    pending, appended = _buffer_rows(rig.state)
    assert not pending, "SIGTERM left records in the buffer"
    rig.hub_wait("every record ever buffered at the hub", lambda: len(rig.hub_keys()) >= appended)
    keys = rig.hub_keys()
    assert len(keys) == len(set(keys)) == appended  # none lost, none stored twice
    for boot in boots:
        seqs = sorted(seq for b, seq in keys if b == boot)
        assert seqs == list(range(len(seqs))), f"boot {boot}: a gap in the sequence"
    return keys


def _pending_count(state: Path) -> int:
    return len(held(state / "buffer"))


def _until(what: str, check: Callable[[], bool], timeout: float = WAIT_S) -> None:
    """For state that only a file shows (the agent's buffer, from another process): re-checked
    every 50 ms until it holds or the timeout passes."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.05)
