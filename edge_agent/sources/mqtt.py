"""An MQTT topic as a source of lines: each payload is a line (several, if it holds newlines); or,
for an image input, of whole payloads: each payload is one image."""

from __future__ import annotations

import logging
import threading
import uuid

from edge_agent.checks import positive_int
from edge_agent.errors import ConfigError, TransportError
from edge_agent.mqtt.options import check_broker, check_topic, reconnect_backoff
from edge_agent.mqtt.packets import MAX_ID as MAX_KEEPALIVE_S
from edge_agent.mqtt.session import BrokerAddress, MqttSession
from edge_agent.sources.base import LineSource, LineSplitter, OnLine, OnStatus, trim_cr

log = logging.getLogger(__name__)


class MqttSource(LineSource):
    """Lines from an MQTT topic filter on a (usually local) broker: each payload is a line.

    The source has its own `MqttSession` (a clean session), separate from the agent's uplink
    session (local sensors may publish to a broker other than the hub's), so it reconnects the
    way every MQTT client of the agent does: capped exponential backoff with full jitter,
    `reconnect_delay` = (first, longest) seconds, waited out on the session's own thread. The
    subscription is made again on every connect. A payload holding several newline-separated
    lines gives several lines; a line longer than `max_line_bytes` is cut and counted as the
    other sources do. Retained messages replayed by the broker on subscribe are stale readings:
    they are skipped and counted. With `whole_payloads` (an image input) each payload is one
    message as it is, newlines and all, cut at `max_line_bytes` + 1 bytes and counted
    `oversize` when longer.

    `on_status(event, error)` is told "connected", "subscribed", "connect-failed", "refused"
    (the broker said no: credentials, ACL), "subscribe-failed", "disconnected" and "closed",
    from the session's thread; keep it quick.
    """

    def __init__(
        self,
        topic: str,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        qos: int = 0,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        name: str | None = None,
        max_line_bytes: int = 4096,
        on_status: OnStatus | None = None,
        reconnect_delay: tuple[int, int] = (1, 30),
        whole_payloads: bool = False,
    ) -> None:
        where = "mqtt source"
        self.topic = check_topic(topic, where, "topic", wildcards=True)
        self.host, self.port, self.qos = check_broker(where, host, port, qos)
        for key, value in (("username", username), ("password", password)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{where}: '{key}' expected a non-empty string, found {value!r}")
        if password is not None and username is None:
            raise ConfigError(f"{where}: 'password' expected with a 'username', found no username")
        self.username = username
        self._password = password
        self.keepalive = positive_int(where, "keepalive", keepalive)
        if self.keepalive > MAX_KEEPALIVE_S:  # MQTT carries it in two bytes
            raise ConfigError(
                f"{where}: 'keepalive' expected at most {MAX_KEEPALIVE_S} seconds, found "
                f"{self.keepalive}"
            )
        self._backoff = reconnect_backoff(where, reconnect_delay)
        super().__init__(name or f"mqtt:{host}:{self.port}/{topic}", max_line_bytes, where)
        self._on_status = on_status
        self._whole = whole_payloads
        self._session: MqttSession | None = None
        self._lock = threading.Lock()  # start/stop
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.error: TransportError | None = None
        self._failing = False
        self._stats.update(
            {
                "messages": 0,
                "connected": 0,
                "connect-failed": 0,
                "refused": 0,
                "disconnected": 0,
                "subscribe-failed": 0,
                "retained-skipped": 0,
            }
        )

    @property
    def running(self) -> bool:
        return self._session is not None

    def _input_open(self) -> bool:
        return self.connected.is_set()

    def start(self, on_line: OnLine) -> None:
        with self._lock:
            if self._session is not None:
                raise RuntimeError(f"source {self.name!r} is already running")
            self._begin(on_line)
            self.error = None
            session = MqttSession(
                f"edgefleet-src-{uuid.uuid4().hex[:12]}",
                BrokerAddress(self.host, self.port, self.username, self._password, self.keepalive),
                persistent=False,
                on_connect=self._connected,
                on_connect_failed=self._connect_failed,
                on_disconnect=self._disconnected,
                on_subscribed=self._subscribed,
                backoff=self._backoff,  # reset by every start()
            )
            session.subscribe(self.topic, self._message, self.qos, on_retained=self._retained)
            session.start()
            self._session = session

    def stop(self) -> None:
        """Disconnect and end the session's thread (at once, even mid-backoff)."""
        with self._lock:
            session, self._session = self._session, None
        if session is None:
            return
        session.stop()
        self.connected.clear()
        self.subscribed.clear()
        self._status("closed", None)

    # -- session callbacks (the session's network thread) ------------------------------------

    def _connected(self) -> None:
        self.error = None
        self._failing = False
        self.connected.set()
        self._count("connected")
        log.info("source %s: connected", self.name)
        self._status("connected", None)

    def _connect_failed(self, error: TransportError, refused: bool) -> None:
        if refused:
            self._fail("refused", error)
            return
        first, self._failing = not self._failing, True  # log the first of a run of failures
        self.error = error
        self._count("connect-failed")
        (log.warning if first else log.debug)("source %s: %s", self.name, error)
        self._status("connect-failed", error)

    def _disconnected(self, error: TransportError) -> None:
        self.connected.clear()
        self.subscribed.clear()
        self._fail("disconnected", error)

    def _fail(self, what: str, error: TransportError) -> None:
        """Record, count, log and report one failure of the broker connection."""
        self.error = error
        self._count(what)
        log.warning("source %s: %s", self.name, error)
        self._status(what, error)

    def _subscribed(self, _topic: str, granted: bool) -> None:
        if not granted:
            self._fail(
                "subscribe-failed",
                TransportError(
                    f"MQTT broker {self.host}:{self.port}: subscription to {self.topic!r} refused"
                ),
            )
            return
        self.subscribed.set()
        self._status("subscribed", None)

    def _retained(self, _topic: str, _payload: bytes) -> None:
        self._count("messages")
        self._count("retained-skipped")

    def _message(self, _topic: str, payload: bytes) -> None:
        self._count("messages")
        if self._whole:
            if len(payload) > self._max_line_bytes:
                self._count("oversize")
                payload = payload[: self._max_line_bytes + 1]
            self._deliver(payload)
            return
        if len(payload) <= self._max_line_bytes and b"\n" not in payload:
            self._deliver(trim_cr(payload))  # the common case: one line, no splitter needed
            return
        splitter = LineSplitter(self._max_line_bytes)
        self._deliver_all(splitter, payload)
        tail = splitter.flush()
        if tail is not None:
            self._deliver(tail)
