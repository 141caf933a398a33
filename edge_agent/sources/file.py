"""A file (or stdin) as a source of lines, optionally paced at a rate and looped."""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

from edge_agent.checks import positive_float
from edge_agent.errors import ConfigError, TransportError
from edge_agent.sources.base import LineSplitter, Pacer, ThreadedSource, read_chunk, transport_error

log = logging.getLogger(__name__)


class FileSource(ThreadedSource):
    """Lines replayed from a file, or from stdin when `path` is "-".

    `rate_hz` paces delivery (lines per second; None is as fast as possible). With `loop` the
    file starts over at its end; otherwise `finished` is set at end of file. A file that cannot
    be opened makes start() raise TransportError; a read error later is kept in `error`.
    """

    waits = True  # a file waits; so does stdin's writer, held by the pipe

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
        self.rate_hz = None if rate_hz is None else positive_float(where, "rate_hz", rate_hz)
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
                raise transport_error("stdin: not readable", exc) from exc
            return
        try:
            self._fd, self._owns_fd = os.open(self.path, os.O_RDONLY), True
        except OSError as exc:
            raise transport_error(f"file {str(self.path)!r}: cannot open", exc) from exc

    def _run(self, stop: threading.Event) -> None:
        fd = self._fd
        assert fd is not None
        try:
            self._replay(fd, stop)
        except OSError as exc:
            self.error = transport_error(f"source {self.name}: read failed", exc)
            log.warning("%s", self.error)
            self.finished.set()
        finally:
            if self._owns_fd:
                os.close(fd)
            self._fd = None

    def _replay(self, fd: int, stop: threading.Event) -> None:
        splitter = LineSplitter(self._max_line_bytes)
        pacer = Pacer(self.rate_hz)
        delivered_this_pass = False
        while not stop.is_set():
            data = read_chunk(fd, stop)
            if data is None:  # stopped while waiting for input
                return
            if data:
                for line in splitter.feed(data):
                    if not pacer.wait(stop) or not self._deliver(line):
                        return  # stopping (the agent too: the line was not taken)
                    delivered_this_pass = True
                self._count("oversize", splitter.oversize)
                splitter.oversize = 0
                continue
            tail = splitter.flush()
            if tail is not None:
                if not pacer.wait(stop) or not self._deliver(tail):
                    return
                delivered_this_pass = True
            if not (self.loop and delivered_this_pass):
                if self.loop:
                    log.warning("source %s: nothing to replay; not looping", self.name)
                self.finished.set()
                return
            os.lseek(fd, 0, os.SEEK_SET)
            delivered_this_pass = False
