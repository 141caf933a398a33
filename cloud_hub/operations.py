"""What an engineer does to the hub, as functions the CLI and the demo share."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from cloud_hub import rollout as ro
from cloud_hub.storage import Store, default_url
from cloud_hub.tuf_repo import TufRepository, target_path_for
from edge_agent.bundle import Bundle, read_bundle
from edge_agent.errors import BadDataError, BundleRejected, ConfigError
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.topics import check_device_id
from edge_agent.trust import install_trusted_root

MAX_BUNDLE_BYTES = 512 * 1024 * 1024


def init_hub(home: Path) -> TufRepository:
    repo = TufRepository(home)
    repo.init()
    Store(default_url(home))
    return repo


def open_repo(home: Path) -> TufRepository:
    repo = TufRepository(home)
    if not repo.initialised:
        raise ConfigError(f"{home}: no hub here; run `edgehub init --home {home}` first")
    return repo


def read_bundle_file(bundle_path: Path) -> Bundle:
    """A bundle from disk, checked as a device would check it."""
    try:
        data = bundle_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{bundle_path}: cannot read the bundle ({exc.strerror})") from exc
    try:
        return read_bundle(data, None, MAX_BUNDLE_BYTES)
    except BundleRejected as exc:
        raise BadDataError(f"{bundle_path}: not a valid bundle: {exc}") from exc


def publish_bundle(home: Path, bundle_path: Path) -> tuple[ModelRef, str]:
    """Check a bundle and sign it into the TUF repository as a target."""
    repo = open_repo(home)
    bundle = read_bundle_file(bundle_path)
    model = bundle.card.model
    path = repo.add_bundle(model, bundle_path.read_bytes(), bundle.card_sha256)
    return model, path


def enroll_device(home: Path, device_id: str, state_dir: Path) -> None:
    """Register a device and give it the hub's trusted root (it ships with the device)."""
    check_device_id(device_id)
    install_trusted_root(state_dir / "tuf", open_repo(home).trusted_root())
    Store(default_url(home)).register(device_id)


def start_rollout(
    home: Path, model: ModelRef, canary: str, devices: list[str] | None = None
) -> ro.Rollout:
    repo = open_repo(home)
    target = target_path_for(model)
    if target not in repo.targets():
        raise ConfigError(f"{model} is not published; run `edgehub model publish BUNDLE` first")
    store = Store(default_url(home))
    fleet = devices if devices is not None else [d["id"] for d in store.devices()]
    waves = ro.plan_waves(fleet, ro.canary_count(canary, len(fleet)))
    r = ro.start(f"r-{uuid.uuid4().hex[:8]}", model, target, repo.timestamp_version(), waves)
    store.save_rollout(r.id, r.state, r.to_json())
    return r


def rollout_rows(home: Path) -> list[dict[str, Any]]:
    return [row["body"] for row in Store(default_url(home)).rollouts()]
