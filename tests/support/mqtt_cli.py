"""mosquitto's own command-line clients as a test's independent eyes on a broker: what the broker
granted at SUBSCRIBE (`suback`), a subscriber that collects what it is sent (`Subscriber`), and
`publish`. None of them is the code under test, and each speaks MQTT 3.1.1 as the product does,
so a refused subscription is a granted QoS of 128 (0x80) in the SUBACK."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import subprocess
import threading
from pathlib import Path
from typing import IO

from edge_agent.protocol.frozen import frozen

WAIT_S = 20.0
REFUSED = 128
_SUBACK = re.compile(r"^Subscribed \(mid: \d+\): ([\d, ]+)$")


@frozen
class Login:
    """Where and as whom a client connects (`cafile`: over TLS, trusting that CA; no user: an
    anonymous client, where the broker admits one)."""

    port: int
    user: str | None = None
    password: str | None = None
    host: str = "127.0.0.1"
    cafile: Path | None = None

    def argv(self) -> list[str]:
        tls = ["--cafile", str(self.cafile), "--insecure"] if self.cafile else []
        who = ["-u", self.user, "-P", self.password or ""] if self.user else []
        return [*("-V", "mqttv311", "-h", self.host, "-p", str(self.port)), *who, "-q", "1", *tls]


@frozen
class MqttCli:
    sub: str  # mosquitto_sub
    pub: str  # mosquitto_pub

    def suback(self, login: Login, *topics: str) -> list[int]:
        """Subscribe to `topics` in one SUBSCRIBE and leave: the QoS granted to each."""
        argv = [self.sub, *login.argv(), "-d", "-E", *_topics(topics)]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT_S, check=False)
        for line in out.stdout.splitlines():
            if found := _SUBACK.match(line):
                return [int(q) for q in found.group(1).split(",")]
        raise AssertionError(f"no SUBACK from {argv}: {out.stdout}{out.stderr}")

    def publish(self, login: Login, topic: str, *payloads: str) -> None:
        """Publish each payload (one line each) at QoS 1; returns once the broker took them
        all (mosquitto_pub leaves after the last PUBACK)."""
        argv = [self.pub, *login.argv(), "-t", topic, "-l"]
        out = subprocess.run(
            argv,
            input="".join(f"{p}\n" for p in payloads),
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            check=False,
        )
        assert out.returncode == 0, f"{argv}: {out.stdout}{out.stderr}"

    def send(self, login: Login, topic: str, payload: bytes) -> None:
        """Publish `payload` as it is (any bytes) at QoS 1, as an outsider would."""
        argv = [self.pub, *login.argv(), "-t", topic, "-s"]
        out = subprocess.run(argv, input=payload, capture_output=True, timeout=WAIT_S, check=False)
        assert out.returncode == 0, f"{argv}: {out.stdout!r}{out.stderr!r}"

    def subscriber(self, login: Login, *topics: str) -> Subscriber:
        return Subscriber(self.sub, login, topics)


def _topics(topics: tuple[str, ...]) -> list[str]:
    return [arg for t in topics for arg in ("-t", t)]


class Subscriber:
    """A running mosquitto_sub: `granted` once its SUBACK came, `messages` (topic, payload) as
    they arrive; `wait_for(n)` waits until it holds n. `stop()` ends it."""

    def __init__(self, binary: str, login: Login, topics: tuple[str, ...]) -> None:
        self.messages: list[tuple[str, str]] = []
        self.granted: list[int] | None = None
        self.lines: list[str] = []
        self._changed = threading.Condition()
        # its stdout is a terminal, so it writes each line at once (to a pipe, its debug lines,
        # the SUBACK among them, would wait in its buffer for the first message)
        master, slave = pty.openpty()
        self._proc = subprocess.Popen(
            [binary, *login.argv(), "-d", "-v", *_topics(topics)],
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
        )
        os.close(slave)
        out = os.fdopen(master, "r", encoding="utf-8", errors="replace", newline=None)
        threading.Thread(target=self._read, args=(out,), daemon=True).start()
        self._wait("its SUBACK", lambda: self.granted is not None)

    def _read(self, pipe: IO[str]) -> None:
        with contextlib.suppress(OSError), pipe:  # EIO: the terminal closed with the process
            for raw in pipe:
                line = raw.rstrip("\r\n")
                with self._changed:
                    self.lines.append(line)
                    if found := _SUBACK.match(line):
                        self.granted = [int(q) for q in found.group(1).split(",")]
                    elif not line.startswith("Client ") and "/" in line.partition(" ")[0]:
                        topic, _, payload = line.partition(" ")
                        self.messages.append((topic, payload))
                    self._changed.notify_all()
        with self._changed:
            self.lines.append("(mosquitto_sub ended)")
            self._changed.notify_all()

    def _wait(self, what: str, check: object) -> None:
        with self._changed:
            ok = self._changed.wait_for(check, WAIT_S)  # type: ignore[arg-type]
            assert ok, f"mosquitto_sub: timed out waiting for {what}: {self.lines[-20:]}"

    def wait_for(self, n: int) -> list[tuple[str, str]]:
        self._wait(f"{n} messages", lambda: len(self.messages) >= n)
        return list(self.messages)

    def wait_payload(self, payload: str) -> list[tuple[str, str]]:
        self._wait(f"a message {payload!r}", lambda: any(p == payload for _, p in self.messages))
        return list(self.messages)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
        self._proc.wait(WAIT_S)
