"""The hub's TUF repository: root, targets, snapshot and timestamp roles with Ed25519 keys.

Model bundles are targets whose custom fields carry the model name, `model_version` and the
digest of the model card. Files live under HOME/tuf/{metadata,targets} and the keys under
HOME/keys. Every change is taken under one file lock, and timestamp.json is written last, so a
reader holding the lock always sees a consistent set.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from cloud_hub.keys import ROLES, generate_key, load_key
from edge_agent.errors import ConfigError
from edge_agent.fsutil import atomic_write
from edge_agent.protocol.messages import ModelRef


@dataclass(frozen=True)
class Expiry:
    """How long each role's metadata stays valid."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=30)
    timestamp: timedelta = timedelta(days=7)


def _expires(delta: timedelta) -> datetime:
    return (datetime.now(UTC) + delta).replace(microsecond=0)


def target_path_for(model: ModelRef) -> str:
    return f"{model.name}/{model.version}.zip"


class TufRepository:
    def __init__(self, home: Path, expiry: Expiry | None = None) -> None:
        self.home = home
        self.expiry = expiry or Expiry()
        self.metadata_dir = home / "tuf" / "metadata"
        self.targets_dir = home / "tuf" / "targets"
        self.keys_dir = home / "keys"

    # ---- set-up -----------------------------------------------------------------------
    @property
    def initialised(self) -> bool:
        return (self.metadata_dir / "timestamp.json").exists()

    def init(self) -> None:
        """Keys for every role and version 1 of each role's metadata."""
        if self.initialised:
            raise ConfigError(f"{self.home}: a TUF repository is already there")
        signers = {role: generate_key(self.keys_dir / f"{role}.key") for role in ROLES}
        root = Root(expires=_expires(self.expiry.root), consistent_snapshot=False)
        for role, signer in signers.items():
            root.add_key(signer.public_key, role)
        with self._locked():
            self._write("root", Metadata(root), signers["root"])
            self._write("targets", Metadata(Targets(expires=_expires(self.expiry.targets))))
            self._write("snapshot", Metadata(Snapshot(expires=_expires(self.expiry.snapshot))))
            self._write("timestamp", Metadata(Timestamp(expires=_expires(self.expiry.timestamp))))

    # ---- changes ------------------------------------------------------------------------
    def add_bundle(self, model: ModelRef, bundle: bytes, card_digest: str) -> str:
        """Store a bundle as a signed target; returns its target path."""
        path = target_path_for(model)
        with self._locked():
            targets = self._load("targets", Targets)
            if path in targets.signed.targets:
                raise ConfigError(f"{model} is already published; give the model a new version")
            for other in targets.signed.targets.values():
                custom = other.custom
                if custom.get("model") == model.name and custom.get("model_version", 0) > (
                    model.version
                ):
                    raise ConfigError(
                        f"{model}: version {custom['model_version']} of {model.name} is already "
                        "published; versions only go up"
                    )
            atomic_write(self.targets_dir / path, bundle)
            custom_fields = {
                "custom": {
                    "model": model.name,
                    "model_version": model.version,
                    "card_sha256": card_digest,
                }
            }
            target = TargetFile.from_data(path, bundle, ["sha256"])
            target.unrecognized_fields.update(custom_fields)
            targets.signed.targets[path] = target
            self._bump_and_sign_chain(targets)
        return path

    def refresh_timestamp(self, min_remaining: timedelta) -> bool:
        """Re-sign the timestamp when it expires within `min_remaining`. True if it did."""
        with self._locked():
            ts = self._load("timestamp", Timestamp)
            if ts.signed.expires - datetime.now(UTC) > min_remaining:
                return False
            ts.signed.version += 1
            ts.signed.expires = _expires(self.expiry.timestamp)
            self._write("timestamp", ts)
            return True

    def _bump_and_sign_chain(self, targets: Metadata[Targets]) -> None:
        targets.signed.version += 1
        targets.signed.expires = _expires(self.expiry.targets)
        self._write("targets", targets)
        snapshot = self._load("snapshot", Snapshot)
        snapshot.signed.version += 1
        snapshot.signed.expires = _expires(self.expiry.snapshot)
        snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
        self._write("snapshot", snapshot)
        timestamp = self._load("timestamp", Timestamp)
        timestamp.signed.version += 1
        timestamp.signed.expires = _expires(self.expiry.timestamp)
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        self._write("timestamp", timestamp)

    # ---- reads --------------------------------------------------------------------------
    def published(self) -> dict[str, bytes]:
        """What goes on the retained fleet/tuf/ topics, by name ('root/1.json', 'targets.json')."""
        with self._locked():
            files = {
                f"root/{p.name.split('.')[0]}.json": p.read_bytes()
                for p in self.metadata_dir.glob("*.root.json")
            }
            for role in ("targets", "snapshot", "timestamp"):
                files[f"{role}.json"] = (self.metadata_dir / f"{role}.json").read_bytes()
        return files

    def trusted_root(self) -> bytes:
        """The root a device ships with at enrollment (the newest one)."""
        return (self.metadata_dir / "root.json").read_bytes()

    def timestamp_version(self) -> int:
        raw = json.loads((self.metadata_dir / "timestamp.json").read_bytes())
        return int(raw["signed"]["version"])

    def targets(self) -> dict[str, dict[str, Any]]:
        """Target path -> {length, sha256, model, model_version, card_sha256}."""
        raw = json.loads((self.metadata_dir / "targets.json").read_bytes())
        out = {}
        for path, info in raw["signed"]["targets"].items():
            out[path] = {
                "length": info["length"],
                "sha256": info["hashes"]["sha256"],
                **info.get("custom", {}),
            }
        return out

    def read_target(self, path: str) -> bytes:
        resolved = (self.targets_dir / path).resolve()
        if not resolved.is_relative_to(self.targets_dir.resolve()):
            raise ConfigError(f"target path {path!r} leaves the targets folder")
        return resolved.read_bytes()

    # ---- plumbing -----------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / ".tuf.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _signer(self, role: str) -> CryptoSigner:
        return load_key(self.keys_dir / f"{role}.key")

    def _load(self, role: str, kind: type[Any]) -> Metadata[Any]:
        md = Metadata.from_file(str(self.metadata_dir / f"{role}.json"))
        if not isinstance(md.signed, kind):
            raise ConfigError(f"{role}.json: expected {kind.__name__} metadata")
        return md

    def _write(self, role: str, md: Metadata[Any], signer: CryptoSigner | None = None) -> None:
        md.signatures.clear()
        md.sign(signer or self._signer(role))
        data = md.to_bytes(JSONSerializer(compact=True))
        if role == "root":
            atomic_write(self.metadata_dir / f"{md.signed.version}.root.json", data)
        atomic_write(self.metadata_dir / f"{role}.json", data)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
