"""`Socat`: a pty pair made by socat behind two symlinks, as a serial port that can vanish (socat
terminated, as a USB adapter pulled out) and return (started again)."""

from __future__ import annotations

import os
import queue
import subprocess
import threading
from pathlib import Path

WAIT_S = 5.0  # upper bound for every wait on another thread; never reached when things work


class Socat:
    """A socat-made pty pair behind two symlinks; the links vanish when socat is terminated."""

    def __init__(self, directory: Path) -> None:
        self.a = directory / "ttyA"  # the "device" end the test writes to
        self.b = directory / "ttyB"  # the "port" end the source reads from
        self.proc: subprocess.Popen[bytes] | None = None
        self.reader: threading.Thread | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "socat",
                "-d",
                "-d",
                f"pty,raw,echo=0,link={self.a}",
                f"pty,raw,echo=0,link={self.b}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        log: queue.Queue[bytes] = queue.Queue()
        stderr = self.proc.stderr
        assert stderr is not None

        def pump() -> None:  # until socat exits; the pipe is closed by its only reader
            with stderr:
                for line in stderr:
                    log.put(line)

        self.reader = threading.Thread(target=pump, daemon=True)
        self.reader.start()
        while b"starting data transfer loop" not in log.get(timeout=WAIT_S):
            pass
        assert self.a.is_symlink() and self.b.is_symlink()

    def write(self, data: bytes) -> None:
        fd = os.open(self.a, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=WAIT_S)
        if self.reader is not None:
            self.reader.join(WAIT_S)
