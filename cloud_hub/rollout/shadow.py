"""Shadow runs from the hub: queue `shadow` / `shadow-stop` commands, and read the reports.

The CLI queues commands in the store's outbox; the running hub (`edgehub serve`) sends them.
A device verifies the candidate like a deploy, runs it beside its serving model on live input
without acting on its outputs, and sends a `shadow-report` event every `rows` rows.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from cloud_hub.rollout.operations import check_shadow_inputs, open_repo
from cloud_hub.store.database import Store, typed
from cloud_hub.store.url import store_url
from edge_agent.errors import ConfigError
from edge_agent.protocol.messages import Command, ModelRef, encode
from edge_agent.protocol.records import DeviceEvent
from edge_agent.protocol.topics import check_device_id


def _known_devices(store: Store, devices: list[str]) -> list[str]:
    for device in devices:
        check_device_id(device, "--device")
        if store.device(device) is None:
            raise ConfigError(
                f"--device: no device {device!r} at this hub; `edgehub devices list` shows them"
            )
    return devices


def start_shadow(home: Path, model: ModelRef, devices: list[str], rows: int) -> list[Command]:
    """Queue a shadow run of the published `model` on `devices`."""
    repo = open_repo(home)
    target = model.target_path
    if target not in repo.targets():
        raise ConfigError(f"{model} is not published; run `edgehub model publish BUNDLE` first")
    store = Store(store_url(home))
    check_shadow_inputs(repo, store, model, _known_devices(store, devices))
    commands = []
    for device in devices:
        cmd = Command(
            id=f"s-{uuid.uuid4().hex[:8]}",
            kind="shadow",
            model=model,
            target=target,
            tuf_version=repo.timestamp_version(),
            rows=rows,
        )
        _queue(store, device, cmd)
        commands.append(cmd)
    return commands


def stop_shadow(home: Path, devices: list[str]) -> None:
    open_repo(home)
    store = Store(store_url(home))
    for device in _known_devices(store, devices):
        _queue(store, device, Command(f"s-{uuid.uuid4().hex[:8]}", "shadow-stop"))


def _queue(store: Store, device: str, cmd: Command) -> None:
    store.queue_command(device, json.loads(encode(cmd)))  # as it goes on the wire


def shadow_reports(home: Path, device: str | None = None) -> list[dict[str, Any]]:
    """The latest shadow report per (device, candidate), oldest first."""
    open_repo(home)
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    events = Store(store_url(home)).records("events", device)
    for rec, event in typed(events, DeviceEvent):
        shadow = event.shadow
        if event.event != "shadow-report" or shadow is None:
            continue
        ref = str(event.model) if event.model is not None else "None@None"
        latency = shadow.latency_ms
        latest[(rec.device, ref)] = {
            "device": rec.device,
            "current": str(shadow.current) if shadow.current is not None else "",
            "candidate": ref,
            "rows": shadow.rows,
            "agreement": shadow.agreement,
            "errors": shadow.errors,
            "current_p95_ms": latency.get("current", {}).get("p95"),
            "candidate_p95_ms": latency.get("candidate", {}).get("p95"),
            "ts": rec.ts,
        }
    return list(latest.values())
