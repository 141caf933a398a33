"""Input sources: where sensor lines come from (a serial port, an MQTT topic, a file, stdin).

Every source has the same small interface (`Source`): ``start(on_line)`` begins delivering lines
from a background thread, ``stop()`` ends it promptly, ``name`` says which source it is. A line is
handed to ``on_line`` as bytes with its line terminator (``\\n``, ``\\r\\n``) removed; nothing is
parsed here, that is `edge_agent.sources.line_parser`'s job. For MQTT, each message payload is a
line
(a payload holding several newline-separated lines gives several lines).

Sources never raise out of their thread. Transport trouble (a port that cannot be opened, a USB
adapter pulled out, a broker gone) is turned into `TransportError`, recorded on the source
(`open_error`, `error`), reported to an optional status callback and counted in `stats()`; the
serial source then keeps trying to reopen its port, and the MQTT source to reconnect, until
stopped. `stats()` also tells the input's condition: open or not, seconds since its last line,
and how often a serial port was lost and reopened (what the agent reports as `inputs`).

A line longer than ``max_line_bytes`` is cut: its first ``max_line_bytes + 1`` bytes are
delivered (so a parser with the same limit rejects it as "garbage" and counts it) and the rest,
up to the next newline, is dropped. Keep the parser's limit no larger than the source's.
"""

from __future__ import annotations

import logging
import math
import os
import select
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import serial

from edge_agent.errors import ConfigError, TransportError
from edge_agent.guard import run_guarded
from edge_agent.mqtt.session import Backoff, BrokerAddress, MqttSession

log = logging.getLogger(__name__)

OnLine = Callable[[bytes], None]
OnStatus = Callable[[str, TransportError | None], None]

PARITIES: dict[str, str] = {
    "none": serial.PARITY_NONE,
    "even": serial.PARITY_EVEN,
    "odd": serial.PARITY_ODD,
    "mark": serial.PARITY_MARK,
    "space": serial.PARITY_SPACE,
}
BYTESIZES: tuple[int, ...] = (5, 6, 7, 8)
STOPBITS: tuple[float, ...] = (1, 1.5, 2)
FORMATS: tuple[str, ...] = ("csv", "json")
_READ_CHUNK = 65536
_POLL_S = 0.2  # longest a blocked read goes without looking at the stop event
_JOIN_S = 2.0  # longest stop() waits for a thread


@runtime_checkable
class Source(Protocol):
    """Something that produces sensor lines."""

    name: str

    def start(self, on_line: OnLine) -> None:
        """Begin delivering lines to `on_line` from a background thread."""

    def stop(self) -> None:
        """Stop delivering lines; returns promptly."""

    def stats(self, now: float | None = None) -> dict[str, int | float | bool]:
        """Counters, and the input's condition: open, idle_s, lost, reopened."""


class LineSplitter:
    """Cuts a byte stream into lines. Pure: bytes in, complete lines out."""

    def __init__(self, max_line_bytes: int = 4096) -> None:
        self._max = max_line_bytes
        self._buf = bytearray()
        self._skipping = False  # inside an oversized line, dropping bytes up to its newline
        self.oversize = 0

    def feed(self, data: bytes) -> list[bytes]:
        """The lines completed by `data`, terminators removed."""
        buf, limit, lines = self._buf, self._max, []
        buf += data
        start = 0
        while (nl := buf.find(b"\n", start)) >= 0:
            if self._skipping:
                self._skipping = False
            elif nl - start > limit:
                lines.append(bytes(buf[start : start + limit + 1]))
                self.oversize += 1
            else:
                lines.append(_trim_cr(bytes(buf[start:nl])))
            start = nl + 1
        del buf[:start]
        if self._skipping:
            buf.clear()
        elif len(buf) > limit:
            lines.append(bytes(buf[: limit + 1]))
            self.oversize += 1
            buf.clear()
            self._skipping = True
        return lines

    def flush(self) -> bytes | None:
        """The unterminated last line, if any (at end of input); resets the splitter."""
        tail = None if self._skipping or not self._buf else _trim_cr(bytes(self._buf))
        self._buf.clear()
        self._skipping = False
        return tail


def _trim_cr(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


class _LineSource:
    """What every source shares: a name, the line limit, delivery to on_line, counters, and
    when the last line came."""

    def __init__(self, name: str, max_line_bytes: int, where: str) -> None:
        self.name = name
        self._max_line_bytes = _positive_int(where, "max_line_bytes", max_line_bytes)
        self._on_line: OnLine | None = None
        self._stats_lock = threading.Lock()
        self._stats: dict[str, int] = {
            "lines": 0,
            "oversize": 0,
            "callback-errors": 0,
            "lost": 0,
            "reopened": 0,
        }
        self._last_input = time.monotonic()  # the last line, else the start

    def stats(self, now: float | None = None) -> dict[str, int | float | bool]:
        """Counters since construction (lines delivered, oversize lines, ...) and the input's
        condition at `now` (time.monotonic()): `open` (its port, file or connection is open),
        `idle_s` (seconds since the last line, or since start() if none came), `lost` and
        `reopened` (times a serial port went away and came back; 0 for the other sources,
        whose own counters tell of their connection)."""
        now = time.monotonic() if now is None else now
        with self._stats_lock:
            out: dict[str, int | float | bool] = dict(self._stats)
            idle = now - self._last_input
        out.update(open=self._input_open(), idle_s=round(max(0.0, idle), 1))
        return out

    def _input_open(self) -> bool:
        """Whether lines can arrive now; each kind of source says what that means."""
        raise NotImplementedError  # pragma: no cover - every source overrides it

    def _begin(self, on_line: OnLine) -> None:
        """start()'s first step: where lines go, and the idle clock starts."""
        self._on_line = on_line
        with self._stats_lock:
            self._last_input = time.monotonic()

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[key] = self._stats.get(key, 0) + n

    def _deliver(self, line: bytes) -> None:
        on_line = self._on_line
        if on_line is None:  # pragma: no cover - start() always sets it
            return
        with self._stats_lock:
            self._stats["lines"] += 1
            self._last_input = time.monotonic()
        try:
            on_line(line)
        except Exception:
            self._count("callback-errors")
            log.exception("source %s: the line callback raised; line dropped", self.name)

    def _deliver_all(self, splitter: LineSplitter, data: bytes) -> None:
        before = splitter.oversize
        for line in splitter.feed(data):
            self._deliver(line)
        if splitter.oversize != before:
            self._count("oversize", splitter.oversize - before)


class _ThreadedSource(_LineSource):
    """Start/stop machinery shared by the reading sources: one daemon thread, one stop event."""

    def __init__(self, name: str, max_line_bytes: int, where: str) -> None:
        super().__init__(name, max_line_bytes, where)
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()

    def start(self, on_line: OnLine) -> None:
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"source {self.name!r} is already running")
        self._stop_event = threading.Event()
        self._begin(on_line)
        self._before_start()
        self._thread = threading.Thread(
            target=self._run_guarded,
            args=(self._stop_event,),
            name=f"edgefleet-source {self.name}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop_event.set()
        self._interrupt()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_S)
            if thread.is_alive():
                log.warning(
                    "source %s: reader thread did not stop within %.1f s", self.name, _JOIN_S
                )

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run_guarded(self, stop: threading.Event) -> None:
        """A bug, not transport trouble, must not end the source: it is logged once
        (edge_agent.guard) and the source starts over as start() started it."""
        first = True

        def run() -> None:
            nonlocal first
            if not first:
                self._before_start()
            first = False
            self._run(stop)

        run_guarded(f"source {self.name}", run, stop, pause=1.0)

    # hooks for subclasses
    def _before_start(self) -> None:
        """Runs in start() before the thread: a place to fail fast."""

    def _interrupt(self) -> None:
        """Wake a blocked read so stop() is prompt."""

    def _run(self, stop: threading.Event) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class SerialSource(_ThreadedSource):
    """Lines from a serial port, surviving the port going away and coming back.

    When the port vanishes (a USB adapter unplugged), the source closes it, counts it `lost`,
    waits `reopen_delay` seconds and tries again until the port is back (counted `reopened`)
    or the source is stopped. `on_status(event, error)` is told "opened", "open-failed",
    "port-lost" and "closed" (from the reader thread; keep it quick).

    Framing: `parity` is none/even/odd/mark/space (or pyserial's N/E/O/M/S), `bytesize` 5-8
    data bits, `stopbits` 1, 1.5 or 2.
    """

    def __init__(
        self,
        port: str,
        baudrate: int = 115200,
        parity: str = "N",
        reopen_delay: float = 1.0,
        *,
        bytesize: int = 8,
        stopbits: float = 1,
        name: str | None = None,
        read_timeout: float = _POLL_S,
        max_line_bytes: int = 4096,
        on_status: OnStatus | None = None,
    ) -> None:
        where = "serial source"
        if not isinstance(port, str) or not port:
            raise ConfigError(f"{where}: 'port' expected a device path, found {port!r}")
        super().__init__(name or f"serial:{port}", max_line_bytes, where)
        self.port = port
        self.baudrate = _positive_int(where, "baudrate", baudrate)
        self.parity = _parity(where, parity)
        self.bytesize: int = _one_of(where, "bytesize", bytesize, BYTESIZES, "data bits", True)
        self.stopbits: float = _one_of(where, "stopbits", stopbits, STOPBITS, "stop bits", False)
        self.reopen_delay = _positive_float(where, "reopen_delay", reopen_delay, allow_zero=True)
        self._read_timeout = _positive_float(where, "read_timeout", read_timeout)
        self._on_status = on_status
        self._serial: serial.Serial | None = None
        self._serial_lock = threading.Lock()
        self._open_error: TransportError | None = None
        self._lost_since_open = False  # the reader thread's: the next open is a reopen
        self._stats.update({"opened": 0, "open-failed": 0})

    @property
    def open_error(self) -> TransportError | None:
        """Why the port is not open right now (None while it is open or before start)."""
        return self._open_error

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def _input_open(self) -> bool:
        return self.is_open

    def _run(self, stop: threading.Event) -> None:
        failing = False  # log the first of a run of failed opens, not every retry
        while not stop.is_set():
            port = self._open(quiet=failing)
            failing = port is None
            if port is not None:
                self._pump(port, stop)
            if stop.wait(self.reopen_delay):
                break
        self._status("closed", None)

    def _open(self, quiet: bool) -> serial.Serial | None:
        try:
            port = serial.Serial(
                self.port,
                self.baudrate,
                bytesize=self.bytesize,
                parity=self.parity,
                stopbits=self.stopbits,
                timeout=self._read_timeout,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            self._open_error = _transport_error(f"serial port {self.port!r}: cannot open", exc)
            self._count("open-failed")
            (log.debug if quiet else log.warning)("source %s: %s", self.name, self._open_error)
            self._status("open-failed", self._open_error)
            return None
        with self._serial_lock:
            self._serial = port
        self._open_error = None
        self._count("opened")
        if self._lost_since_open:
            self._lost_since_open = False
            self._count("reopened")
        log.info("source %s: port open", self.name)
        self._status("opened", None)
        return port

    def _pump(self, port: serial.Serial, stop: threading.Event) -> None:
        """Read until stopped or the port fails; always closes the port."""
        splitter = LineSplitter(self._max_line_bytes)
        try:
            while not stop.is_set():
                data = port.read(port.in_waiting or 1)
                if data:
                    self._deliver_all(splitter, data)
        except Exception as exc:  # SerialException/OSError; pyserial raises others on unplug too
            if not stop.is_set():
                self._lost(exc)
        finally:
            with self._serial_lock:
                self._serial = None
            _close_quietly(port)

    def _lost(self, exc: Exception) -> None:
        self._open_error = _transport_error(f"serial port {self.port!r}: lost", exc)
        self._count("lost")
        self._lost_since_open = True
        expected = isinstance(exc, serial.SerialException | OSError)
        log.warning("source %s: %s", self.name, self._open_error, exc_info=not expected)
        self._status("port-lost", self._open_error)

    def _interrupt(self) -> None:
        with self._serial_lock:
            port = self._serial
            if port is not None and hasattr(port, "cancel_read"):
                try:
                    port.cancel_read()
                except Exception:  # the port may be closing under us; stop() is best effort
                    log.debug("source %s: cancel_read failed", self.name, exc_info=True)

    def _status(self, event: str, error: TransportError | None) -> None:
        if self._on_status is None:
            return
        try:
            self._on_status(event, error)
        except Exception:
            log.exception("source %s: the status callback raised", self.name)


class FileSource(_ThreadedSource):
    """Lines replayed from a file, or from stdin when `path` is "-".

    `rate_hz` paces delivery (lines per second; None is as fast as possible). With `loop` the
    file starts over at its end; otherwise `finished` is set at end of file. A file that cannot
    be opened makes start() raise TransportError; a read error later is kept in `error`.
    """

    def __init__(
        self,
        path: str | Path,
        rate_hz: float | None = None,
        loop: bool = False,
        *,
        name: str | None = None,
        max_line_bytes: int = 4096,
    ) -> None:
        where = "file source"
        if not isinstance(path, str | Path) or str(path) == "":
            raise ConfigError(f"{where}: 'path' expected a file path or '-', found {path!r}")
        if not isinstance(loop, bool):
            raise ConfigError(f"{where}: 'loop' expected true or false, found {loop!r}")
        self.path = path
        self.is_stdin = isinstance(path, str) and path == "-"
        if loop and self.is_stdin:
            raise ConfigError(f"{where}: 'loop' expected false for stdin ('-'), found true")
        super().__init__(
            name or ("stdin" if self.is_stdin else f"file:{path}"), max_line_bytes, where
        )
        self.rate_hz = None if rate_hz is None else _positive_float(where, "rate_hz", rate_hz)
        self.loop = loop
        self.finished = threading.Event()
        self.error: TransportError | None = None
        self._fd: int | None = None
        self._owns_fd = False

    def _input_open(self) -> bool:
        return self.running and not self.finished.is_set()

    def _before_start(self) -> None:
        self.finished.clear()
        self.error = None
        if self.is_stdin:
            try:
                self._fd, self._owns_fd = sys.stdin.buffer.fileno(), False
            except (AttributeError, OSError, ValueError) as exc:
                raise _transport_error("stdin: not readable", exc) from exc
            return
        try:
            self._fd, self._owns_fd = os.open(self.path, os.O_RDONLY), True
        except OSError as exc:
            raise _transport_error(f"file {str(self.path)!r}: cannot open", exc) from exc

    def _run(self, stop: threading.Event) -> None:
        fd = self._fd
        assert fd is not None
        try:
            self._replay(fd, stop)
        except OSError as exc:
            self.error = _transport_error(f"source {self.name}: read failed", exc)
            log.warning("%s", self.error)
            self.finished.set()
        finally:
            if self._owns_fd:
                os.close(fd)
            self._fd = None

    def _replay(self, fd: int, stop: threading.Event) -> None:
        splitter = LineSplitter(self._max_line_bytes)
        pacer = _Pacer(self.rate_hz)
        delivered_this_pass = False
        while not stop.is_set():
            data = _read_chunk(fd, stop)
            if data is None:  # stopped while waiting for input
                return
            if data:
                for line in splitter.feed(data):
                    if not pacer.wait(stop):
                        return
                    self._deliver(line)
                    delivered_this_pass = True
                self._count("oversize", splitter.oversize)
                splitter.oversize = 0
                continue
            tail = splitter.flush()
            if tail is not None:
                if not pacer.wait(stop):
                    return
                self._deliver(tail)
                delivered_this_pass = True
            if not (self.loop and delivered_this_pass):
                if self.loop:
                    log.warning("source %s: nothing to replay; not looping", self.name)
                self.finished.set()
                return
            os.lseek(fd, 0, os.SEEK_SET)
            delivered_this_pass = False


class MqttSource(_LineSource):
    """Lines from an MQTT topic filter on a (usually local) broker: each payload is a line.

    The source has its own `MqttSession` (a clean session), separate from the agent's uplink
    session (local sensors may publish to a broker other than the hub's), so it reconnects the
    way every MQTT client of the agent does: capped exponential backoff with full jitter,
    `reconnect_delay` = (first, longest) seconds, waited out on the session's own thread. The
    subscription is made again on every connect. A payload holding several newline-separated
    lines gives several lines; a line longer than `max_line_bytes` is cut and counted as the
    other sources do. Retained messages replayed by the broker on subscribe are stale readings:
    they are skipped and counted.

    `on_status(event, error)` is told "connected", "subscribed", "connect-failed", "refused"
    (the broker said no: credentials, ACL), "subscribe-failed", "disconnected" and "closed",
    from the session's thread; keep it quick.
    """

    def __init__(
        self,
        topic: str,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        qos: int = 0,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        name: str | None = None,
        max_line_bytes: int = 4096,
        on_status: OnStatus | None = None,
        reconnect_delay: tuple[int, int] = (1, 30),
    ) -> None:
        where = "mqtt source"
        self.topic = check_topic(topic, where, "topic", wildcards=True)
        if not isinstance(host, str) or not host.strip():
            raise ConfigError(f"{where}: 'host' expected a host name or address, found {host!r}")
        self.host = host
        self.port = _port(where, "port", port)
        if type(qos) is not int or qos not in (0, 1):
            raise ConfigError(f"{where}: 'qos' expected 0 or 1, found {qos!r}")
        self.qos = qos
        for key, value in (("username", username), ("password", password)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{where}: '{key}' expected a non-empty string, found {value!r}")
        if password is not None and username is None:
            raise ConfigError(f"{where}: 'password' expected with a 'username', found no username")
        self.username = username
        self._password = password
        self.keepalive = _positive_int(where, "keepalive", keepalive)
        self._backoff = reconnect_backoff(where, reconnect_delay)
        super().__init__(name or f"mqtt:{host}:{self.port}/{topic}", max_line_bytes, where)
        self._on_status = on_status
        self._session: MqttSession | None = None
        self._lock = threading.Lock()  # start/stop
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.error: TransportError | None = None
        self._failing = False
        self._stats.update(
            {
                "messages": 0,
                "connected": 0,
                "connect-failed": 0,
                "refused": 0,
                "disconnected": 0,
                "subscribe-failed": 0,
                "retained-skipped": 0,
            }
        )

    @property
    def running(self) -> bool:
        return self._session is not None

    def _input_open(self) -> bool:
        return self.connected.is_set()

    def start(self, on_line: OnLine) -> None:
        with self._lock:
            if self._session is not None:
                raise RuntimeError(f"source {self.name!r} is already running")
            self._begin(on_line)
            self.error = None
            session = MqttSession(
                f"edgefleet-src-{uuid.uuid4().hex[:12]}",
                BrokerAddress(self.host, self.port, self.username, self._password, self.keepalive),
                persistent=False,
                on_connect=self._connected,
                on_connect_failed=self._connect_failed,
                on_disconnect=self._disconnected,
                on_subscribed=self._subscribed,
                backoff=self._backoff,  # reset by every start()
            )
            session.subscribe(self.topic, self._message, self.qos, on_retained=self._retained)
            session.start()
            self._session = session

    def stop(self) -> None:
        """Disconnect and end the session's thread (at once, even mid-backoff)."""
        with self._lock:
            session, self._session = self._session, None
        if session is None:
            return
        session.stop()
        self.connected.clear()
        self.subscribed.clear()
        self._status("closed", None)

    # -- session callbacks (the session's network thread) ------------------------------------

    def _connected(self) -> None:
        self.error = None
        self._failing = False
        self.connected.set()
        self._count("connected")
        log.info("source %s: connected", self.name)
        self._status("connected", None)

    def _connect_failed(self, error: TransportError, refused: bool) -> None:
        if refused:
            self._fail("refused", error)
            return
        first, self._failing = not self._failing, True  # log the first of a run of failures
        self.error = error
        self._count("connect-failed")
        (log.warning if first else log.debug)("source %s: %s", self.name, error)
        self._status("connect-failed", error)

    def _disconnected(self, error: TransportError) -> None:
        self.connected.clear()
        self.subscribed.clear()
        self._fail("disconnected", error)

    def _fail(self, what: str, error: TransportError) -> None:
        """Record, count, log and report one failure of the broker connection."""
        self.error = error
        self._count(what)
        log.warning("source %s: %s", self.name, error)
        self._status(what, error)

    def _subscribed(self, _topic: str, granted: bool) -> None:
        if not granted:
            self._fail(
                "subscribe-failed",
                TransportError(
                    f"MQTT broker {self.host}:{self.port}: subscription to {self.topic!r} refused"
                ),
            )
            return
        self.subscribed.set()
        self._status("subscribed", None)

    def _retained(self, _topic: str, _payload: bytes) -> None:
        self._count("messages")
        self._count("retained-skipped")

    def _message(self, _topic: str, payload: bytes) -> None:
        self._count("messages")
        if len(payload) <= self._max_line_bytes and b"\n" not in payload:
            self._deliver(_trim_cr(payload))  # the common case: one line, no splitter needed
            return
        splitter = LineSplitter(self._max_line_bytes)
        self._deliver_all(splitter, payload)
        tail = splitter.flush()
        if tail is not None:
            self._deliver(tail)

    def _status(self, event: str, error: TransportError | None) -> None:
        if self._on_status is None:
            return
        try:
            self._on_status(event, error)
        except Exception:
            log.exception("source %s: the status callback raised", self.name)


class _Pacer:
    """Spaces deliveries 1/rate apart without bursting to catch up; waits are stoppable."""

    def __init__(self, rate_hz: float | None) -> None:
        self._interval = None if rate_hz is None else 1.0 / rate_hz
        self._due = time.monotonic()

    def wait(self, stop: threading.Event) -> bool:
        """False when stopped before the next line is due."""
        if self._interval is None:
            return not stop.is_set()
        delay = self._due - time.monotonic()
        if stop.wait(delay) if delay > 0 else stop.is_set():
            return False
        self._due = max(self._due, time.monotonic()) + self._interval
        return True


def _read_chunk(fd: int, stop: threading.Event) -> bytes | None:
    """Up to 64 KiB from fd (b"" at end of input); None if stopped while waiting for data."""
    while not stop.is_set():
        readable, _, _ = select.select([fd], [], [], _POLL_S)
        if readable:
            return os.read(fd, _READ_CHUNK)
    return None


def source_from_config(cfg: Mapping[str, Any]) -> Source:
    """A source from its config table, e.g. {"kind": "serial", "port": "/dev/ttyUSB0"}.

    serial: port (required), baudrate, parity, bytesize, stopbits, reopen_delay, name,
    max_line_bytes.
    mqtt: topic (required; a subscription filter), host, port, qos, username, password,
    keepalive, name, max_line_bytes.
    file: path (required; "-" is stdin), rate_hz, loop, name, max_line_bytes.

    Building a source does no I/O (nothing is opened before start()), so this also validates.
    """
    where = "source config"
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where}: expected a table of settings, found {type(cfg).__name__}")
    kind = cfg.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        names = [repr(k) for k in _KINDS]
        expected = f"{', '.join(names[:-1])} or {names[-1]}"
        found = "nothing" if kind is None else repr(kind)
        hint = _suggest(kind, list(_KINDS)) if isinstance(kind, str) else ""
        raise ConfigError(f"{where}: 'kind' expected {expected}, found {found}.{hint}".rstrip("."))
    required, optional, build = _KINDS[kind]
    for key in required:
        if key not in cfg:
            raise ConfigError(f"{where} ({kind}): '{key}' is required, found nothing")
    allowed = {"kind", *required, *optional}
    for key in cfg:
        if key not in allowed:
            raise ConfigError(
                f"{where} ({kind}): unknown key {key!r},"
                f" expected one of {', '.join(sorted(allowed))}.{_suggest(str(key), allowed)}"
            )
    settings = {k: v for k, v in cfg.items() if k != "kind"}
    return build(**settings)


def input_from_config(cfg: Mapping[str, Any]) -> tuple[str, Source]:
    """An [[inputs]] table -> (line format, source): `source_from_config` plus the `format`
    key ("csv", the default, or "json") that tells the agent which parser its lines go to."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(
            f"source config: expected a table of settings, found {type(cfg).__name__}"
        )
    spec = dict(cfg)
    fmt = spec.pop("format", "csv")
    if fmt not in FORMATS:
        raise ConfigError(
            f"source config: 'format' expected {' or '.join(map(repr, FORMATS))}, found {fmt!r}"
        )
    return fmt, source_from_config(spec)


_KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], Callable[..., Source]]] = {
    "serial": (
        ("port",),
        ("baudrate", "parity", "bytesize", "stopbits", "reopen_delay", "name", "max_line_bytes"),
        SerialSource,
    ),
    "mqtt": (
        ("topic",),
        ("host", "port", "qos", "username", "password", "keepalive", "name", "max_line_bytes"),
        MqttSource,
    ),
    "file": (("path",), ("rate_hz", "loop", "name", "max_line_bytes"), FileSource),
}


# -- validation and helpers ----------------------------------------------------------------------


def _suggest(word: str, choices: Any) -> str:
    close = get_close_matches(word, sorted(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_topic(value: object, where: str, key: str = "topic", *, wildcards: bool) -> str:
    """An MQTT topic name (`wildcards=False`, for publishing) or subscription filter.

    Rules (MQTT 3.1.1 section 4.7): not empty, at most 65535 bytes of UTF-8, no NUL; in a
    filter '#' only as the whole last level and '+' only as a whole level; in a name neither.
    """
    if not isinstance(value, str) or not value:
        kind = "subscription filter" if wildcards else "topic name"
        raise ConfigError(f"{where}: '{key}' expected an MQTT {kind}, found {value!r}")
    if "\x00" in value or len(value.encode("utf-8", "surrogatepass")) > 65535:
        raise ConfigError(
            f"{where}: '{key}' expected at most 65535 bytes and no NUL character,"
            f" found {value!r:.80}"
        )
    levels = value.split("/")
    for i, level in enumerate(levels):
        if "#" not in level and "+" not in level:
            continue
        if not wildcards:
            raise ConfigError(
                f"{where}: '{key}' expected a topic name without wildcards ('+', '#'),"
                f" found {value!r}"
            )
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ConfigError(
                f"{where}: '{key}' expected '#' only as the whole last level"
                f" (like 'sensors/#'), found {value!r}"
            )
        if "+" in level and level != "+":
            raise ConfigError(
                f"{where}: '{key}' expected '+' only as a whole level"
                f" (like 'sensors/+/reading'), found {value!r}"
            )
    return value


def _port(where: str, key: str, value: object) -> int:
    if type(value) is not int or not 1 <= value <= 65535:
        raise ConfigError(f"{where}: '{key}' expected a port number 1-65535, found {value!r}")
    return value


def _one_of(
    where: str, key: str, value: object, choices: tuple[float, ...], what: str, integer: bool
) -> Any:
    """`value` if it is one of the numbers `choices` (an int where `integer`), as int if whole."""
    kinds = int if integer else int | float
    if isinstance(value, kinds) and not isinstance(value, bool) and value in choices:
        return int(value) if value == int(value) else float(value)
    shown = ", ".join(f"{c:g}" for c in choices)
    raise ConfigError(f"{where}: '{key}' expected {what}, one of {shown}; found {value!r}")


def _positive_int(where: str, key: str, value: object) -> int:
    if type(value) is not int or value <= 0:
        raise ConfigError(f"{where}: '{key}' expected a positive integer, found {value!r}")
    return value


def _positive_float(where: str, key: str, value: object, allow_zero: bool = False) -> float:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        expected = "a number >= 0" if allow_zero else "a positive number"
        raise ConfigError(f"{where}: '{key}' expected {expected}, found {value!r}")
    return float(value)  # type: ignore[arg-type]


def reconnect_backoff(where: str, value: object) -> Backoff:
    """The reconnect policy of a `reconnect_delay` = (first, longest) seconds setting: a full
    jitter `Backoff` whose ceiling starts at `first` and doubles up to `longest`."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise ConfigError(
            f"{where}: 'reconnect_delay' expected (first, longest) seconds, found {value!r}"
        )
    first = _positive_int(where, "reconnect_delay", value[0])
    longest = _positive_int(where, "reconnect_delay", value[1])
    if first > longest:
        raise ConfigError(
            f"{where}: 'reconnect_delay' expected first <= longest, found ({first}, {longest})"
        )
    return Backoff(initial=first, maximum=longest)


def _parity(where: str, value: object) -> str:
    if isinstance(value, str):
        key = value.strip().lower()
        if key in PARITIES:
            return PARITIES[key]
        if key.upper() in PARITIES.values():
            return key.upper()
    letters = ", ".join(PARITIES.values())
    raise ConfigError(
        f"{where}: 'parity' expected one of {letters} (or none, even, odd, mark, space),"
        f" found {value!r}"
    )


def _transport_error(message: str, exc: BaseException) -> TransportError:
    err = TransportError(f"{message}: {exc}")
    err.__cause__ = exc
    return err


def _close_quietly(port: serial.Serial) -> None:
    try:
        port.close()
    except Exception:  # closing a vanished port can fail; it is being dropped anyway
        log.debug("closing serial port failed", exc_info=True)
