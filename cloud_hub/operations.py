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
from edge_agent.identity import identity_paths, parse_public_identity
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
        raise ConfigError(f"{home}: no hub here; run `edgehub --home {home} keys init` first")
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


def enroll_device(
    home: Path, device_id: str, state_dir: Path, public_file: Path | None = None
) -> bytes | None:
    """Register a device and give it the hub's trusted root (it ships with the device).

    The device's public identity (`edge-agent enroll` writes it) comes from `public_file`, or
    from the state folder when the device was enrolled there; without one the device can only
    get unencrypted transfers. Returns the registered X25519 public key, if any."""
    check_device_id(device_id)
    public = _public_identity(device_id, public_file or identity_paths(state_dir)[1], public_file)
    install_trusted_root(state_dir / "tuf", open_repo(home).trusted_root())
    Store(default_url(home)).register(device_id, public)
    return public


def _public_identity(device_id: str, path: Path, required: Path | None) -> bytes | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if required is not None:
            raise ConfigError(f"{path}: no such public identity file") from None
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the public identity ({exc.strerror})") from exc
    claimed, public = parse_public_identity(data, str(path))
    if claimed != device_id:
        raise ConfigError(f"{path}: expected the identity of {device_id!r}, got {claimed!r}")
    return public


def start_rollout(
    home: Path,
    model: ModelRef,
    canary: str,
    devices: list[str] | None = None,
    encrypt: bool = False,
) -> ro.Rollout:
    repo = open_repo(home)
    target = target_path_for(model)
    if target not in repo.targets():
        raise ConfigError(f"{model} is not published; run `edgehub model publish BUNDLE` first")
    store = Store(default_url(home))
    fleet = devices if devices is not None else [d["id"] for d in store.devices()]
    waves = ro.plan_waves(fleet, ro.canary_count(canary, len(fleet)))
    if encrypt:
        missing = [d for d in fleet if store.public_key(d) is None]
        if missing:
            raise ConfigError(
                f"--encrypt: no public key for {', '.join(missing)}; enroll them with their "
                "device.pub.json (`edge-agent enroll`, then `edgehub devices enroll --public`)"
            )
    r = ro.start(
        f"r-{uuid.uuid4().hex[:8]}", model, target, repo.timestamp_version(), waves, encrypt
    )
    store.save_rollout(r.id, r.state, r.to_json())
    return r


def rollout_rows(home: Path) -> list[dict[str, Any]]:
    return [row["body"] for row in Store(default_url(home)).rollouts()]
