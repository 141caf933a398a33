"""A serial port as a source of lines (pyserial): reopened when the adapter comes back."""

from __future__ import annotations

import logging
import threading

import serial

from edge_agent.checks import one_of, positive_float, positive_int
from edge_agent.errors import ConfigError, TransportError
from edge_agent.sources.base import POLL_S, LineSplitter, OnStatus, ThreadedSource, transport_error

log = logging.getLogger(__name__)

PARITIES: dict[str, str] = {
    "none": serial.PARITY_NONE,
    "even": serial.PARITY_EVEN,
    "odd": serial.PARITY_ODD,
    "mark": serial.PARITY_MARK,
    "space": serial.PARITY_SPACE,
}
BYTESIZES: tuple[int, ...] = (5, 6, 7, 8)
STOPBITS: tuple[float, ...] = (1, 1.5, 2)


class SerialSource(ThreadedSource):
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
        read_timeout: float = POLL_S,
        max_line_bytes: int = 4096,
        on_status: OnStatus | None = None,
    ) -> None:
        where = "serial source"
        if not isinstance(port, str) or not port:
            raise ConfigError(f"{where}: 'port' expected a device path, found {port!r}")
        super().__init__(name or f"serial:{port}", max_line_bytes, where)
        self.port = port
        self.baudrate = positive_int(where, "baudrate", baudrate)
        self.parity = check_parity(where, parity)
        self.bytesize: int = one_of(where, "bytesize", bytesize, BYTESIZES, "data bits", True)
        self.stopbits: float = one_of(where, "stopbits", stopbits, STOPBITS, "stop bits", False)
        self.reopen_delay = positive_float(where, "reopen_delay", reopen_delay, allow_zero=True)
        self._read_timeout = positive_float(where, "read_timeout", read_timeout)
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
            self._open_error = transport_error(f"serial port {self.port!r}: cannot open", exc)
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
        self._open_error = transport_error(f"serial port {self.port!r}: lost", exc)
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


def check_parity(where: str, value: object) -> str:
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


def _close_quietly(port: serial.Serial) -> None:
    try:
        port.close()
    except Exception:  # closing a vanished port can fail; it is being dropped anyway
        log.debug("closing serial port failed", exc_info=True)
