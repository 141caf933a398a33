"""One MQTT session: every MQTT client the agent and the hub open is one.

It owns the connection (reconnecting with capped exponential backoff and full jitter),
re-subscribes on every connect, routes messages to handlers, and turns refusals and socket
errors into TransportError. The connection's I/O and packets are edge_agent.mqtt.client's.
Handlers and callbacks run on the session's network thread: they must be quick and must not
publish-and-wait.

The network thread is the session's. It repeats, until `stop()`: wait out the backoff, open the
connection (`Client.open`, which also queues CONNECT), then drive `Client.loop` on that socket
until the link drops. The first attempt after `start()` is immediate; every later one waits a
delay drawn from a `Backoff` (a random time under a ceiling that doubles from 1 s up to 10 s); a
successful CONNACK resets the ceiling.
Why 10 s: a device must be back within seconds of its broker's return (DESIGN.md, promise 3),
and full jitter under 10 s still spreads a fleet of 2,000 over 10 s, 200 connections a second,
which one mosquitto takes in its stride. A longer ceiling spares nothing but keeps devices away.
A connection refused, a broker that closes the socket before its CONNACK, and a CONNACK that
refuses (bad credentials, not authorised) are all failed attempts: each one backs off.

Why jitter: a fixed doubling delay (paho's own `reconnect_delay_set`) brings a fleet that lost
its broker at the same instant back in lockstep. And the wait is over before `Client.open` is
called, so every attempt starts with a fresh keepalive clock (paho, waiting inside its connect
path, closed each new socket the moment it opened after a wait longer than the keepalive).

Threads: `publish`, `subscribe` and `stop` may be called from any thread. They only queue
packets, and the client's socket pair wakes the network thread, which does all the I/O.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_agent.errors import BadDataError, ConfigError, TransportError
from edge_agent.mqtt.client import Client, Refused
from edge_agent.mqtt.packets import CONNACK_CODES, matches
from edge_agent.protocol.frozen import frozen

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]
Ack = Callable[[], None]
AckedHandler = Callable[[str, bytes, Ack], None]
Route = Callable[[str, bytes, bool, Ack], None]  # (topic, payload, retained, ack)
OnConnectFailed = Callable[[TransportError, bool], None]  # (why, refused by the broker)

_LOOP_S = 1.0  # longest the network thread sits in select() (publish/stop wake it sooner)
_BYE_S = 2.0  # longest stop() gives the DISCONNECT to leave before the socket is closed
_JOIN_S = 10.0  # longest stop() waits for the network thread (a connect times out in 5 s)
# topics whose routes are remembered (a hub sees a few a device: its fleet's telemetry, status,
# ...); past it the memory starts again. Matching every filter again cost the hub's network
# thread a fifth of its time at 5,000 devices (bench/hub_capacity_bench.py's profile).
_MATCHED_TOPICS = 65536
# Without an on_connect_failed callback the session says itself that it cannot connect: at the
# first failed attempt, then at most once a REPORT_S while the failures go on (each attempt in
# between at INFO), and that it connected once it does: a daemon at the default log level is
# never silent about a broker it cannot reach, nor does it fill a journal with a line a second.
REPORT_S = 60.0


@frozen
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
    maximum: float = 10.0
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


class MqttSession:
    """One MQTT connection with its own network thread (see the module docstring).

    Callbacks, all on the network thread: `on_connect()` after each successful CONNACK (the
    subscriptions are already re-sent); `on_connect_failed(error, refused)` after each failed
    attempt, `refused` when the broker answered with a refusing CONNACK; `on_disconnect(error)`
    when an established link is lost (not on `stop()`); `on_subscribed(topic, granted)` for each
    SUBACK; `on_published(mid)` for each PUBACK. Without `on_connect_failed` / `on_disconnect`
    the session logs those events itself. `max_inflight`: QoS 1 messages awaiting their PUBACK
    at once, the rest queued; 0 holds none back.
    """

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
        on_connect_failed: OnConnectFailed | None = None,
        on_disconnect: Callable[[TransportError], None] | None = None,
        on_subscribed: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.client_id = client_id
        self.broker = broker
        self.connected = threading.Event()
        self.backoff = backoff or Backoff()
        self.reconnects = 0  # connections made after the first one (for status and tests)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._ever_connected = False
        self._subs: dict[str, int] = {}
        self._sub_mids: dict[int, str] = {}  # SUBACKs awaited: mid -> subscribed filter
        self._subs_lock = threading.Lock()
        self._on_connect = on_connect
        self._on_connect_failed = on_connect_failed
        self._on_disconnect = on_disconnect
        self._on_subscribed = on_subscribed
        self._on_bad_message = on_bad_message
        self._manual_ack = manual_ack
        # what the current attempt came to (network thread only)
        self._up = False  # a CONNACK accepted the connection
        self._refused = False  # a CONNACK refused it
        self._lost_reason = ""
        self._failures = 0  # failed attempts since the last connection (network thread only)
        self._failing_since = 0.0
        self._next_report = 0.0
        self._routes: dict[str, Route] = {}  # topic filter -> route, as subscribed
        # topic -> the routes whose filter matches it (network thread; a new route replaces it)
        self._matched: dict[str, tuple[Route, ...]] = {}
        self._left = threading.Event()  # the UNSUBACK of `stop`'s leaving its shared groups
        self._client = Client(
            client_id,
            clean_session=not persistent,
            username=broker.username or None,
            password=broker.password if broker.username else None,
            will=will,
            max_inflight=max_inflight,
            on_connack=self._connack,
            on_message=self._message,
            on_published=(lambda mid: self._notify(on_published, mid)) if on_published else None,
            on_subscribed=self._subscribed,
            on_unsubscribed=lambda _mid: self._left.set(),
        )

    @property
    def _where(self) -> str:
        return f"MQTT broker {self.broker.host}:{self.broker.port}"

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Start the network thread; the first connection attempt is made at once."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"MQTT session {self.client_id!r} is already running")
        if not 0 < self.broker.port < 65536:
            raise TransportError(f"{self._where}: expected a port from 1 to 65535")
        self._stopping.clear()
        self.backoff.reset()
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-session {self.client_id}", daemon=True
        )
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def stop(self, final: tuple[str, bytes] | None = None) -> None:
        """Disconnect cleanly; `final` is published (retained, QoS 1) first, e.g. offline.
        Wakes a backoff wait at once; no new connection attempt starts.

        Shared subscriptions are left first: the broker goes on handing a member of a group
        its share while its persistent session is away (mosquitto queues them for it), so a
        hub worker that stopped would hold back part of the fleet's messages until it came
        back. Left, the group's other members get them all; a `start()` joins again."""
        if final and self.connected.is_set():
            try:
                self.publish_wait(final[0], final[1], timeout=_BYE_S, retain=True)
            except TransportError as exc:  # the link went while saying goodbye
                log.warning("final publish to %s failed: %s", final[0], exc)
        if self.connected.is_set():
            self._leave_groups()
        self._stopping.set()
        self._client.disconnect()  # queues DISCONNECT and wakes the network thread's select()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_S)
            if thread.is_alive():
                log.warning(
                    "MQTT session %s: network thread did not stop within %.0f s",
                    self.client_id,
                    _JOIN_S,
                )
        self.connected.clear()

    def _leave_groups(self) -> None:
        """Unsubscribe from the shared subscriptions and wait for the broker's UNSUBACK: the
        socket closes right after the DISCONNECT, and a broker that is still answering then
        may drop the rest of what it had not read yet."""
        with self._subs_lock:
            shared = [wire for wire in self._subs if wire.startswith("$share/")]
        if not shared:
            return
        self._left.clear()
        self._client.unsubscribe(shared)
        if not self._left.wait(_BYE_S):
            log.warning("MQTT session %s: no UNSUBACK for %s", self.client_id, shared)

    # ---- subscriptions ------------------------------------------------------------------
    def subscribe(
        self,
        topic: str,
        handler: Handler,
        qos: int = 1,
        share: str | None = None,
        *,
        on_retained: Handler | None = None,
    ) -> None:
        """Route messages on `topic` to `handler`. With `share`, the subscription is the shared
        `$share/{share}/{topic}`: the broker hands each message to one member of the group.
        With `on_retained`, messages the broker replays from its retained store (the retain
        flag set: what it sends on subscribe) go there instead of to `handler`."""

        def acked(topic_: str, payload: bytes, ack: Ack) -> None:
            try:
                handler(topic_, payload)
            finally:
                ack()

        def acked_retained(topic_: str, payload: bytes, ack: Ack) -> None:
            try:
                on_retained(topic_, payload)  # type: ignore[misc]  # set whenever this is used
            finally:
                ack()

        self._subscribe(topic, acked, qos, share, acked_retained if on_retained else None)

    def subscribe_acked(
        self, topic: str, handler: AckedHandler, qos: int = 1, share: str | None = None
    ) -> None:
        """Like `subscribe`, but the handler gets an `ack` to call once the message is safe (a
        session made with manual_ack=True sends the PUBACK only then; until it is sent, a
        persistent session gets the message again after a reconnect)."""
        self._subscribe(topic, handler, qos, share, None)

    def _subscribe(
        self,
        topic: str,
        handler: AckedHandler,
        qos: int,
        share: str | None,
        retained: AckedHandler | None,
    ) -> None:
        def route(topic_: str, payload: bytes, retain: bool, ack: Ack) -> None:
            to = retained if retained is not None and retain else handler
            try:
                to(topic_, payload, ack)
            except BadDataError as exc:
                if self._on_bad_message:
                    self._notify(self._on_bad_message, topic_, exc)
                else:
                    log.warning("rejected message on %s: %s", topic_, exc)
            except Exception:  # a handler bug must not kill the network thread
                log.exception("handler for %s failed", topic_)

        if share is not None and (not share or any(c in share for c in "/+#")):
            raise ConfigError(f"shared subscription group: expected a plain name, got {share!r}")
        self._routes[topic] = route
        self._matched = {}  # after the route: a topic matched from here on sees it
        wire = f"$share/{share}/{topic}" if share else topic
        with self._subs_lock:
            self._subs[wire] = qos
            if self.connected.is_set():
                self._send_subscribe(wire, qos)

    def _send_subscribe(self, wire: str, qos: int) -> None:
        """Queue a SUBSCRIBE and remember its mid for the SUBACK (with _subs_lock held)."""
        mid = self._client.subscribe(wire, qos)
        if mid is not None:
            self._sub_mids[mid] = wire

    # ---- publishing ---------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Queue a message; returns its mid (0 at QoS 0). TransportError if the client refuses
        it. A QoS 1 message queued while the link is down goes out after the next connect."""
        try:
            mid = self._client.publish(topic, payload, qos, retain)
        except Refused as exc:
            raise TransportError(f"publish to {topic} refused: {exc}") from exc
        return mid or 0

    def publish_now(
        self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False
    ) -> bool:
        """Send a live signal now or not at all: True if it was handed to an established link,
        False if there is none (then nothing is kept for later). Never blocks."""
        if not self.connected.is_set():
            return False
        try:
            return self._client.publish(topic, payload, qos, retain) is not None
        except Refused:
            return False

    def publish_wait(
        self, topic: str, payload: bytes, timeout: float, retain: bool = False
    ) -> None:
        done = threading.Event()
        try:
            self._client.publish(topic, payload, 1, retain, done)
        except Refused as exc:
            raise TransportError(f"publish to {topic} refused: {exc}") from exc
        if not done.wait(timeout):
            raise TransportError(f"publish to {topic}: no acknowledgement within {timeout}s")

    # ---- the network thread -------------------------------------------------------------
    def _run(self) -> None:
        """Connect, drive the link until it drops, wait out the backoff; until stop()."""
        first = True
        while not self._stopping.is_set():
            if not first:
                delay = self.backoff.next_delay()
                log.info(
                    "reconnecting to %s:%s in %.2fs", self.broker.host, self.broker.port, delay
                )
                if self._stopping.wait(delay):
                    break
            first = False
            try:
                self._attempt()
            except Exception:  # a bug must not end the session's thread
                log.exception("MQTT session %s: network loop failed", self.client_id)
                self.connected.clear()
        self._client.close()

    def _attempt(self) -> None:
        """One connection: open it, drive it until it ends, report how it ended."""
        self._up = self._refused = False
        self._lost_reason = ""
        with self._subs_lock:
            self._sub_mids.clear()  # SUBACKs of an earlier link never come
        try:  # starts the keepalive clock: no waiting after this
            self._client.open(self.broker.host, self.broker.port, self.broker.keepalive)
        except (OSError, ValueError) as exc:  # refused, unreachable, no such host...
            self._failed(TransportError(f"{self._where}: cannot connect: {exc}"), refused=False)
            return
        self._drive()
        self.connected.clear()
        if self._stopping.is_set() or self._refused:
            return
        reason = self._lost_reason or "connection closed"
        if self._up:
            error = TransportError(f"{self._where}: lost ({reason})")
            if self._on_disconnect:
                self._notify(self._on_disconnect, error)
            else:
                log.warning("%s", error)
        else:
            self._failed(
                TransportError(
                    f"{self._where}: cannot connect: expected a CONNACK, the connection "
                    f"ended first ({reason})"
                ),
                refused=False,
            )

    def _drive(self) -> None:
        """Run the client's loop on the open socket until the link drops or stop() has closed
        it."""
        bye_by: float | None = None
        while True:
            if bye_by is None and self._stopping.is_set():
                self._client.disconnect()  # no-op without a socket; else queues DISCONNECT
                bye_by = time.monotonic() + _BYE_S
            why = self._client.loop(_LOOP_S)
            if why is not None:
                if not self._lost_reason:
                    self._lost_reason = why
                return
            if bye_by is not None and time.monotonic() > bye_by:
                return

    def _failed(self, error: TransportError, refused: bool) -> None:
        if self._on_connect_failed:
            self._notify(self._on_connect_failed, error, refused)
            return
        now = time.monotonic()
        self._failures += 1
        if self._failures == 1:
            self._failing_since = now
        elif now < self._next_report:
            log.info("%s", error)
            return
        self._next_report = now + REPORT_S
        tally = (
            f" ({self._failures} attempts in {now - self._failing_since:.0f} s)"
            if self._failures > 1
            else ""
        )
        log.warning("%s%s; retrying every %g s at most", error, tally, self.backoff.maximum)

    @staticmethod
    def _notify(callback: Callable[..., None], *args: object) -> None:
        """Run a user callback; a bug in it must not break the connection."""
        try:
            callback(*args)
        except Exception:
            log.exception("MQTT session callback %r failed", callback)

    # ---- the client's callbacks (the network thread) -------------------------------------
    def _connack(self, _session_present: bool, code: int) -> None:
        if code:
            self._refused = True
            why = CONNACK_CODES.get(code, f"return code {code}")
            error = TransportError(f"{self._where}: connection refused by the broker: {why}")
            self._failed(error, refused=True)
            return
        self._up = True
        self.backoff.reset()
        if self._failures and self._on_connect_failed is None:  # it said it could not
            log.warning("%s: connected after %d failed attempt(s)", self._where, self._failures)
        self._failures = 0
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        with self._subs_lock:
            for topic, qos in self._subs.items():
                self._send_subscribe(topic, qos)
            self.connected.set()  # under the lock: a concurrent subscribe() sends its own
        if self._on_connect:
            self._notify(self._on_connect)

    def _message(
        self, topic: str, payload: bytes, qos: int, retain: bool, mid: int, generation: int
    ) -> None:
        """Each route whose filter matches gets the message; at QoS 1 the PUBACK leaves after
        them, or, with manual_ack, when a handler calls its ack (a message no route takes is
        acknowledged at once: nobody would)."""
        client = self._client
        sent = False

        def ack() -> None:  # once: every handler's wrapper and the auto-ack may call it
            nonlocal sent
            if qos and not sent:
                sent = True
                client.ack(mid, generation)

        matched = self._matched
        routes = matched.get(topic)
        if routes is None:
            routes = tuple(r for f, r in list(self._routes.items()) if matches(f, topic))
            if len(matched) >= _MATCHED_TOPICS:
                matched.clear()
            matched[topic] = routes
        for route in routes:
            route(topic, payload, retain, ack)
        if not routes or not self._manual_ack:
            ack()

    def _subscribed(self, mid: int, codes: list[int]) -> None:
        with self._subs_lock:
            wire = self._sub_mids.pop(mid, None)
        if wire is None:
            return
        granted = not any(code >= 0x80 for code in codes)
        if self._on_subscribed is not None:
            self._notify(self._on_subscribed, wire, granted)
        elif not granted:  # nobody else would say it: nothing will arrive on that topic
            log.warning("%s: the broker refused the subscription to %s", self._where, wire)
