"""MqttSession's connection: the backoff is waited out on the session's own thread, before paho
opens a socket, so a wait longer than the keepalive cannot kill the new connection; refused
connections and refusing brokers back off instead of spinning; stop() wakes any wait.

Against real sockets: a port nobody listens on, a listener that hangs up on every connection,
and a private mosquitto killed with -9. Nothing sleeps to synchronise: the tests wait on events
with timeouts, and count attempts with something other than the session (a listener's accept
count, mosquitto's log, the clock).
"""

from __future__ import annotations

import itertools
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.broker.local import RunningBroker, free_port
from edge_agent.errors import TransportError
from edge_agent.mqtt.session import Backoff, BrokerAddress, MqttSession

WAIT_S = 10.0  # the longest any one condition may take before the test fails


class Link:
    """A session and what it reported, each kind of event on its own queue."""

    def __init__(self, address: BrokerAddress, backoff: Backoff, client_id: str = "s-1") -> None:
        self.failures: queue.Queue[tuple[TransportError, bool, float]] = queue.Queue()
        self.lost: queue.Queue[TransportError] = queue.Queue()
        self.messages: queue.Queue[bytes] = queue.Queue()
        self.session = MqttSession(
            client_id,
            address,
            persistent=False,
            backoff=backoff,
            on_connect_failed=lambda e, refused: self.failures.put((e, refused, time.monotonic())),
            on_disconnect=self.lost.put,
        )

    def next_failure(self) -> tuple[TransportError, bool, float]:
        return self.failures.get(timeout=WAIT_S)


@pytest.fixture
def links() -> Iterator[Callable[..., Link]]:
    made: list[Link] = []

    def make(address: BrokerAddress, backoff: Backoff, client_id: str = "s-1") -> Link:
        made.append(Link(address, backoff, client_id))
        return made[-1]

    yield make
    for link in made:
        link.session.stop()


def fixed(delay: float) -> Backoff:
    """Every wait exactly `delay` seconds."""
    return Backoff(initial=delay, maximum=delay, jitter="none")


class HangUp:
    """A TCP listener that accepts every connection and closes it at once (a broker that dies
    during the handshake), counting and timing the accepts."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.accepted: list[float] = []
        self.changed = threading.Condition()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed by close()
                return
            conn.close()
            with self.changed:
                self.accepted.append(time.monotonic())
                self.changed.notify_all()

    def wait_accepted(self, n: int) -> list[float]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.accepted) >= n, WAIT_S), self.accepted
            return list(self.accepted)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept() (close() alone does not)
        self.sock.close()
        self._thread.join(WAIT_S)


# =========================================================================== without a broker


def test_first_attempt_is_immediate_and_stop_wakes_the_backoff_wait(
    links: Callable[..., Link],
) -> None:
    link = links(BrokerAddress(port=free_port()), fixed(30.0))  # nobody listens there
    began = time.monotonic()
    link.session.start()
    error, refused, at = link.next_failure()
    assert at - began < 2.0  # not after a backoff wait: the first attempt is made at once
    assert not refused
    assert f"127.0.0.1:{link.session.broker.port}" in str(error) and "cannot connect" in str(error)
    # now in a 30 s wait: stop() must end it at once, and no other attempt is made
    began = time.monotonic()
    link.session.stop()
    assert time.monotonic() - began < 1.0
    assert link.failures.empty()
    assert not link.session.connected.is_set()


def test_connection_refused_backs_off(links: Callable[..., Link]) -> None:
    link = links(BrokerAddress(port=free_port()), fixed(0.25))
    link.session.start()
    times = [link.next_failure()[2] for _ in range(5)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 0.2 for gap in gaps), gaps  # a spinning client retries in microseconds


def test_a_listener_that_hangs_up_before_the_connack_is_backed_off(
    links: Callable[..., Link],
) -> None:
    server = HangUp()
    try:
        link = links(BrokerAddress(port=server.port), fixed(0.25))
        link.session.start()
        accepted = server.wait_accepted(5)  # counted by the listener, not by the session
        assert accepted[4] - accepted[0] >= 4 * 0.2, accepted
        error, refused, _ = link.next_failure()
        assert not refused and "expected a CONNACK" in str(error), error
    finally:
        link.session.stop()
        server.close()


# =========================================================================== with mosquitto


def publish(broker: RunningBroker, topic: str, payload: bytes) -> None:
    """Publish at QoS 1 from a client of its own and wait until the broker has it."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(WAIT_S)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.broker
def test_a_backoff_longer_than_the_keepalive_reconnects_once_the_broker_is_back(
    broker: RunningBroker, links: Callable[..., Link]
) -> None:
    """The issue's outage: every wait (3 s) is longer than the keepalive (2 s). paho's own
    reconnect path, with the wait inside it, closed each new socket at once and never came
    back; the session must be connected within one wait of the broker's return, and stay so."""
    keepalive, wait = 2, 3.0
    link = links(BrokerAddress(broker.host, broker.port, keepalive=keepalive), fixed(wait))
    link.session.subscribe("probe/#", lambda _t, payload: link.messages.put(payload))
    link.session.start()
    assert link.session.wait_connected(WAIT_S)

    broker.kill()
    assert "lost" in str(link.lost.get(timeout=WAIT_S))
    link.next_failure()  # an attempt (after a 3 s wait) found the broker gone
    broker.restart()
    back = time.monotonic()
    assert link.session.connected.wait(wait + 3.0), "not reconnected within one backoff wait"
    reconnected_in = time.monotonic() - back
    # still up two keepalive intervals later (paho closed the old reconnects at once)
    with pytest.raises(queue.Empty):
        link.lost.get(timeout=2 * keepalive + 0.5)
    assert link.session.connected.is_set() and link.session.reconnects == 1
    publish(broker, "probe/1", b"after")  # the broker, too, sees a live subscriber
    assert link.messages.get(timeout=WAIT_S) == b"after"
    assert link.failures.empty(), link.failures.get()
    print(f"reconnected {reconnected_in:.2f} s after the broker returned")


@pytest.mark.broker
def test_a_broker_refusing_credentials_does_not_spin(
    auth_broker: RunningBroker, links: Callable[..., Link]
) -> None:
    address = BrokerAddress(auth_broker.host, auth_broker.port, "sensor", "wrong")
    link = links(address, fixed(0.25), client_id="wrong-password")
    began = time.monotonic()
    link.session.start()
    for _ in range(5):
        error, refused, _ = link.next_failure()
        assert refused and "refused by the broker" in str(error), error
    elapsed = time.monotonic() - began
    assert elapsed >= 4 * 0.2  # 4 waits between 5 attempts
    link.session.stop()
    # mosquitto counts the attempts too: as many as the session reported, give or take the
    # one in flight when it stopped
    assert auth_broker.log_path is not None
    # (mosquitto names a client it refused "<unknown>"; this is the only one it refuses)
    refusals = _wait_log_lines(auth_broker.log_path, "disconnected, not authorised", 5)
    assert 5 <= refusals <= 6, refusals
    assert not link.session.connected.is_set() and link.session.reconnects == 0


def _wait_log_lines(path: Path, needle: str, at_least: int) -> int:
    """How many lines of the log hold `needle`, once there are `at_least` (the broker may
    write its line after it answered)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        found = sum(needle in line for line in path.read_text(errors="replace").splitlines())
        if found >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.05)  # polling a file another process writes


# ============================================== what the session says itself (no callbacks)
class Said(logging.Handler):
    """The session's own log lines, waited on."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.records.append(record)
            self.changed.notify_all()

    def wait_for(self, what: Callable[[list[logging.LogRecord]], bool]) -> list[logging.LogRecord]:
        with self.changed:
            assert self.changed.wait_for(lambda: what(self.records), WAIT_S), self.lines()
            return list(self.records)

    def lines(self, level: int = logging.WARNING) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@pytest.fixture
def said() -> Iterator[Said]:
    logger = logging.getLogger("edge_agent.mqtt.session")
    handler, level = Said(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def _failed_attempts(records: list[logging.LogRecord]) -> int:
    return sum("cannot connect" in r.getMessage() for r in records)


def test_an_unreachable_broker_is_said_at_once_then_rarely(said: Said) -> None:
    port = free_port()  # nobody listens there
    session = MqttSession("quiet", BrokerAddress(port=port), backoff=fixed(0.02))
    session.start()
    try:
        said.wait_for(lambda records: _failed_attempts(records) >= 20)
    finally:
        session.stop()
    warnings = [line for line in said.lines() if "cannot connect" in line]
    assert len(warnings) == 1, warnings  # the first failure; the next report is REPORT_S away
    assert warnings[0].startswith(f"MQTT broker 127.0.0.1:{port}: cannot connect: ")
    assert "Connection refused" in warnings[0] and "retrying every 0.02 s at most" in warnings[0]


def test_the_session_says_when_it_is_back(broker: RunningBroker, said: Said) -> None:
    session = MqttSession("back", BrokerAddress(broker.host, broker.port), backoff=fixed(0.1))
    session.start()
    try:
        assert session.wait_connected(WAIT_S)
        assert said.lines() == []  # connecting at once is not news
        broker.kill()
        said.wait_for(lambda records: _failed_attempts(records) >= 1)
        broker.restart()
        said.wait_for(lambda records: any("connected after" in r.getMessage() for r in records))
    finally:
        session.stop()
    where = f"MQTT broker {broker.host}:{broker.port}"
    lines = said.lines()
    assert lines[0].startswith(f"{where}: lost")
    assert lines[1].startswith(f"{where}: cannot connect: ")
    assert lines[-1].startswith(f"{where}: connected after ")
    assert len(lines) == 3, lines


@pytest.mark.broker
def test_a_route_added_later_gets_a_topic_already_routed(broker: RunningBroker) -> None:
    """The session remembers which routes each topic matched: a subscription made after a
    topic was seen must still get that topic's next message, beside the first route."""
    first: queue.Queue[bytes] = queue.Queue()
    later: queue.Queue[bytes] = queue.Queue()
    session = MqttSession("routes", BrokerAddress(broker.host, broker.port), backoff=fixed(0.1))
    session.subscribe("probe/a", lambda _t, payload: first.put(payload))
    session.start()
    try:
        assert session.wait_connected(WAIT_S)
        publish(broker, "probe/a", b"one")
        assert first.get(timeout=WAIT_S) == b"one"  # probe/a is routed, and remembered
        session.subscribe("probe/+", lambda _t, payload: later.put(payload))
        publish(broker, "probe/a", b"two")
        assert first.get(timeout=WAIT_S) == b"two"
        assert later.get(timeout=WAIT_S) == b"two"
    finally:
        session.stop()
