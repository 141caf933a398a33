"""Shared fixtures: a private mosquitto per test, small tmpfs mounts for disk faults.

Broker tests use a real mosquitto. Where none is installed they skip, except when
EDGEFLEET_REQUIRE_MOSQUITTO=1 (CI sets it): then they fail, so CI never goes green by skipping.
`broker.restart()` stops mosquitto cleanly (SIGTERM) and starts it again on the same port;
`broker.kill()` kills it with -9 instead (then `broker.restart()` brings it back).
Disk-fault tests mount real tmpfs file systems (root only), under the same rule.
TFLite runtimes the profiles name are prepared once into the checkout's .cache/
(EDGEFLEET_CACHE_DIR) when the session starts, as `edgehub runtimes prepare` does, so every Keras
conversion in the suite is checked on them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud_hub.broker.local import RunningBroker, find_mosquitto, start_mosquitto
from cloud_hub.store.url import STORE_ENV
from tests.support.mqtt_cli import MqttCli
from tests.support.postgres import fresh_database

REQUIRE_MOSQUITTO_ENV = "EDGEFLEET_REQUIRE_MOSQUITTO"
# Cached environments (converters.runtimes.envs: tflite-runtime 2.14 on numpy<2, which every
# Keras conversion is validated on) live in the checkout's .cache/, built once and reused by
# every test and every run after; the subprocesses the tests start (edgehub) inherit it.
os.environ.setdefault("EDGEFLEET_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".cache"))
# Piped, a table prints at its full width unless $COLUMNS says otherwise (cloud_hub.cli.output,
# which reads it once, on import). The tests read whole tables, so a width inherited from the shell
# or from pytest-xdist, which sets COLUMNS=80 in its workers, must not cut them; the tests of
# $COLUMNS set it themselves.
os.environ.pop("COLUMNS", None)


def pytest_sessionstart(session: pytest.Session) -> None:
    """The device runtimes conversions are checked on, prepared before any test converts (the
    first run builds them, about a minute; later runs find them in .cache/)."""
    from cloud_hub.runtimes.prepare import prepare
    from converters.runtimes.targets import ENVS

    for spec in ENVS.values():
        prepare(spec)
    # where they are, for tests that point EDGEFLEET_CACHE_DIR at an empty cache for a while
    os.environ["EDGEFLEET_CACHE_DIR_PREPARED"] = os.environ["EDGEFLEET_CACHE_DIR"]


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


@pytest.fixture(scope="session")
def mosquitto_clients() -> MqttCli:
    """mosquitto's command-line clients (mosquitto_sub, mosquitto_pub: Debian's
    mosquitto-clients); skips (or fails, when required) if they are missing."""
    found = {name: shutil.which(name) for name in ("mosquitto_sub", "mosquitto_pub")}
    sub, pub = found["mosquitto_sub"], found["mosquitto_pub"]
    if sub is not None and pub is not None:
        return MqttCli(sub, pub)
    missing = ", ".join(name for name, path in found.items() if path is None)
    if os.environ.get(REQUIRE_MOSQUITTO_ENV) == "1":
        pytest.fail(
            f"{REQUIRE_MOSQUITTO_ENV}=1 but {missing} not on PATH: install them "
            "(apt-get install mosquitto-clients)",
            pytrace=False,
        )
    pytest.skip(
        f"{missing} not installed (apt-get install mosquitto-clients); "
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


@dataclass
class Tmpfs:
    """A small tmpfs mounted at `path`: a disk that fills, frees and goes read-only for real."""

    path: Path

    @property
    def filler(self) -> Path:
        return self.path / "filler"

    def fill(self) -> int:
        """Write a file until the disk is full (ENOSPC); returns the bytes it took."""
        written = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for chunk in (65536, 4096, 1):
                with contextlib.suppress(OSError):
                    while n := os.write(fd, b"\0" * chunk):
                        written += n
        finally:
            os.close(fd)
        probe = self.path / "probe"
        with pytest.raises(OSError) as full:  # full indeed: not even one more page
            probe.write_bytes(b"x" * 4096)
        assert full.value.errno == errno.ENOSPC, full.value
        probe.unlink(missing_ok=True)
        return written

    def free(self) -> None:
        self.filler.unlink()

    def remount(self, *, read_only: bool) -> None:
        _mount_cmd(["mount", "-o", "remount," + ("ro" if read_only else "rw"), str(self.path)])


def _mount_cmd(argv: list[str]) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if out.returncode != 0:
        raise OSError(f"{' '.join(argv)}: {out.stderr.strip() or out.returncode}")


@pytest.fixture
def tmpfs() -> Iterator[Callable[[Path, str], Tmpfs]]:
    """`tmpfs(folder, "4m")` mounts a tmpfs of that size on `folder` (made if missing, what it
    held is copied in). Every mount is unmounted after the test. Mounting needs root and the
    mount tool: without them the test skips, or fails when EDGEFLEET_REQUIRE_MOSQUITTO=1 (CI)."""
    mounted: list[Path] = []

    def mount(folder: Path, size: str) -> Tmpfs:
        folder.mkdir(parents=True, exist_ok=True)
        held = folder.with_name(folder.name + ".before-tmpfs")
        shutil.copytree(folder, held)
        try:
            if shutil.which("mount") is None:
                raise OSError("no mount command on PATH")
            _mount_cmd(
                ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)]
            )
        except OSError as exc:
            message = f"cannot mount a tmpfs for a disk-fault test ({exc}); it needs root"
            if os.environ.get(REQUIRE_MOSQUITTO_ENV) == "1":
                pytest.fail(f"{REQUIRE_MOSQUITTO_ENV}=1 but {message}", pytrace=False)
            pytest.skip(f"{message}; set {REQUIRE_MOSQUITTO_ENV}=1 to make this a failure")
        mounted.append(folder)
        shutil.copytree(held, folder, dirs_exist_ok=True)
        shutil.rmtree(held)
        return Tmpfs(folder)

    try:
        yield mount
    finally:
        for folder in reversed(mounted):
            try:
                _mount_cmd(["umount", str(folder)])
            except OSError:  # still busy (a process that outlived its test): detach it
                _mount_cmd(["umount", "--lazy", str(folder)])


@pytest.fixture(autouse=True)
def _store_env() -> Iterator[None]:
    """`edgehub --store` run in-process sets EDGEHUB_STORE for the process: not for the next
    test."""
    before = os.environ.get(STORE_ENV)
    yield
    if before is None:
        os.environ.pop(STORE_ENV, None)
    else:
        os.environ[STORE_ENV] = before


@pytest.fixture(params=["sqlite", "postgresql"])
def each_store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test once on the SQLite file in the hub's home and once on a fresh PostgreSQL
    database: every store the test (or a hub it starts) opens by `store_url` is that one
    (EDGEHUB_STORE, as `edgehub --store` sets it). Yields the engine's name."""
    if request.param == "sqlite":
        monkeypatch.delenv(STORE_ENV, raising=False)
        yield "sqlite"
        return
    with fresh_database() as url:
        monkeypatch.setenv(STORE_ENV, url)
        yield "postgresql"
