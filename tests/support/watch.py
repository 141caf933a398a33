"""A test's view of the broker: what devices publish (events, status), and the TUF timestamp.

`DeviceWatcher` is an independent subscriber, as a dashboard would be. Tests wait on its
condition (`wait`), never on the clock. `subscriber` is the client under it: a persistent
session that subscribes again on every connect, so it sees through a broker restart.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.broker.local import RunningBroker
from edge_agent.errors import MessageError
from edge_agent.protocol.messages import decode_batch, decode_status
from edge_agent.protocol.topics import Topics

TOPICS = Topics()
WAIT_S = 30.0  # the longest one condition may take before the test fails

Body = dict[str, Any]
OnMessage = Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]


def subscriber(broker: RunningBroker, topics: list[str], on_message: OnMessage) -> mqtt.Client:
    """A connected client with a persistent session that subscribes on every connect (so it
    sees through a broker restart what was published meanwhile); returns once subscribed."""
    subscribed = threading.Event()
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"test-{uuid.uuid4().hex[:12]}",
        clean_session=False,
    )
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
    client.on_subscribe = lambda *_: subscribed.set()
    client.reconnect_delay_set(min_delay=0.05, max_delay=0.5)  # type: ignore[arg-type]
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert subscribed.wait(10), f"no SUBACK for {topics}"
    return client


def close(client: mqtt.Client) -> None:
    client.disconnect()  # first: it wakes the network loop, so loop_stop returns at once
    client.loop_stop()


def is_event(body: Body, event: str, version: int) -> bool:
    """`body` is the device event `event` about a model at `version`."""
    return body.get("event") == event and (body.get("model") or {}).get("version") == version


class DeviceWatcher:
    """Everything the devices (or one `device`) publish on their events and status topics, and
    with `tuf=True` the version of the TUF timestamp on the broker.

    `events` are in arrival order, each (device, boot, seq) once (the agent delivers at least
    once); `device_events` the same per device. `status` is the latest status of any device,
    `status_of(d)` device d's, `status_history` all in arrival order. `on_events` is called
    from paho's thread with every event body of a batch before the watcher stores it, so a hook
    acts before any test wakes (see `sigkill_on`). Messages that do not decode are ignored:
    tests publish garbage on purpose.
    """

    def __init__(self, broker: RunningBroker, device: str = "+", tuf: bool = False) -> None:
        self.events: list[Body] = []
        self.device_events: dict[str, list[Body]] = {}
        self.status_history: list[Body] = []
        self.device_status: dict[str, Body] = {}
        self.timestamp_version = 0
        self.on_events: Callable[[list[Body]], None] | None = None
        self._seen: set[tuple[str, int, int]] = set()
        self._changed = threading.Condition()
        topics = [f"{TOPICS.prefix}/dev/{device}/{kind}" for kind in ("events", "status")]
        if tuf:
            topics.append(TOPICS.tuf("timestamp.json"))
        self.client = subscriber(broker, topics, self._message)

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic == TOPICS.tuf("timestamp.json"):
                version = json.loads(msg.payload)["signed"]["version"]
                with self._changed:
                    self.timestamp_version = version
                    self._changed.notify_all()
                return
            device, kind = TOPICS.parse_device_topic(msg.topic)
            if kind == "events":
                records = decode_batch(msg.payload, "events").records
                hook = self.on_events
                if hook is not None:
                    hook([r.body for r in records])
                with self._changed:
                    for r in records:
                        if (device, r.boot, r.seq) not in self._seen:
                            self._seen.add((device, r.boot, r.seq))
                            self.events.append(r.body)
                            self.device_events.setdefault(device, []).append(r.body)
                    self._changed.notify_all()
            else:
                status = decode_status(msg.payload).to_json()
                with self._changed:
                    self.status_history.append(status)
                    self.device_status[device] = status
                    self._changed.notify_all()
        except (MessageError, ValueError, KeyError, TypeError):
            return

    @property
    def status(self) -> Body:
        """The latest status any device published ({} before the first)."""
        with self._changed:
            return self.status_history[-1] if self.status_history else {}

    @property
    def status_count(self) -> int:
        with self._changed:
            return len(self.status_history)

    def status_of(self, device: str) -> Body:
        """The latest status `device` published ({} before its first)."""
        with self._changed:
            return self.device_status.get(device, {})

    def wait(self, what: str, check: Callable[[], bool], timeout: float = WAIT_S) -> None:
        """Returns once `check()` holds (re-checked after each message); fails after `timeout`."""
        with self._changed:
            assert self._changed.wait_for(check, timeout), f"timed out waiting for {what}"

    def find(self, event: str, version: int, after: int = 0) -> Body | None:
        """The first `event` about a model at `version` among the events from index `after` on."""
        with self._changed:
            return next((e for e in self.events[after:] if is_event(e, event, version)), None)

    def has_event(self, event: str, version: int) -> bool:
        return self.find(event, version) is not None

    def event(self, event: str, version: int, after: int = 0) -> Body:
        """Waits for `event` about a model at `version` (among the events from `after` on)."""
        self.wait(f"{event} @{version}", lambda: self.find(event, version, after) is not None)
        found = self.find(event, version, after)
        assert found is not None
        return found

    def names(self, version: int, device: str | None = None) -> list[str]:
        """The events about a model at `version` (of `device`, or of all), in arrival order."""
        with self._changed:
            events = self.events if device is None else self.device_events.get(device, [])
            return [e["event"] for e in events if (e.get("model") or {}).get("version") == version]

    def stop(self) -> None:
        close(self.client)


def sigkill_on(watcher: DeviceWatcher, event: str, version: int, pid: int) -> threading.Event:
    """SIGKILLs `pid` from paho's thread the moment `event` about `version` arrives (once);
    the returned flag says it fired."""
    fired = threading.Event()

    def hook(bodies: Iterable[Body]) -> None:
        if not fired.is_set() and any(is_event(b, event, version) for b in bodies):
            fired.set()  # first: whoever waits for the process may look the moment it is gone
            os.kill(pid, signal.SIGKILL)

    watcher.on_events = hook
    return fired


class LocalResults:
    """What an agent publishes on its local results topic, as an actuator reads it: every
    result dict in arrival order; `wait_for(n)` waits until n have come and returns them."""

    def __init__(self, broker: RunningBroker, device: str) -> None:
        self.received: list[Body] = []
        self._changed = threading.Condition()
        topic = f"edgefleet/local/{device}/results"
        self.client = subscriber(broker, [topic], self._message)

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.received.append(json.loads(msg.payload))
            self._changed.notify_all()

    def wait_for(self, n: int) -> list[Body]:
        with self._changed:
            ok = self._changed.wait_for(lambda: len(self.received) >= n, WAIT_S)
            assert ok, f"{len(self.received)} of {n} results published"
            return list(self.received)

    def predictions(self, n: int) -> list[Any]:
        """The first `n` results' predictions, once they have come."""
        return [r["prediction"] for r in self.wait_for(n)]
