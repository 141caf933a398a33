"""Shared fixtures: a private mosquitto per test.

Broker tests use a real mosquitto. Where none is installed they skip, except when
EDGEFLEET_REQUIRE_MOSQUITTO=1 (CI sets it): then they fail, so CI never goes green by skipping.
`broker.restart()` stops mosquitto cleanly (SIGTERM) and starts it again on the same port;
`broker.kill()` kills it with -9 instead (then `broker.restart()` brings it back).
"""

from __future__ import annotations

import os
import shutil
import subprocess
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
