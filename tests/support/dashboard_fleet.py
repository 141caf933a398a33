"""A running hub with its dashboard, and simulated devices that speak the wire contract over a
real mosquitto (status, telemetry, drift and events as an agent sends them; commands received)."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloud_hub.broker.local import RunningBroker
from cloud_hub.drift.source import PublishedCards
from cloud_hub.hub import Hub
from cloud_hub.rollout import engine as ro
from cloud_hub.rollout.operations import publish_bundle
from cloud_hub.signing.tuf_repo import TufRepository
from cloud_hub.web.api import WebAuth, create_app
from cloud_hub.web.server import WebServer
from converters.card import reference_card
from edge_agent.mqtt.session import BrokerAddress, MqttSession
from edge_agent.protocol.commands import decode_signed_command
from edge_agent.protocol.messages import (
    Batch,
    Command,
    ModelRef,
    Record,
    Status,
    encode,
)
from edge_agent.protocol.topics import Topics

TOKEN = "test-token-0123456789abcdef"
FEATURES = ("temperature", "humidity", "pressure")
TOPICS = Topics()


class SimDevice:
    """Publishes what an agent publishes, with its own MQTT identity and last will."""

    def __init__(self, broker: RunningBroker, device: str, profile: str = "raspberry-pi-4") -> None:
        self.id = device
        self.profile = profile
        self.model: ModelRef | None = None
        self.stats: dict[str, Any] = {"inferences": 0, "dropped": {}, "buffered": 0}
        self.seq = 0
        self.commands: list[Command] = []
        self.got_command = threading.Condition()
        self.offline = (TOPICS.device(device, "status"), encode(Status(device, online=False)))
        self.session = MqttSession(
            device, BrokerAddress(broker.host, broker.port), will=self.offline
        )
        self.session.subscribe(TOPICS.device(device, "cmd"), self._command)
        self.session.start()
        assert self.session.wait_connected(10), f"{device} could not connect"

    def _command(self, _topic: str, payload: bytes) -> None:
        with self.got_command:
            self.commands.append(decode_signed_command(payload).command)
            self.got_command.notify_all()

    def wait_command(self, timeout: float = 15) -> Command:
        with self.got_command:
            assert self.got_command.wait_for(lambda: self.commands, timeout), (
                f"{self.id}: no command within {timeout}s"
            )
            return self.commands[-1]

    def status(self) -> None:
        status = Status(
            self.id,
            online=True,
            boot=1,
            agent_version="0.test",
            profile=self.profile,
            model=self.model,
            stats=self.stats,
            ts=time.time(),
        )
        self.session.publish_wait(TOPICS.device(self.id, "status"), encode(status), 10, retain=True)

    def send(self, kind: str, *bodies: dict[str, Any], ts: float | None = None) -> None:
        records = []
        for i, body in enumerate(bodies):
            self.seq += 1
            records.append(Record(1, self.seq, (ts or time.time()) + i, body))
        payload = encode(Batch(self.id, tuple(records)))
        self.session.publish_wait(TOPICS.device(self.id, kind), payload, 10)

    def send_raw(self, kind: str, payload: bytes) -> None:
        self.session.publish_wait(TOPICS.device(self.id, kind), payload, 10)

    def telemetry(self, count: int, p95: float, errors: int = 0, ts: float | None = None) -> None:
        self.send(
            "telemetry",
            {
                "window_s": 1.0,
                "model": self.model.to_json() if self.model else None,
                "count": count,
                "latency_ms": {"p50": p95 / 2, "p95": p95, "p99": p95 * 1.5},
                "errors": {"nan": errors} if errors else {},
                "predictions": {"0": count},
            },
            ts=ts,
        )

    def drift(self, psi: dict[str, float], ts: float | None = None) -> None:
        worst = max(psi, key=lambda f: psi[f])
        level = "alert" if psi[worst] >= 0.25 else "warn" if psi[worst] >= 0.1 else "ok"
        body = {
            "model": self.model.to_json() if self.model else None,
            "window": 200,
            "psi": psi,
            "max_psi": psi[worst],
            "worst_feature": worst,
            "status": level,
        }
        self.send("drift", body, ts=ts)

    def events(self, rollout: str, model: ModelRef, *events: str, reason: str = "") -> None:
        self.send(
            "events",
            *(
                {"event": e, "model": model.to_json(), "reason": reason, "rollout": rollout}
                for e in events
            ),
        )

    def stop(self) -> None:
        """As an agent stops: it says it goes offline."""
        self.session.stop(final=self.offline)


@dataclass
class HubWithDashboard:
    hub: Hub
    web: WebServer
    broker: RunningBroker

    @property
    def url(self) -> str:
        return self.web.url

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 15) -> None:
        """Wait until `check()` holds; the hub notifies after each message it handles."""
        with self.hub.handled:
            assert self.hub.handled.wait_for(check, timeout), f"timed out waiting for {what}"

    def start_rollout(self, model: ModelRef, waves: list[list[str]]) -> ro.Rollout:
        r = ro.start(
            f"r-{model.name}-{model.version}", model, f"{model.name}-{model.version}.zip", 1, waves
        )
        self.hub.store.add_rollout(r.id, r.state, r.to_json())
        return r


def card_json(x: np.ndarray, names: list[str] | tuple[str, ...], model: ModelRef) -> dict[str, Any]:
    """A valid card whose drift reference is `x`, for a classifier that says 0 when the first
    feature is above 0 (`predict_sign`)."""
    above = int((x[:, 0] > 0).sum())
    return reference_card(
        x, names, name=model.name, version=model.version, prediction_counts=[above, len(x) - above]
    )


def predict_sign(x: np.ndarray) -> np.ndarray:
    return (x[:, 0] <= 0).astype(np.int64)


def bundle_of(card: dict[str, Any]) -> bytes:
    """A bundle holding `card` (its model file is not a model: the hub never runs it)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("card.json", json.dumps(card))
        z.writestr("model.onnx", b"not really onnx")
    return buf.getvalue()


def publish_card(home: Path, card: dict[str, Any]) -> None:
    """Sign a bundle of `card` into the hub's repository (initialised when it is not)."""
    repo = TufRepository(home)
    if not repo.initialised:
        repo.init()
    path = home / f"{card['name']}-{card['version']}.zip"
    path.write_bytes(bundle_of(card))
    publish_bundle(home, path)


@contextmanager
def running_hub(
    broker: RunningBroker, home: Path, open_reads: bool = False
) -> Iterator[HubWithDashboard]:
    home.mkdir(parents=True, exist_ok=True)
    repo = TufRepository(home)
    if not repo.initialised:
        repo.init()  # the hub signs its commands with its keys
    hub = Hub(home, BrokerAddress(broker.host, broker.port))
    stop = threading.Event()
    thread = threading.Thread(target=hub.run, args=(stop,), daemon=True)
    thread.start()
    assert hub.ready.wait(30), "the hub did not connect"
    app = create_app(hub.store, WebAuth(TOKEN, open_reads), PublishedCards(hub.repo))
    web = WebServer(app, "127.0.0.1", 0)
    web.start()
    try:
        yield HubWithDashboard(hub, web, broker)
    finally:
        web.stop()
        stop.set()
        thread.join(timeout=15)


def http(
    url: str, method: str = "GET", token: str | None = TOKEN, body: str | None = None
) -> tuple[int, str, bytes]:
    """(status, content type, body) of one request (with a JSON `body`, if given); HTTP errors
    are answers, not exceptions."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = body.encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, res.headers.get("Content-Type", ""), res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def get_json(url: str, token: str | None = TOKEN) -> Any:
    status, _, body = http(url, token=token)
    assert status == 200, (url, status, body)
    return json.loads(body)
