"""What an engineer does to the hub, as functions the CLI and the demo share."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloud_hub.broker.identity import check_device_name
from cloud_hub.rollout import engine as ro
from cloud_hub.rollout.gates import Gates, Metrics, Position, after_install, measure
from cloud_hub.signing.tuf_repo import TufRepository
from cloud_hub.store.database import Store, typed
from cloud_hub.store.url import store_url
from edge_agent.errors import BadDataError, BundleRejected, ConfigError, TransportError
from edge_agent.protocol.input_spec import InputSpec, describe_input
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.records import DeviceEvent, DriftReport, TelemetryWindow
from edge_agent.system.identity import identity_paths, parse_public_identity
from edge_agent.update.bundle import Bundle, read_bundle
from edge_agent.update.verify import install_trusted_root

MAX_BUNDLE_BYTES = 512 * 1024 * 1024


def init_hub(home: Path) -> TufRepository:
    repo = TufRepository(home)
    repo.init()
    Store(store_url(home))
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
    path = repo.add_bundle(model, bundle_path.read_bytes(), bundle.card_sha256, bundle.card.task)
    return model, path


def enroll_device(
    home: Path, device_id: str, state_dir: Path, public_file: Path | None = None
) -> bytes | None:
    """Register a device and give it the hub's trusted root (it ships with the device).

    The device's public identity (`edge-agent enroll` writes it) comes from `public_file`, or
    from the state folder when the device was enrolled there; without one the device can only
    get unencrypted transfers. Returns the registered X25519 public key, if any."""
    check_device_name(device_id)  # a valid id, and none of the hub's broker names
    public = _public_identity(device_id, public_file or identity_paths(state_dir)[1], public_file)
    install_trusted_root(state_dir / "tuf", open_repo(home).trusted_root())
    Store(store_url(home)).register(device_id, public)
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


def fleet_facts(store: Store) -> dict[str, ro.DeviceFacts]:
    """What the registry knows of every device, as the rollout machine takes it."""
    return {
        d["id"]: ro.DeviceFacts(
            bool(d["online"]), float(d["online_since"] or 0.0), d["group"], tuple(d["tags"] or ())
        )
        for d in store.devices()
    }


def rollout_reports(store: Store, rollout_id: str) -> list[ro.Report]:
    """What the devices reported of a rollout (its events), in the order they were stored."""
    return [
        ro.Report(rec.device, event.event, event.reason, event.shadow, at=(rec.boot, rec.seq))
        for rec, event in typed(store.records("events", rollout=rollout_id), DeviceEvent)
    ]


def measure_stored(
    store: Store, model: ModelRef, installed: dict[str, Position], since: float
) -> Metrics:
    """What `model` did on these devices after each installed it (at the position given), from
    the records stored since `since` (the wave's start): what a wave's gate judges, and what the
    dashboard shows while the wave soaks."""
    devices = list(installed)
    windows = typed(store.records_since("telemetry", devices, since), TelemetryWindow)
    reports = typed(store.records_since("drift", devices, since), DriftReport)
    return measure(
        after_install(windows, model, installed), after_install(reports, model, installed)
    )


def start_rollout(
    home: Path,
    model: ModelRef,
    canary: str = "1",
    *,
    target: str = "all",
    waves: str = "100%",
    gates: Gates | None = None,
    shadow_rows: int | None = None,
    encrypt: bool = False,
    supersede: bool = True,
    store: Store | None = None,
) -> ro.Rollout:
    """Plan the waves over the devices matching `target` and store the rollout; a running hub
    steps it. Older rollouts of the same model name stop sending (superseded), unless not
    `supersede` (`edgehub simulate` leaves the rollouts it did not start alone). `store`: the
    running hub's (its leader's transactions are fenced: cloud_hub.cluster.leader), else the
    home's."""
    plan = ro.Plan(
        target, canary, tuple(waves.split(",")), gates or Gates(), shadow_rows
    )  # checks every argument before anything else
    repo = open_repo(home)
    path = model.target_path
    if path not in repo.targets():
        raise ConfigError(f"{model} is not published; run `edgehub model publish BUNDLE` first")
    store = store or Store(store_url(home))
    selector = ro.Selector.parse(target)
    fleet = [d for d, facts in fleet_facts(store).items() if selector.matches(facts, d)]
    if not fleet and target != "all":
        raise ConfigError(
            f"rollout: no devices match --target {target}; see `edgehub devices list`"
        )
    if shadow_rows is not None:
        check_shadow_inputs(repo, store, model, fleet)
    waves_planned = ro.plan_waves(fleet, ro.parse_canary(canary), ro.parse_waves(waves))
    if encrypt:
        missing = [d for d in fleet if store.public_key(d) is None]
        if missing:
            raise ConfigError(
                f"--encrypt: no public key for {', '.join(missing)}; enroll them with their "
                "device.pub.json (`edge-agent enroll`, then `edgehub devices enroll --public`)"
            )
    r = ro.start(
        f"r-{uuid.uuid4().hex[:8]}",
        model,
        path,
        repo.timestamp_version(),
        waves_planned,
        encrypt,
        plan,
        time.time(),
    )
    store.add_rollout(r.id, r.state, r.to_json())
    for row in store.rollouts([ro.RUNNING, ro.PAUSED, ro.COMPLETED]) if supersede else ():
        older = ro.Rollout.from_json(row["body"])
        if older.id != r.id and older.model.name == model.name:
            change_stored_rollout(store, older.id, lambda o: ro.supersede(o, r.id))
    return r


def check_shadow_inputs(
    repo: TufRepository, store: Store, candidate: ModelRef, devices: list[str]
) -> None:
    """Refuse a shadow run a device could not compare: a shadow answers the input its serving
    model was given, so a candidate that takes another input (kind, shape, features, categories,
    window or image preparation) would never be compared there (the agent skips it)."""
    inputs: dict[ModelRef, InputSpec] = {}

    def published_input(model: ModelRef) -> InputSpec:
        if model not in inputs:
            data = repo.read_target(model.target_path)
            inputs[model] = read_bundle(data, None, MAX_BUNDLE_BYTES).card.input
        return inputs[model]

    wanted = published_input(candidate)
    for device in devices:
        row = store.device(device) or {}
        if not row.get("model") or row.get("version") is None:
            continue  # serves nothing yet: nothing to compare with
        serving = ModelRef(str(row["model"]), int(row["version"]))
        if serving.target_path not in repo.targets():
            continue  # not published here: the device's own card decides
        have = published_input(serving)
        if have != wanted:
            raise ConfigError(
                f"shadow: {device} serves {serving}, which takes {describe_input(have)}; "
                f"{candidate} takes {describe_input(wanted)}: a shadow is compared on the "
                "serving model's input, so roll it out without a shadow stage"
            )


def load_rollout(store: Store, rollout_id: str) -> tuple[ro.Rollout, int]:
    row = store.rollout(rollout_id)
    if row is None:
        raise ConfigError(f"no rollout with id {rollout_id!r}; `edgehub rollout list` shows them")
    return ro.Rollout.from_json(row["body"]), int(row["rev"])


def change_rollout(
    home: Path, rollout_id: str, change: Callable[[ro.Rollout], None], attempts: int = 20
) -> ro.Rollout:
    """Apply a change by hand (pause, resume, abort, rollback) to the stored rollout; a running
    hub writing it at the same moment makes this read it again and retry."""
    open_repo(home)
    return change_stored_rollout(Store(store_url(home)), rollout_id, change, attempts)


def change_stored_rollout(
    store: Store, rollout_id: str, change: Callable[[ro.Rollout], None], attempts: int = 20
) -> ro.Rollout:
    """`change_rollout` on an open store (the dashboard's buttons)."""
    for _ in range(attempts):
        r, rev = load_rollout(store, rollout_id)
        change(r)
        if store.update_rollout(r.id, rev, r.state, r.to_json()):
            return r
    raise TransportError(f"rollout {rollout_id}: the store kept changing under {attempts} writes")


def rollout_rows(home: Path) -> list[dict[str, Any]]:
    return [row["body"] for row in Store(store_url(home)).rollouts()]
