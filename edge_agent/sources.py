"""Input sources: where sensor lines come from (a serial port, a file, stdin).

Every source has the same small interface (`Source`): ``start(on_line)`` begins delivering lines
from a daemon thread, ``stop()`` ends it promptly, ``name`` says which source it is. A line is
handed to ``on_line`` as bytes with its line terminator (``\\n``, ``\\r\\n``) removed; nothing is
parsed here, that is `edge_agent.line_parser`'s job.

Sources never raise out of their thread. Transport trouble (a port that cannot be opened, a USB
adapter pulled out) is turned into `TransportError`, recorded on the source (`open_error`,
`error`), reported to an optional status callback and counted in `stats()`; the serial source
then keeps trying to reopen its port until stopped.

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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import serial

from edge_agent.errors import ConfigError, TransportError

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


class _ThreadedSource:
    """Start/stop machinery shared by the sources: one daemon thread, one stop event."""

    def __init__(self, name: str, max_line_bytes: int, where: str) -> None:
        self.name = name
        self._max_line_bytes = _positive_int(where, "max_line_bytes", max_line_bytes)
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._on_line: OnLine | None = None
        self._stats_lock = threading.Lock()
        self._stats: dict[str, int] = {"lines": 0, "oversize": 0, "callback-errors": 0}

    def start(self, on_line: OnLine) -> None:
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"source {self.name!r} is already running")
        self._stop_event = threading.Event()
        self._on_line = on_line
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

    def stats(self) -> dict[str, int]:
        """Counters since construction (lines delivered, oversize lines, ...)."""
        with self._stats_lock:
            return dict(self._stats)

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[key] = self._stats.get(key, 0) + n

    def _deliver(self, line: bytes) -> None:
        on_line = self._on_line
        if on_line is None:  # pragma: no cover - start() always sets it
            return
        self._count("lines")
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

    def _run_guarded(self, stop: threading.Event) -> None:
        try:
            self._run(stop)
        except Exception:  # a bug, not transport trouble: never let it escape the thread
            log.exception("source %s: reader thread failed", self.name)

    # hooks for subclasses
    def _before_start(self) -> None:
        """Runs in start() before the thread: a place to fail fast."""

    def _interrupt(self) -> None:
        """Wake a blocked read so stop() is prompt."""

    def _run(self, stop: threading.Event) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class SerialSource(_ThreadedSource):
    """Lines from a serial port, surviving the port going away and coming back.

    When the port vanishes (a USB adapter unplugged), the source closes it, counts a
    "port-lost", waits `reopen_delay` seconds and tries again until the port is back or the
    source is stopped. `on_status(event, error)` is told "opened", "open-failed", "port-lost"
    and "closed" (from the reader thread; keep it quick).
    """

    def __init__(
        self,
        port: str,
        baudrate: int = 115200,
        parity: str = "N",
        reopen_delay: float = 1.0,
        *,
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
        self.reopen_delay = _positive_float(where, "reopen_delay", reopen_delay, allow_zero=True)
        self._read_timeout = _positive_float(where, "read_timeout", read_timeout)
        self._on_status = on_status
        self._serial: serial.Serial | None = None
        self._serial_lock = threading.Lock()
        self._open_error: TransportError | None = None
        self._stats.update({"opened": 0, "open-failed": 0, "port-lost": 0})

    @property
    def open_error(self) -> TransportError | None:
        """Why the port is not open right now (None while it is open or before start)."""
        return self._open_error

    @property
    def is_open(self) -> bool:
        return self._serial is not None

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
                self.port, self.baudrate, parity=self.parity, timeout=self._read_timeout
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
        self._count("port-lost")
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

    serial: port (required), baudrate, parity, reopen_delay, name, max_line_bytes.
    file: path (required; "-" is stdin), rate_hz, loop, name, max_line_bytes.
    """
    where = "source config"
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where}: expected a table of settings, found {type(cfg).__name__}")
    kind = cfg.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        expected = " or ".join(repr(k) for k in _KINDS)
        found = "nothing" if kind is None else repr(kind)
        raise ConfigError(f"{where}: 'kind' expected {expected}, found {found}")
    required, optional, build = _KINDS[kind]
    for key in required:
        if key not in cfg:
            raise ConfigError(f"{where} ({kind}): '{key}' is required, found nothing")
    allowed = {"kind", *required, *optional}
    for key in cfg:
        if key not in allowed:
            raise ConfigError(
                f"{where} ({kind}): unknown key {key!r},"
                f" expected one of {', '.join(sorted(allowed))}"
            )
    settings = {k: v for k, v in cfg.items() if k != "kind"}
    return build(**settings)


_KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], Callable[..., Source]]] = {
    "serial": (
        ("port",),
        ("baudrate", "parity", "reopen_delay", "name", "max_line_bytes"),
        SerialSource,
    ),
    "file": (("path",), ("rate_hz", "loop", "name", "max_line_bytes"), FileSource),
}


# -- validation and helpers ----------------------------------------------------------------------


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
