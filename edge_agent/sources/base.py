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
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from edge_agent.checks import positive_int
from edge_agent.errors import TransportError
from edge_agent.guard import run_guarded

log = logging.getLogger(__name__)

OnLine = Callable[[bytes], bool | None]  # False: not taken (the agent is stopping)
OnStatus = Callable[[str, TransportError | None], None]

_READ_CHUNK = 65536
POLL_S = 0.2  # longest a blocked read goes without looking at the stop event
_JOIN_S = 2.0  # longest stop() waits for a thread
DEFAULT_IMAGE_BYTES = 4 * 1024 * 1024  # max_image_bytes of a folder, camera or mqtt image input


@runtime_checkable
class Source(Protocol):
    """Something that produces sensor lines. `waits`: whether it can hold off reading (a file,
    a folder) without losing input; the agent then makes it wait for room in its backlog
    rather than refusing its lines (edge_agent.sources.backlog)."""

    name: str
    waits: bool

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
                lines.append(trim_cr(bytes(buf[start:nl])))
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
        tail = None if self._skipping or not self._buf else trim_cr(bytes(self._buf))
        self._buf.clear()
        self._skipping = False
        return tail


def trim_cr(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


class LineSource:
    """What every source shares: a name, the line limit, delivery to on_line, counters, and
    when the last line came."""

    waits = False  # a port or a broker does not wait for a reader that is behind

    def __init__(self, name: str, max_line_bytes: int, where: str) -> None:
        self.name = name
        self._on_status: OnStatus | None = None  # a source that reports its link sets it
        self._max_line_bytes = positive_int(where, "max_line_bytes", max_line_bytes)
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

    def _status(self, event: str, error: TransportError | None) -> None:
        """Tells the status callback, if any; a callback that raises is logged, never fatal."""
        if self._on_status is None:
            return
        try:
            self._on_status(event, error)
        except Exception:
            log.exception("source %s: the status callback raised", self.name)

    def _begin(self, on_line: OnLine) -> None:
        """start()'s first step: where lines go, and the idle clock starts."""
        self._on_line = on_line
        with self._stats_lock:
            self._last_input = time.monotonic()

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[key] = self._stats.get(key, 0) + n

    def _deliver(self, line: bytes) -> bool:
        """Hands `line` to on_line; False when it was not taken (the agent stopping). A line
        the callback raised on counts as taken: it is dropped, counted and logged (taking it
        again would raise again), and the source goes on."""
        return self._hand(line) is not False

    def _hand(self, line: bytes) -> bool | None:
        """`_deliver`, telling a line the callback raised on (None) from one it took (True)."""
        on_line = self._on_line
        if on_line is None:  # pragma: no cover - start() always sets it
            return False
        with self._stats_lock:
            self._last_input = time.monotonic()
        try:
            taken = on_line(line) is not False
        except Exception:
            self._count("callback-errors")
            log.exception("source %s: the line callback raised on an input", self.name)
            self._count("lines")
            return None
        if taken:
            self._count("lines")
        return taken

    def _deliver_all(self, splitter: LineSplitter, data: bytes) -> None:
        before = splitter.oversize
        for line in splitter.feed(data):
            self._deliver(line)
        if splitter.oversize != before:
            self._count("oversize", splitter.oversize - before)


class ThreadedSource(LineSource):
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


class Pacer:
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


def read_chunk(fd: int, stop: threading.Event) -> bytes | None:
    """Up to 64 KiB from fd (b"" at end of input); None if stopped while waiting for data."""
    while not stop.is_set():
        readable, _, _ = select.select([fd], [], [], POLL_S)
        if readable:
            return os.read(fd, _READ_CHUNK)
    return None


def transport_error(message: str, exc: BaseException) -> TransportError:
    err = TransportError(f"{message}: {exc}")
    err.__cause__ = exc
    return err
