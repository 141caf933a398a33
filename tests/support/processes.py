"""`edgehub` and `edge-agent` as real subprocesses (`launch`, into the `processes` fixture, which
kills what is still running at the end) and their pipes read line by line (`Lines`)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
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
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def launch(
    started: list[subprocess.Popen[str]], *argv: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """`python ARGV` from the checkout; `env` adds to (or replaces) this process's variables."""
    proc = subprocess.Popen(
        [sys.executable, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "", **(env or {})},
    )
    started.append(proc)
    return proc
