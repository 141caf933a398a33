"""Start and stop a local MQTT broker: a private mosquitto, or an in-process amqtt fallback.

Used by the tests (each test gets its own broker on a free port, with its own config and data
dir), by the hub demo, and by the benchmarks. mosquitto is preferred: it is what devices talk to
in production. amqtt is the fallback only where no mosquitto binary exists; note that it keeps
nothing across a restart and, with anonymous access on, drops every session on disconnect
(amqtt treats anonymous sessions as clean), so it cannot stand in for persistent-session tests.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from edge_agent.errors import ConfigError, TransportError

Stop = Callable[[bool], None]  # stops a broker; True: SIGKILL, nothing saved

__all__ = [
    "RunningBroker",
    "find_mosquitto",
    "free_port",
    "start_amqtt",
    "start_broker",
    "start_mosquitto",
]

_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin")
_STOP_TIMEOUT = 5.0
_CONNECT_PROBE_TIMEOUT = 0.2
_POLL_INTERVAL = 0.02
_LOG_TAIL_LINES = 20
_RUNNING_MARK = " running"  # "mosquitto version 2.0.11 running", logged once listeners are open

# QoS 1 messages the broker sends a client before that client's acknowledgements (mosquitto's
# stock is 20). The hub acknowledges a device message only once it committed it
# (cloud_hub.hub), so this bounds how many messages one hub worker stores per transaction, and
# with it the hub's ingest: at 20 a transaction's round trips are paid for every 20 messages.
MAX_INFLIGHT = 1000

# General options written into every generated mosquitto.conf. An option of the same name in
# `extra_config` replaces the default (so `allow_anonymous false` plus a password file works).
_MOSQUITTO_DEFAULTS: dict[str, str] = {
    "allow_anonymous": "true",
    "persistence": "true",
    "autosave_interval": "60",
    "max_inflight_messages": str(MAX_INFLIGHT),
    "max_queued_messages": "10000",
    "persistent_client_expiration": "14d",
    "set_tcp_nodelay": "true",
}


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary, also looking in the sbin dirs Debian installs it to."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return shutil.which("mosquitto", path=os.pathsep.join(_SBIN_DIRS))


PORT_FLOOR = 10_000  # free_port picks from here up to the ephemeral range
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now, below the kernel's ephemeral
    range where there is room: a port in that range can be taken as the source port of any
    outgoing connection between now and when the caller binds it (a broker or the dashboard
    then finds its port in use). Else, and when none of a few draws is free, the OS picks."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        low = int(EPHEMERAL_RANGE.read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        low = PORT_FLOOR
    draws = [random.randrange(PORT_FLOOR, low) for _ in range(20)] if low > PORT_FLOOR else []
    for port in [*draws, 0]:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            picked: int = sock.getsockname()[1]
            return picked
    raise TransportError(f"{host}: no free TCP port to listen on")


class RunningBroker:
    """A broker this process started. `stop()` is idempotent; `restart()` starts it again on
    the same host and port (for mosquitto also with the same config and data dir, so retained
    messages and persistent sessions survive)."""

    def __init__(
        self,
        host: str,
        port: int,
        kind: str,
        *,
        start: Callable[[], Stop],
        stop: Stop,
        workdir: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.kind = kind
        self.workdir = workdir
        self._start = start
        self._stop: Stop | None = stop
        self._lock = threading.Lock()
        _live.add(self)

    @property
    def running(self) -> bool:
        return self._stop is not None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        """mosquitto's log file (None for amqtt, which logs through `logging`)."""
        return None if self.workdir is None else self.workdir / "mosquitto.log"

    def stop(self, *, hard: bool = False) -> None:
        """Stop the broker; `hard` is a SIGKILL: mosquitto loses what it held in memory since
        its last autosave (queued messages, sessions), as after a power cut."""
        with self._lock:
            stop, self._stop = self._stop, None
        _live.discard(self)
        if stop is not None:
            stop(hard)

    def kill(self) -> None:
        self.stop(hard=True)

    def restart(self) -> None:
        """Stop (if running) and start again on the same port. Raises TransportError."""
        self.stop()
        with self._lock:
            self._stop = self._start()
        _live.add(self)

    def __enter__(self) -> RunningBroker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"RunningBroker(kind={self.kind!r}, url={self.url!r}, {state})"


# Brokers still running when the interpreter exits are stopped, so a crashed test run does not
# leave mosquitto processes (in their own process groups) holding ports.
_live: set[RunningBroker] = set()


@atexit.register
def _stop_all() -> None:
    for running in list(_live):
        with contextlib.suppress(Exception):
            running.stop()


# --------------------------------------------------------------------------- mosquitto


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _conf_keys(extra_config: str) -> set[str]:
    keys = set()
    for line in extra_config.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keys.add(stripped.split()[0])
    return keys


def _mosquitto_conf(workdir: Path, host: str, port: int, extra_config: str) -> str:
    if any(ch.isspace() for ch in str(workdir)):
        raise ConfigError(
            f"mosquitto workdir: expected a path without whitespace (mosquitto.conf cannot "
            f"quote it), got {str(workdir)!r}"
        )
    overridden = _conf_keys(extra_config)
    lines = [
        "# Generated by cloud_hub.broker.local; rewritten on every start.",
        f"listener {port} {host}",
        *(
            []
            if "persistence_location" in overridden
            else [f"persistence_location {workdir / 'data'}/"]
        ),
        "persistence_file mosquitto.db",
        f"log_dest file {workdir / 'mosquitto.log'}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        # When run as root mosquitto drops to user `mosquitto`, which cannot write our data dir.
        f"user {pwd.getpwuid(os.getuid()).pw_name}",
    ]
    lines += [
        f"{key} {value}" for key, value in _MOSQUITTO_DEFAULTS.items() if key not in overridden
    ]
    if extra_config.strip():
        lines += ["", "# extra_config", extra_config.strip()]
    return "\n".join(lines) + "\n"


def _log_since(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _wait_listening(
    proc: subprocess.Popen[bytes], host: str, port: int, log: tuple[Path, int], deadline: float
) -> str | None:
    """None once this mosquitto says it is running and `host:port` accepts connections;
    otherwise why not. Checking the log (from `log`'s byte offset on) as well as the port keeps
    a port squatter from passing for our broker while mosquitto is still failing to bind."""
    while True:
        code = proc.poll()
        if code is not None:
            return f"mosquitto exited with code {code} during start-up"
        if _RUNNING_MARK in _log_since(*log):
            try:
                with socket.create_connection((host, port), timeout=_CONNECT_PROBE_TIMEOUT):
                    pass
            except OSError:
                pass
            else:
                return None
        if time.monotonic() >= deadline:
            return "mosquitto did not accept connections in time"
        time.sleep(_POLL_INTERVAL)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group (mosquitto saves its database on SIGTERM), SIGKILL if stuck."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _launch_mosquitto(
    binary: str, workdir: Path, host: str, port: int, extra_config: str, ready_timeout: float
) -> Stop:
    """Write the config, start mosquitto, wait until it listens; returns its stop function."""
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(_mosquitto_conf(workdir, host, port, extra_config), encoding="utf-8")
    stderr_path = workdir / "mosquitto.stderr"
    log_path = workdir / "mosquitto.log"
    log_offset = log_path.stat().st_size if log_path.exists() else 0
    stderr_offset = stderr_path.stat().st_size if stderr_path.exists() else 0
    stderr: IO[bytes] = stderr_path.open("ab")
    try:
        proc = subprocess.Popen(
            [binary, "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,
            cwd=workdir,
        )
    except OSError as exc:
        stderr.close()
        raise TransportError(f"cannot run mosquitto ({binary}): {exc}") from exc

    def stop(hard: bool = False) -> None:
        try:
            if hard and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            _terminate(proc)
        finally:
            stderr.close()

    failure = _wait_listening(
        proc, host, port, (log_path, log_offset), time.monotonic() + ready_timeout
    )
    if failure is not None:
        stop()
        details = "\n".join(
            part
            for part in (
                _tail(_log_since(stderr_path, stderr_offset)),
                _tail(_log_since(log_path, log_offset)),
            )
            if part.strip()
        )
        raise TransportError(
            f"{failure}: expected a listener on {host}:{port} within {ready_timeout:g}s "
            f"(config {conf}).\n{details or '(no log output)'}"
        )
    return stop


def start_mosquitto(
    workdir: Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    extra_config: str = "",
    ready_timeout: float = 10.0,
    *,
    binary: str | None = None,
) -> RunningBroker:
    """Start a private mosquitto with its config, log and data dir in `workdir`.

    Calling it again with the same workdir and port (or `RunningBroker.restart()`) brings the
    same broker back with its persisted retained messages, sessions and queued messages.
    Raises TransportError if mosquitto is missing or does not come up within `ready_timeout`.
    """
    exe = binary or find_mosquitto()
    if exe is None:
        raise TransportError(
            "mosquitto not found on PATH or in /usr/sbin, /usr/local/sbin "
            "(install it: apt-get install mosquitto)"
        )
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    attempts = 3 if port is None else 1
    for attempt in range(attempts):
        chosen = port if port is not None else free_port(host)

        def start(chosen: int = chosen) -> Stop:
            return _launch_mosquitto(exe, workdir, host, chosen, extra_config, ready_timeout)

        try:
            stop = start()
        except TransportError as exc:
            # A port picked by free_port() can be taken before mosquitto binds it: try another.
            if attempt + 1 < attempts and "Address already in use" in str(exc):
                continue
            raise
        return RunningBroker(host, chosen, "mosquitto", start=start, stop=stop, workdir=workdir)
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- amqtt


def _quiet_amqtt_logging() -> None:
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _launch_amqtt(host: str, port: int, ready_timeout: float) -> Stop:
    """Run an amqtt broker on its own event loop in a daemon thread; returns its stop function."""
    from amqtt.broker import Broker  # the hub extra; imported only when the fallback is used

    config: dict[str, Any] = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict[str, Any] = {}

    async def boot() -> Any:
        broker = Broker(config, loop=loop)
        await broker.start()
        return broker

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            try:
                state["broker"] = loop.run_until_complete(boot())
            except BaseException as exc:
                state["error"] = exc
                return
            finally:
                started.set()
            loop.run_forever()
        finally:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=run, name=f"amqtt-{host}:{port}", daemon=True)
    thread.start()
    if not started.wait(ready_timeout):
        loop.call_soon_threadsafe(loop.stop)
        raise TransportError(f"amqtt broker on {host}:{port} did not start in {ready_timeout:g}s")
    if "error" in state:
        thread.join(_STOP_TIMEOUT)
        cause = state["error"]
        raise TransportError(f"amqtt broker on {host}:{port} failed to start: {cause}") from cause

    def stop(_hard: bool = False) -> None:  # nothing persisted: a kill is a stop
        try:
            future = asyncio.run_coroutine_threadsafe(state["broker"].shutdown(), loop)
            future.result(timeout=_STOP_TIMEOUT)
        except Exception as exc:  # a broker that fails to shut down is still torn down below
            logging.getLogger(__name__).warning("amqtt shutdown on %s:%s: %s", host, port, exc)
        finally:
            if not loop.is_closed():
                loop.call_soon_threadsafe(loop.stop)
            thread.join(_STOP_TIMEOUT)

    return stop


def start_amqtt(
    host: str = "127.0.0.1", port: int | None = None, ready_timeout: float = 10.0
) -> RunningBroker:
    """Start the in-process amqtt fallback broker (anonymous access, no persistence)."""
    if ":" in host:
        # amqtt 0.12 keeps the brackets of "[::1]:1883" in the address it binds, so it fails.
        raise ConfigError(f"amqtt broker host: expected an IPv4 address or name, got {host!r}")
    _quiet_amqtt_logging()
    chosen = port if port is not None else free_port(host)

    def start() -> Stop:
        return _launch_amqtt(host, chosen, ready_timeout)

    return RunningBroker(host, chosen, "amqtt", start=start, stop=start())


# --------------------------------------------------------------------------- choice


def start_broker(
    workdir: Path, prefer: str = "auto", host: str = "127.0.0.1", port: int | None = None
) -> RunningBroker:
    """mosquitto if its binary exists, else amqtt. `prefer` is "auto", "mosquitto" or "amqtt";
    "mosquitto" raises TransportError when the binary is missing instead of falling back."""
    if prefer not in ("auto", "mosquitto", "amqtt"):
        raise ConfigError(
            f"broker preference: expected 'auto', 'mosquitto' or 'amqtt', got {prefer!r}"
        )
    if prefer != "amqtt":
        binary = find_mosquitto()
        if binary is not None:
            return start_mosquitto(workdir, host=host, port=port, binary=binary)
        if prefer == "mosquitto":
            raise TransportError(
                "broker preference 'mosquitto': expected a mosquitto binary on PATH or in "
                "/usr/sbin, /usr/local/sbin, found none (apt-get install mosquitto)"
            )
    return start_amqtt(host=host, port=port)
