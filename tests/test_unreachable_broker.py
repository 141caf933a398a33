"""`edge-agent run` and `edgehub serve` with no broker listening: each says so on stderr at once
(host:port and the error), keeps retrying, and says when it is connected; the hub says
"serving" only then. Real processes, read through pipes; waits are on lines, with timeouts."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from cloud_hub.broker.local import RunningBroker, free_port
from cloud_hub.rollout.operations import enroll_device, init_hub

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 30.0


class Lines:
    """A pipe read line by line on a thread; `expect` waits for a line containing a text."""

    def __init__(self, pipe: IO[str]) -> None:
        self.seen: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def expect(self, *texts: str) -> str:
        while True:
            try:
                line = self._lines.get(timeout=WAIT_S)
            except queue.Empty:
                raise AssertionError(f"no line with {texts} in {WAIT_S} s: {self.seen}") from None
            if line is None:
                raise AssertionError(f"the pipe closed before a line with {texts}: {self.seen}")
            self.seen.append(line)
            if all(t in line for t in texts):
                return line


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(WAIT_S)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def launch(started: list[subprocess.Popen[str]], *argv: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": ""},
    )
    started.append(proc)
    return proc


def test_agent_says_it_cannot_reach_the_broker(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    port = free_port()  # nobody listens there
    init_hub(tmp_path / "hub")
    enroll_device(tmp_path / "hub", "pi-1", tmp_path / "state")
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[device]\nid = "pi-1"\nstate_dir = "state"\n[broker]\nhost = "127.0.0.1"\nport = {port}\n'
    )
    proc = launch(processes, "-m", "edge_agent.cli", "run", "--config", str(config))
    err = Lines(proc.stderr)  # type: ignore[arg-type]
    line = err.expect("WARNING", f"MQTT broker 127.0.0.1:{port}: cannot connect", "retrying")
    assert "Connection refused" in line
    assert proc.poll() is None  # still running, still retrying


def test_serve_says_serving_only_once_connected(
    tmp_path: Path, broker: RunningBroker, processes: list[subprocess.Popen[str]]
) -> None:
    home = tmp_path / "hub"
    init_hub(home)
    broker.kill()  # its port is free now: the hub starts with no broker there
    where = f"{broker.host}:{broker.port}"
    proc = launch(
        processes,
        "-m",
        "cloud_hub.cli.app",
        "--home",
        str(home),
        "serve",
        "--broker-port",
        str(broker.port),
        "--http",
        "off",
    )
    out, err = Lines(proc.stdout), Lines(proc.stderr)  # type: ignore[arg-type]
    assert out.expect("connecting") == f"hub {home}: connecting to broker {where}"
    line = err.expect(f"MQTT broker {where}: cannot connect")
    assert "Connection refused" in line
    assert proc.poll() is None
    broker.restart()
    assert out.expect("serving") == f"hub {home}: connected to broker {where}; serving"
    err.expect(f"MQTT broker {where}: connected after")
    assert out.seen == [
        f"hub {home}: connecting to broker {where}",
        f"hub {home}: connected to broker {where}; serving",
    ]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(WAIT_S) == 0


def test_serve_stops_at_once_while_the_broker_is_unreachable(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """SIGTERM while the hub still waits for its first connection ends it promptly (it waited
    out a 30 s connect timeout before)."""
    home = tmp_path / "hub"
    init_hub(home)
    proc = launch(
        processes,
        "-m",
        "cloud_hub.cli.app",
        "--home",
        str(home),
        "serve",
        "--broker-port",
        str(free_port()),
        "--http",
        "off",
    )
    Lines(proc.stderr).expect("cannot connect")  # type: ignore[arg-type]
    asked = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(WAIT_S) == 0
    assert time.monotonic() - asked < 10  # well under the 30 s connect wait
