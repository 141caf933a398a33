"""Shared fixtures: a private mosquitto per test.

Broker tests use a real mosquitto. Where none is installed they skip, except when
EDGEFLEET_REQUIRE_MOSQUITTO=1 (CI sets it): then they fail, so CI never goes green by skipping.
`broker.restart()` stops mosquitto cleanly (SIGTERM) and starts it again on the same port;
`kill_broker(broker)` kills it with -9 instead (then `broker.restart()` brings it back).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_hub.broker import RunningBroker, find_mosquitto, start_mosquitto

REQUIRE_MOSQUITTO_ENV = "EDGEFLEET_REQUIRE_MOSQUITTO"


@pytest.fixture(scope="session")
def mosquitto_binary() -> str:
    """Path of the mosquitto binary; skips (or fails, when required) if there is none."""
    binary = find_mosquitto()
    if binary is not None:
        return binary
    if os.environ.get(REQUIRE_MOSQUITTO_ENV) == "1":
        pytest.fail(
            f"{REQUIRE_MOSQUITTO_ENV}=1 but no mosquitto binary on PATH or in /usr/sbin, "
            "/usr/local/sbin: install it (apt-get install mosquitto)",
            pytrace=False,
        )
    pytest.skip(
        "mosquitto is not installed (apt-get install mosquitto); "
        f"set {REQUIRE_MOSQUITTO_ENV}=1 to make this a failure"
    )


@pytest.fixture
def broker(mosquitto_binary: str, tmp_path: Path) -> Iterator[RunningBroker]:
    """A private mosquitto on a free port, config/log/data under tmp_path/mosquitto."""
    running = start_mosquitto(tmp_path / "mosquitto", binary=mosquitto_binary)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def auth_broker(mosquitto_binary: str, tmp_path: Path) -> Iterator[RunningBroker]:
    """A private mosquitto that admits only user "sensor" with password "s3cret"."""
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.skip("mosquitto_passwd is not installed")
    pw_file = tmp_path / "passwd"
    subprocess.run([passwd, "-b", "-c", str(pw_file), "sensor", "s3cret"], check=True)
    running = start_mosquitto(
        tmp_path / "mosquitto",
        binary=mosquitto_binary,
        extra_config=f"allow_anonymous false\npassword_file {pw_file}\n",
    )
    try:
        yield running
    finally:
        running.stop()


def kill_broker(running: RunningBroker, timeout: float = 10.0) -> None:
    """SIGKILL a mosquitto started by `start_mosquitto` (no goodbye to its clients, nothing
    saved) and return once its port refuses connections. `running.restart()` starts it again
    on the same port (its stop step then only reaps the dead process)."""
    assert running.kind == "mosquitto" and running.workdir is not None, running
    conf = str(running.workdir / "mosquitto.conf")
    pids = [pid for pid in _pids() if conf in _cmdline(pid)]
    assert len(pids) == 1, f"expected one mosquitto running {conf}, found pids {pids}"
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((running.host, running.port), timeout=0.2):
                pass
        except OSError:
            return
        assert time.monotonic() < deadline, f"{running} still accepts connections after kill -9"
        time.sleep(0.02)  # polling the port until the kernel has closed it


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # the process ended meanwhile
        return []
    return raw.decode(errors="replace").split("\0")
