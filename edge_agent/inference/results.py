"""Inference results for local actuators: one small JSON message per inferred row.

The pipeline hands every result to a callback (`Pipeline(on_result=...)`); `ResultPublisher` is
that callback when `[results] enabled = true`. It publishes each result on a LOCAL topic
(default ``edgefleet/local/{device_id}/results``) of a local broker, with its own
`MqttSession` (a clean session), separate from the uplink session to the hub. A message looks like::

    {"v": 1, "ts": 1718000000.123, "model": "iris@3", "prediction": 2, "latency_ms": 0.0123,
     "id": "pi-01/3/1520"}

`id` is the row's prediction id (edge_agent.protocol.ids): ground truth sent back to the hub
names the prediction it is about by it. With `[results] labels = true` the same session takes
that ground truth in, on `labels_topic` of the same broker (edge_agent.uplink.labels), and hands
each message's `Labels` to `on_labels` (the agent keeps them as records for the hub).

It never blocks the pipeline: while the client is disconnected a result is dropped and counted
(`stats()`), and the session reconnects on its own (the agent's one reconnect policy:
backoff with full jitter, `reconnect_delay` = (first, longest) seconds). Results are live
signals, not records: there is no buffering and no QoS 1 redelivery across a broker outage.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edge_agent.errors import MessageError, TransportError
from edge_agent.mqtt.options import check_broker, check_topic, reconnect_backoff, results_topic
from edge_agent.mqtt.session import BrokerAddress, MqttSession
from edge_agent.protocol.records import Labels
from edge_agent.uplink.labels import local_labels

if TYPE_CHECKING:
    from edge_agent.settings import ResultsSettings

log = logging.getLogger(__name__)

RESULT_VERSION = 1
DEFAULT_TOPIC = "edgefleet/local/{device_id}/results"


class ResultPublisher:
    """Publishes each result dict as JSON on one topic of a local broker; a pipeline callback.

    `__call__` is on the pipeline's hot path: one flag test when disconnected, one
    ``json.dumps`` and one non-blocking ``publish_now`` when connected. Call it from one thread
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
        labels_topic: str | None = None,
        on_labels: Callable[[Labels], None] | None = None,
    ) -> None:
        where = "result publisher"
        self.topic = check_topic(topic, where, wildcards=False)
        self.host, self.port, self.qos = check_broker(where, host, port, qos)
        self.keepalive = keepalive
        self.published = 0  # handed to the link while connected
        self.dropped = 0  # dropped because the client was not connected
        self.unencodable = 0  # not JSON (NaN, a numpy value...)
        self.labels = 0  # labels taken in on labels_topic
        self.bad_labels = 0  # messages on labels_topic that were not labels
        self._on_labels = on_labels
        self._encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
        self._session = MqttSession(
            f"edgefleet-results-{uuid.uuid4().hex[:12]}",
            BrokerAddress(host, port, keepalive=keepalive),
            persistent=False,
            on_connect=self._on_connect,
            on_connect_failed=self._on_connect_failed,
            on_disconnect=self._on_disconnect,
            backoff=reconnect_backoff(where, reconnect_delay),
        )
        self.connected = self._session.connected
        self._started = False
        if labels_topic is not None:
            self._session.subscribe(check_topic(labels_topic, where, wildcards=False), self._label)

    @classmethod
    def from_settings(
        cls,
        settings: ResultsSettings,
        device_id: str,
        on_labels: Callable[[Labels], None] | None = None,
    ) -> ResultPublisher | None:
        """The publisher the validated ``[results]`` section asks for; None when not enabled.
        With `labels`, it takes ground truth in on `labels_topic` and hands it to `on_labels`."""
        if not settings.enabled:
            return None
        labels = results_topic(settings.labels_topic, device_id) if settings.labels else None
        return cls(
            results_topic(settings.topic, device_id),
            settings.host,
            settings.port,
            qos=settings.qos,
            labels_topic=labels,
            on_labels=on_labels,
        )

    def start(self) -> None:
        """Connect in the background (the session's thread) and keep reconnecting until stop()."""
        if self._started:
            raise RuntimeError("result publisher is already running")
        self._session.start()
        self._started = True

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def stop(self) -> None:
        """Disconnect and end the session's thread."""
        if not self._started:
            return
        self._started = False
        self._session.stop()

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
        if self._session.publish_now(self.topic, payload, self.qos):
            self.published += 1
        else:  # the connection went between the check and the publish
            self.dropped += 1

    def stats(self) -> dict[str, int]:
        return {
            "published": self.published,
            "dropped": self.dropped,
            "unencodable": self.unencodable,
        }

    def _label(self, topic: str, payload: bytes) -> None:
        """A message on labels_topic (the session's thread): its labels to `on_labels`; one that
        is not labels is counted, and logged the first time."""
        try:
            labels = local_labels(payload, f"labels on {topic}")
        except MessageError as exc:
            self.bad_labels += 1
            if self.bad_labels == 1:
                log.warning("%s; further ones are only counted", exc)
            return
        self.labels += len(labels.labels)
        if self._on_labels is not None and labels.labels:
            self._on_labels(labels)

    # -- session callbacks (the session's network thread) ------------------------------------

    def _on_connect(self) -> None:
        log.info("results: connected to %s:%s", self.host, self.port)

    def _on_connect_failed(self, error: TransportError, refused: bool) -> None:
        (log.warning if refused else log.debug)("results: %s", error)

    def _on_disconnect(self, error: TransportError) -> None:
        log.warning("results: %s; dropping results until reconnected", error)
