"""One small adapter around paho-mqtt, shared by the agent and the hub.

It owns the connection (automatic reconnect with capped exponential backoff and jitter),
re-subscribes on every connect, routes messages to handlers, and turns paho's return codes into
TransportError. Handlers run on paho's network thread: they must be quick and must not
publish-and-wait.

Reconnecting: paho's own `reconnect_delay_set` doubles a fixed delay with no jitter, so a fleet
that lost its broker at the same instant would come back in lockstep, every retry a thundering
herd. Here paho's delay is set to zero and the wait happens in `on_pre_connect` (paho's network
thread, just before each connection attempt), drawn from a `Backoff`: the first attempt after
`start()` is immediate, every later one waits a random time under a ceiling that doubles from
1 s up to 60 s, and a successful CONNACK resets the ceiling.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.errors import BadDataError, ConfigError, TransportError

log = logging.getLogger(__name__)


def _no_delay(_client: object, _userdata: object, sock: object) -> None:
    """Small packets (PUBACKs, chunk requests, records) leave at once. paho leaves Nagle's
    algorithm on, which holds a small write until the previous one is acknowledged, and the
    peer delays that ACK by up to 40 ms: a chunked transfer then crawls at a few rounds a
    second whatever the bandwidth."""
    with contextlib.suppress(OSError, AttributeError):  # not every socket is TCP
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]


Handler = Callable[[str, bytes], None]
Ack = Callable[[], None]
AckedHandler = Callable[[str, bytes, Ack], None]


@dataclass(frozen=True)
class BrokerAddress:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    keepalive: int = 30


JITTERS = ("full", "equal", "none")


@dataclass
class Backoff:
    """Capped exponential backoff with jitter: a pure policy, no clock and no sleeping.

    The n-th delay since the last `reset()` (n from 0) is drawn under the ceiling
    ``min(maximum, initial * factor**n)``:

    - ``full``: uniform in [0, ceiling) (spreads a fleet the most; the AWS "full jitter"),
    - ``equal``: uniform in [ceiling/2, ceiling) (never retries almost at once),
    - ``none``: the ceiling itself (deterministic; what paho does on its own).

    `rng` is the random source (a seeded `random.Random` makes the sequence reproducible).
    """

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0
    jitter: str = "full"
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempt: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum < math.inf:  # also refuses nan
            raise ConfigError(
                f"backoff: expected 0 < initial <= maximum < inf, got initial={self.initial!r}, "
                f"maximum={self.maximum!r}"
            )
        if not self.factor >= 1:  # also refuses nan
            raise ConfigError(f"backoff: factor expected at least 1, got {self.factor!r}")
        if self.jitter not in JITTERS:
            raise ConfigError(
                f"backoff: jitter expected one of {', '.join(JITTERS)}, got {self.jitter!r}"
            )

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.maximum, self.initial * self.factor**self.attempt)

    def next_delay(self) -> float:
        """The next delay in seconds; each call raises the ceiling until it reaches `maximum`."""
        cap = self.ceiling()
        if cap < self.maximum:  # stop counting once capped: factor**attempt must not overflow
            self.attempt += 1
        if self.jitter == "none":
            return cap
        if self.jitter == "equal":
            return cap / 2 + self.rng.random() * cap / 2
        return self.rng.random() * cap

    def reset(self) -> None:
        """After a successful connect: the next delay is drawn under `initial` again."""
        self.attempt = 0


class _Stopping(ConnectionAbortedError):
    """Raised from on_pre_connect to abandon a connection attempt because stop() was called
    (an OSError, so paho's loop treats it as a failed attempt and then sees it must exit)."""


class MqttSession:
    def __init__(
        self,
        client_id: str,
        broker: BrokerAddress,
        *,
        persistent: bool = True,
        will: tuple[str, bytes] | None = None,
        on_connect: Callable[[], None] | None = None,
        on_published: Callable[[int], None] | None = None,
        on_bad_message: Callable[[str, BadDataError], None] | None = None,
        max_inflight: int = 100,
        backoff: Backoff | None = None,
        manual_ack: bool = False,
    ) -> None:
        self.broker = broker
        self.connected = threading.Event()
        self.backoff = backoff or Backoff()
        self.reconnects = 0  # connections made after the first one (for status and tests)
        self._stopping = threading.Event()
        self._attempted = False  # a connection was attempted since start(): later ones wait
        self._ever_connected = False
        self._subs: dict[str, int] = {}
        self._on_connect = on_connect
        self._on_bad_message = on_bad_message
        self._manual_ack = manual_ack
        c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=not persistent,
            protocol=mqtt.MQTTv311,
            manual_ack=manual_ack,
        )
        if broker.username:
            c.username_pw_set(broker.username, broker.password)
        if will:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.reconnect_delay_set(min_delay=0, max_delay=0)  # the wait is _before_connect's
        c.max_inflight_messages_set(max_inflight)
        c.on_pre_connect = self._before_connect
        c.on_connect = self._connected
        c.on_disconnect = self._disconnected
        c.on_socket_open = _no_delay
        if on_published:
            c.on_publish = lambda _c, _u, mid, _rc, _p: on_published(mid)
        self._client = c

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._stopping.clear()
        self._attempted = False
        self.backoff.reset()
        try:
            self._client.connect_async(self.broker.host, self.broker.port, self.broker.keepalive)
        except (OSError, ValueError) as exc:
            raise TransportError(
                f"MQTT broker {self.broker.host}:{self.broker.port}: {exc}"
            ) from exc
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def stop(self, final: tuple[str, bytes] | None = None) -> None:
        """Disconnect cleanly; `final` is published (retained, QoS 1) first, e.g. offline."""
        if final and self.connected.is_set():
            info = self._client.publish(final[0], final[1], qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2)
            except (RuntimeError, ValueError) as exc:  # the link went while saying goodbye
                log.warning("final publish to %s failed: %s", final[0], exc)
        self._stopping.set()  # wakes a backoff wait; no new connection attempt starts
        self._client.disconnect()
        self._client.loop_stop()

    # ---- subscriptions ------------------------------------------------------------------
    def subscribe(
        self, topic: str, handler: Handler, qos: int = 1, share: str | None = None
    ) -> None:
        """Route messages on `topic` to `handler`. With `share`, the subscription is the shared
        `$share/{share}/{topic}`: the broker hands each message to one member of the group."""

        def acked(topic_: str, payload: bytes, ack: Ack) -> None:
            try:
                handler(topic_, payload)
            finally:
                ack()

        self.subscribe_acked(topic, acked, qos, share)

    def subscribe_acked(
        self, topic: str, handler: AckedHandler, qos: int = 1, share: str | None = None
    ) -> None:
        """Like `subscribe`, but the handler gets an `ack` to call once the message is safe (a
        session made with manual_ack=True sends the PUBACK only then; until it is sent, a
        persistent session gets the message again after a reconnect)."""

        def route(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            mid, msg_qos = msg.mid, msg.qos

            def ack() -> None:
                if self._manual_ack and msg_qos > 0:
                    self._client.ack(mid, msg_qos)

            try:
                handler(msg.topic, bytes(msg.payload), ack)
            except BadDataError as exc:
                if self._on_bad_message:
                    self._on_bad_message(msg.topic, exc)
                else:
                    log.warning("rejected message on %s: %s", msg.topic, exc)
            except Exception:  # a handler bug must not kill the network thread
                log.exception("handler for %s failed", msg.topic)

        if share is not None and (not share or any(c in share for c in "/+#")):
            raise ConfigError(f"shared subscription group: expected a plain name, got {share!r}")
        self._client.message_callback_add(topic, route)
        wire = f"$share/{share}/{topic}" if share else topic
        self._subs[wire] = qos
        if self.connected.is_set():
            self._client.subscribe(wire, qos)

    # ---- publishing ---------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Queue a message; returns its mid. TransportError if paho refuses it."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise TransportError(f"publish to {topic} refused: {mqtt.error_string(info.rc)}")
        return int(info.mid)

    def publish_wait(
        self, topic: str, payload: bytes, timeout: float, retain: bool = False
    ) -> None:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            raise TransportError(f"publish to {topic} failed: {exc}") from exc
        if not info.is_published():
            raise TransportError(f"publish to {topic}: no acknowledgement within {timeout}s")

    # ---- paho callbacks -----------------------------------------------------------------
    def _before_connect(self, _c: mqtt.Client, _u: object) -> None:
        """Before every connection attempt: wait out the backoff (not before the first)."""
        if self._attempted:
            delay = self.backoff.next_delay()
            log.info("reconnecting to %s:%s in %.2fs", self.broker.host, self.broker.port, delay)
            if self._stopping.wait(delay):
                raise _Stopping("session stopping")
        elif self._stopping.is_set():
            raise _Stopping("session stopping")
        self._attempted = True

    def _connected(
        self, _c: mqtt.Client, _u: object, _flags: object, reason: object, _p: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("broker refused the connection: %s", reason)
            return
        self.backoff.reset()
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        for topic, qos in self._subs.items():
            self._client.subscribe(topic, qos)
        self.connected.set()
        if self._on_connect:
            self._on_connect()

    def _disconnected(
        self, _c: mqtt.Client, _u: object, _flags: object, _reason: object, _p: object
    ) -> None:
        self.connected.clear()
