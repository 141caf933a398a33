"""Inference results for local actuators: one small JSON message per inferred row.

The pipeline hands every result to a callback (`Pipeline(on_result=...)`); `ResultPublisher` is
that callback when `[results] enabled = true`. It publishes each result on a LOCAL topic
(default ``edgefleet/local/{device_id}/results``) of a local broker, with its own paho-mqtt
client, separate from the uplink session to the hub. A message looks like::

    {"v": 1, "ts": 1718000000.123, "model": "iris@3", "prediction": 2, "latency_ms": 0.0123}

It never blocks the pipeline: while the client is disconnected a result is dropped and counted
(`stats()`), and paho reconnects on its own. Results are live signals, not records: there is
no buffering and no QoS 1 redelivery across a broker outage.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Mapping
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.errors import ConfigError, MessageError, TransportError
from edge_agent.protocol.topics import check_device_id
from edge_agent.sources import check_topic

log = logging.getLogger(__name__)

RESULT_VERSION = 1
DEFAULT_TOPIC = "edgefleet/local/{device_id}/results"
PLACEHOLDER = "{device_id}"
_SAMPLE_ID = "device-1"


def results_topic(template: str, device_id: str, where: str = "results") -> str:
    """The topic `template` with its ``{device_id}`` placeholder (if any) filled in.

    ConfigError if the template has other braces, is not a valid MQTT topic name (no
    wildcards, not empty), or `device_id` is not a valid device id."""
    if not isinstance(template, str):
        raise ConfigError(f"{where}: 'topic' expected an MQTT topic name, found {template!r}")
    rest = template.replace(PLACEHOLDER, "")
    if "{" in rest or "}" in rest:
        raise ConfigError(
            f"{where}: 'topic' expected no placeholder other than {PLACEHOLDER}, found {template!r}"
        )
    try:
        device_id = check_device_id(device_id, f"{where}: device id")
    except MessageError as exc:
        raise ConfigError(str(exc)) from exc
    return check_topic(template.replace(PLACEHOLDER, device_id), where, wildcards=False)


def is_results_topic(template: str) -> bool:
    """Whether `template` makes a valid results topic for any valid device id."""
    try:
        results_topic(template, _SAMPLE_ID)
    except ConfigError:
        return False
    return True


class ResultPublisher:
    """Publishes each result dict as JSON on one topic of a local broker; a pipeline callback.

    `__call__` is on the pipeline's hot path: one flag test when disconnected, one
    ``json.dumps`` and one non-blocking paho ``publish`` when connected. Call it from one thread
    (the pipeline's); the counters are not locked.
    """

    def __init__(
        self,
        topic: str,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        qos: int = 0,
        keepalive: int = 30,
        reconnect_delay: tuple[int, int] = (1, 30),
    ) -> None:
        where = "result publisher"
        self.topic = check_topic(topic, where, wildcards=False)
        if not isinstance(host, str) or not host.strip():
            raise ConfigError(f"{where}: 'host' expected a host name or address, found {host!r}")
        if type(port) is not int or not 1 <= port <= 65535:
            raise ConfigError(f"{where}: 'port' expected a port number 1-65535, found {port!r}")
        if type(qos) is not int or qos not in (0, 1):
            raise ConfigError(f"{where}: 'qos' expected 0 or 1, found {qos!r}")
        self.host, self.port, self.qos = host, port, qos
        self.keepalive = keepalive
        self.connected = threading.Event()
        self.published = 0  # handed to paho while connected
        self.dropped = 0  # dropped because the client was not connected
        self.unencodable = 0  # not JSON (NaN, a numpy value...)
        self._encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"edgefleet-results-{uuid.uuid4().hex[:12]}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        client.reconnect_delay_set(*reconnect_delay)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self._client = client
        self._started = False

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], device_id: str) -> ResultPublisher | None:
        """The publisher the validated ``[results]`` section asks for; None when not enabled."""
        if not settings.get("enabled", False):
            return None
        return cls(
            results_topic(settings.get("topic", DEFAULT_TOPIC), device_id),
            settings.get("host", "127.0.0.1"),
            settings.get("port", 1883),
            qos=settings.get("qos", 0),
        )

    def start(self) -> None:
        """Connect in the background (paho's thread) and keep reconnecting until stop()."""
        if self._started:
            raise RuntimeError("result publisher is already running")
        try:
            self._client.connect_async(self.host, self.port, self.keepalive)
        except (OSError, ValueError) as exc:
            raise TransportError(f"results broker {self.host}:{self.port}: {exc}") from exc
        self._started = True
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def stop(self) -> None:
        """Send what is queued, disconnect, and end paho's thread."""
        if not self._started:
            return
        self._started = False
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    def __call__(self, result: dict[str, Any]) -> None:
        if not self.connected.is_set():
            self.dropped += 1
            return
        try:
            payload = self._encode({"v": RESULT_VERSION, **result})
        except (TypeError, ValueError):
            self.unencodable += 1
            if self.unencodable == 1:
                log.warning("result not JSON-encodable, dropped: %r", result)
            return
        rc = self._client.publish(self.topic, payload, self.qos).rc
        if rc == mqtt.MQTT_ERR_SUCCESS:
            self.published += 1
        else:  # NO_CONN: the connection went between the check and the publish
            self.dropped += 1

    def stats(self) -> dict[str, int]:
        return {
            "published": self.published,
            "dropped": self.dropped,
            "unencodable": self.unencodable,
        }

    # -- paho callbacks (paho's network thread) ----------------------------------------------

    def _on_connect(
        self, _c: mqtt.Client, _u: object, _flags: object, reason: Any, _p: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            log.warning(
                "results broker %s:%s refused the connection: %s", self.host, self.port, reason
            )
            return
        log.info("results: connected to %s:%s", self.host, self.port)
        self.connected.set()

    def _on_disconnect(
        self, _c: mqtt.Client, _u: object, _flags: object, reason: Any, _p: object
    ) -> None:
        if self.connected.is_set() and self._started:
            log.warning(
                "results broker %s:%s lost (%s); dropping results until reconnected",
                self.host,
                self.port,
                reason,
            )
        self.connected.clear()
