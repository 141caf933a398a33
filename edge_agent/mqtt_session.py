"""One small adapter around paho-mqtt, shared by the agent and the hub.

It owns the connection (automatic reconnect with capped exponential backoff), re-subscribes on
every connect, routes messages to handlers, and turns paho's return codes into TransportError.
Handlers run on paho's network thread: they must be quick and must not publish-and-wait.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.errors import BadDataError, TransportError

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]


@dataclass(frozen=True)
class BrokerAddress:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    keepalive: int = 30


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
    ) -> None:
        self.broker = broker
        self.connected = threading.Event()
        self._subs: dict[str, int] = {}
        self._on_connect = on_connect
        self._on_bad_message = on_bad_message
        c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=not persistent,
            protocol=mqtt.MQTTv311,
        )
        if broker.username:
            c.username_pw_set(broker.username, broker.password)
        if will:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.max_inflight_messages_set(max_inflight)
        c.on_connect = self._connected
        c.on_disconnect = self._disconnected
        if on_published:
            c.on_publish = lambda _c, _u, mid, _rc, _p: on_published(mid)
        self._client = c

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
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
            info.wait_for_publish(timeout=2)
        self._client.disconnect()
        self._client.loop_stop()

    # ---- subscriptions ------------------------------------------------------------------
    def subscribe(self, topic: str, handler: Handler, qos: int = 1) -> None:
        def route(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            try:
                handler(msg.topic, bytes(msg.payload))
            except BadDataError as exc:
                if self._on_bad_message:
                    self._on_bad_message(msg.topic, exc)
                else:
                    log.warning("rejected message on %s: %s", msg.topic, exc)
            except Exception:  # a handler bug must not kill the network thread
                log.exception("handler for %s failed", msg.topic)

        self._client.message_callback_add(topic, route)
        self._subs[topic] = qos
        if self.connected.is_set():
            self._client.subscribe(topic, qos)

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
    def _connected(
        self, _c: mqtt.Client, _u: object, _flags: object, reason: object, _p: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("broker refused the connection: %s", reason)
            return
        for topic, qos in self._subs.items():
            self._client.subscribe(topic, qos)
        self.connected.set()
        if self._on_connect:
            self._on_connect()

    def _disconnected(
        self, _c: mqtt.Client, _u: object, _flags: object, _reason: object, _p: object
    ) -> None:
        self.connected.clear()
