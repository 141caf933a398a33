"""The hub's TUF repository: root, targets, snapshot and timestamp roles with Ed25519 keys, and
the `commands` role that targets delegates to (no targets, only the key that signs hub -> device
commands: edge_agent/protocol/commands.py), so a device trusts that key through its root and a
rotation reaches it like any other change of the targets metadata.

Model bundles are targets whose custom fields carry the model name, `model_version` and the
digest of the model card. A delta between two versions (`add_delta`) is a target of its own
whose custom field `delta` names the two bundles it joins, with their signed hashes. Files live
under HOME/tuf/{metadata,targets} and the keys under HOME/keys (keys replaced by `rotate_key`
are kept under HOME/keys/retired). Every change is taken under one file lock, and timestamp.json
is written last, so a reader holding the lock always sees a consistent set. Every root version
stays as N.root.json and is published, so a device enrolled with an old root walks the chain to
the newest.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from cloud_hub.signing.keys import (
    COMMANDS,
    KEY_ROLES,
    PASSPHRASE_ENV,
    ROLES,
    PassphrasePrompt,
    current_passphrase,
    generate_key,
    is_encrypted,
    load_key,
)
from edge_agent.errors import ConfigError
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.transfer import chunk_bounds, chunk_count
from edge_agent.system.fsutil import atomic_write, fsync_dir
from edge_agent.update.digest import sha256_hex


@frozen
class Expiry:
    """How long each role's metadata stays valid."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=30)
    timestamp: timedelta = timedelta(days=7)


def _expires(delta: timedelta) -> datetime:
    return (datetime.now(UTC) + delta).replace(microsecond=0)


# The metadata a key rotation re-signs after the new root, in order: the rotated role's own and
# what lists its version. Timestamp always comes last and always gets a new version, so devices
# (which look when the timestamp version goes up) pick the new root up at once.
_RESIGN: dict[str, tuple[str, ...]] = {
    "root": ("timestamp",),
    "targets": ("targets", "snapshot", "timestamp"),
    "snapshot": ("snapshot", "timestamp"),
    "timestamp": ("timestamp",),
    COMMANDS: ("targets", "snapshot", "timestamp"),  # targets lists the commands key
}


@frozen
class KeyRotation:
    """What `TufRepository.rotate_key` changed."""

    role: str
    old_keyid: str
    new_keyid: str
    root_version: int
    resigned: dict[str, int]  # role -> its new metadata version, in signing order
    retired: Path | None  # where the old private key was kept (None: there was no key file)
    encrypted: bool  # whether the new key file is passphrase-protected


class TufRepository:
    """`passphrase_prompt`, when given, is asked (once per repository object) for the passphrase
    of encrypted keys while EDGEHUB_KEY_PASSPHRASE is unset."""

    def __init__(
        self,
        home: Path,
        expiry: Expiry | None = None,
        passphrase_prompt: PassphrasePrompt | None = None,
    ) -> None:
        self.home = home
        self.expiry = expiry or Expiry()
        self.metadata_dir = home / "tuf" / "metadata"
        self.targets_dir = home / "tuf" / "targets"
        self.keys_dir = home / "keys"
        self.retired_dir = self.keys_dir / "retired"
        self.passphrase_prompt = passphrase_prompt
        self._asked: str | None = None

    # ---- set-up -----------------------------------------------------------------------
    @property
    def initialised(self) -> bool:
        return (self.metadata_dir / "timestamp.json").exists()

    def init(self) -> None:
        """Keys for every role and version 1 of each role's metadata."""
        if self.initialised:
            raise ConfigError(f"{self.home}: a TUF repository is already there")
        signers = {role: generate_key(self.key_path(role)) for role in KEY_ROLES}
        root = Root(expires=_expires(self.expiry.root), consistent_snapshot=False)
        for role in ROLES:
            root.add_key(signers[role].public_key, role)
        targets = Targets(expires=_expires(self.expiry.targets))
        _delegate_commands(targets, signers[COMMANDS].public_key)
        with self._locked():
            self._write("root", Metadata(root), signers["root"])
            self._write("targets", Metadata(targets))
            self._write("snapshot", Metadata(Snapshot(expires=_expires(self.expiry.snapshot))))
            self._write("timestamp", Metadata(Timestamp(expires=_expires(self.expiry.timestamp))))

    # ---- changes ------------------------------------------------------------------------
    def add_bundle(
        self, model: ModelRef, bundle: bytes, card_digest: str, task: str | None = None
    ) -> str:
        """Store a bundle as a signed target (with its card's `task`, for people listing
        them); returns its target path."""
        path = model.target_path
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
            custom = {"model": model.name, "model_version": model.version}
            if task is not None:
                custom["task"] = task
            self._sign_target(targets, path, bundle, {**custom, "card_sha256": card_digest})
        return path

    def add_delta(self, base: ModelRef, result: ModelRef, delta: bytes) -> str:
        """Sign `delta` (edge_agent/update/delta.py: it rebuilds the bundle of `result` from
        the bundle of `base`) as a target of its own, `deltas/NAME/FROM-TO.delta`, whose custom
        field `delta` names both bundles' targets and signed sha256. Returns its path."""
        path = delta_path(base, result)
        with self._locked():
            targets = self._load("targets", Targets)
            found = {}
            for model in (base, result):
                info = targets.signed.targets.get(model.target_path)
                if info is None:
                    raise ConfigError(f"a delta needs {model} published; it is not")
                found[model] = info
            if path not in targets.signed.targets:
                pair = {
                    "base": base.target_path,
                    "base_sha256": found[base].hashes["sha256"],
                    "result": result.target_path,
                    "result_sha256": found[result].hashes["sha256"],
                }
                self._sign_target(targets, path, delta, {"delta": pair})
        return path

    def _sign_target(
        self, targets: Metadata[Targets], path: str, data: bytes, custom: dict[str, Any]
    ) -> None:
        """Store `data` as target `path` and sign it in with `custom` (under the lock)."""
        atomic_write(self.targets_dir / path, data)
        # chunk_sha256: checked by the device as each chunk arrives (edge_agent/update/updater.py)
        fields = {"custom": {**custom, "chunk_sha256": chunk_hashes(data)}}
        target = TargetFile.from_data(path, data, ["sha256"])
        target.unrecognized_fields.update(fields)
        targets.signed.targets[path] = target
        self._bump_and_sign_chain(targets)

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

    def rotate_key(self, role: str) -> KeyRotation:
        """Replace `role`'s key with a new Ed25519 key (threshold 1).

        Root gets a new version that lists the new key, signed by the old root key (which the
        devices trust) and, when root itself rotates, by the new one too (the new root must meet
        its own threshold). Then the rotated role's metadata and what lists its version are
        re-signed with new versions, timestamp last. The old private key is kept under
        keys/retired/ (0600). Everything that needs a key or a passphrase is loaded before
        anything is written.
        """
        if role not in KEY_ROLES:
            raise ConfigError(f"unknown role {role!r}; expected one of {', '.join(KEY_ROLES)}")
        self._require_initialised()
        if role == COMMANDS:
            return self._rotate_command_key()
        key_path = self.key_path(role)
        pending = _pending(key_path)
        self._ask_early(["root", role, *_RESIGN[role]])  # no terminal prompt under the lock
        with self._locked():
            _no_interrupted_rotation(pending)
            root = self._load("root", Root)
            old_keyid = _single_keyid(root.signed, role)
            root_signer = self._signer("root", root.signed)
            chain = {r: self._load(r, Signed) for r in _RESIGN[role]}
            chain_signers = {r: self._signer(r, root.signed) for r in _RESIGN[role] if r != role}
            secret = self._new_key_passphrase(key_path)

            new_signer = generate_key(pending, secret)  # keys/ROLE.key.new until the end
            try:
                root.signed.revoke_key(old_keyid, role)
                root.signed.add_key(new_signer.public_key, role)
                root.signed.roles[role].threshold = 1
                root.signed.version += 1
                root.signed.expires = _expires(self.expiry.root)
                chain_signers[role] = new_signer
                root_signers = [root_signer, new_signer] if role == "root" else [root_signer]
                for md in chain.values():
                    md.signed.version += 1
                    md.signed.expires = _expires(getattr(self.expiry, md.signed.type))
                if "snapshot" in chain:
                    chain["snapshot"].signed.meta["targets.json"] = MetaFile(
                        version=self._version("targets", chain)
                    )
                chain["timestamp"].signed.snapshot_meta = MetaFile(
                    version=self._version("snapshot", chain)
                )
            except BaseException:
                pending.unlink()
                raise

            retired = self._retire(key_path, role, old_keyid)
            self._write("root", root, *root_signers)
            for r, md in chain.items():
                self._write(r, md, chain_signers[r])
            os.replace(pending, key_path)
            fsync_dir(self.keys_dir)
        return KeyRotation(
            role=role,
            old_keyid=old_keyid,
            new_keyid=new_signer.public_key.keyid,
            root_version=root.signed.version,
            resigned={r: md.signed.version for r, md in chain.items()},
            retired=retired,
            encrypted=is_encrypted(key_path),
        )

    def _rotate_command_key(self) -> KeyRotation:
        """The commands key is listed by targets, not root: a new key goes into the delegation,
        and targets, snapshot and timestamp are re-signed with new versions."""
        self.command_signer()  # a repository made before commands were signed gets the role
        key_path = self.key_path(COMMANDS)
        pending = _pending(key_path)
        self._ask_early([COMMANDS, *_RESIGN[COMMANDS]])
        with self._locked():
            _no_interrupted_rotation(pending)
            targets = self._load("targets", Targets)
            old_keyid = _command_keyid(targets.signed) or ""
            signers = {r: self._signer(r) for r in _RESIGN[COMMANDS]}
            secret = self._new_key_passphrase(key_path)
            new_signer = generate_key(pending, secret)
            retired = self._retire(key_path, COMMANDS, old_keyid)
            _delegate_commands(targets.signed, new_signer.public_key)
            self._bump_and_sign_chain(targets, signers)
            os.replace(pending, key_path)
            fsync_dir(self.keys_dir)
            root_version = self._version("root", {})
            resigned = {r: self._version(r, {}) for r in _RESIGN[COMMANDS]}
        return KeyRotation(
            role=COMMANDS,
            old_keyid=old_keyid,
            new_keyid=new_signer.public_key.keyid,
            root_version=root_version,
            resigned=resigned,
            retired=retired,
            encrypted=is_encrypted(key_path),
        )

    def command_signer(self) -> CryptoSigner:
        """The key that signs commands, checked against the key targets delegates `commands`
        to. A repository made before commands were signed gets the role (and a key) here."""
        self._require_initialised()
        path = self.key_path(COMMANDS)
        with self._locked():
            targets = self._load("targets", Targets)
            keyid = _command_keyid(targets.signed)
            if keyid is None:
                signer = self._load_key(path) if path.exists() else generate_key(path)
                _delegate_commands(targets.signed, signer.public_key)
                self._bump_and_sign_chain(targets)
                return signer
        signer = self._load_key(path)
        if signer.public_key.keyid != keyid:
            raise ConfigError(
                f"{path} holds key {signer.public_key.keyid[:16]}, but targets delegates "
                f"commands to {keyid[:16]}; was a rotation interrupted? `edgehub keys show` "
                "lists the keys in use"
            )
        return signer

    def allow_rollback(self, name: str, below: int) -> bool:
        """Sign every published version of model `name` older than `below` as a rollback
        target: a device that a signed command tells to roll back may return to one of these,
        and to no other older version. True if the metadata changed."""
        with self._locked():
            targets = self._load("targets", Targets)
            changed = False
            for target in targets.signed.targets.values():
                custom = target.unrecognized_fields.get("custom", {})
                older = custom.get("model") == name and custom.get("model_version", below) < below
                if older and not custom.get("rollback"):
                    custom["rollback"] = True
                    changed = True
            if changed:
                self._bump_and_sign_chain(targets)
        return changed

    def _version(self, role: str, loaded: dict[str, Metadata[Any]]) -> int:
        md = loaded.get(role) or self._load(role, Signed)
        return int(md.signed.version)

    def _new_key_passphrase(self, old_key: Path) -> str | None:
        """The new key is encrypted like the old one, with the passphrase that opens it; a plain
        old key is replaced by a key encrypted only if EDGEHUB_KEY_PASSPHRASE is set."""
        if not is_encrypted(old_key):
            return current_passphrase()
        secret = current_passphrase() or self._asked
        if secret is None and self.passphrase_prompt is not None:
            secret = self._ask(old_key)
        if secret is None:
            raise ConfigError(
                f"cannot decrypt {old_key}: it is encrypted and no passphrase was given, so the "
                f"new key could not be encrypted like it; set {PASSPHRASE_ENV} or run in a "
                "terminal to be asked"
            )
        load_key(old_key, passphrase=secret)  # the new key gets a passphrase that works today
        return secret

    def _retire(self, key_path: Path, role: str, keyid: str) -> Path | None:
        """Keep the old private key as keys/retired/ROLE-KEYID8.key, 0600 (never deleted)."""
        try:
            pem = key_path.read_bytes()
        except FileNotFoundError:
            return None
        self.retired_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self.retired_dir / f"{role}-{keyid[:8]}.key"
        if target.exists() and target.read_bytes() != pem:
            target = self.retired_dir / f"{role}-{keyid}.key"
        if not target.exists():
            atomic_write(target, pem, mode=0o600)
        return target

    def key_info(self) -> list[dict[str, Any]]:
        """Per role: role, keyid, key_file, present, encrypted, version, expires, threshold."""
        self._require_initialised()
        with self._locked():
            root = self._load("root", Root).signed
            targets = self._load("targets", Targets).signed
            commands = _command_keyid(targets)
            rows = []
            for role in ROLES:
                signed = root if role == "root" else self._load(role, Signed).signed
                path = self.key_path(role)
                rows.append(
                    {
                        "role": role,
                        "keyid": ",".join(sorted(root.roles[role].keyids)),
                        "key_file": str(path),
                        "present": path.exists(),
                        "encrypted": is_encrypted(path),
                        "version": signed.version,
                        "expires": signed.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "threshold": root.roles[role].threshold,
                    }
                )
            path = self.key_path(COMMANDS)
            rows.append(
                {
                    "role": COMMANDS,
                    "keyid": commands or "",
                    "key_file": str(path),
                    "present": path.exists(),
                    "encrypted": is_encrypted(path),
                    "version": targets.version,  # the commands key is listed by targets
                    "expires": targets.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "threshold": 1 if commands else 0,
                }
            )
        return rows

    def _bump_and_sign_chain(
        self, targets: Metadata[Targets], signers: dict[str, CryptoSigner] | None = None
    ) -> None:
        """New versions of targets, snapshot and timestamp, in that order (with `signers`, loaded
        beforehand, else each role's key as it is written)."""
        keys = signers or {}
        targets.signed.version += 1
        targets.signed.expires = _expires(self.expiry.targets)
        self._write("targets", targets, *_given(keys, "targets"))
        snapshot = self._load("snapshot", Snapshot)
        snapshot.signed.version += 1
        snapshot.signed.expires = _expires(self.expiry.snapshot)
        snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
        self._write("snapshot", snapshot, *_given(keys, "snapshot"))
        timestamp = self._load("timestamp", Timestamp)
        timestamp.signed.version += 1
        timestamp.signed.expires = _expires(self.expiry.timestamp)
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        self._write("timestamp", timestamp, *_given(keys, "timestamp"))

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
        """Target path -> {length, sha256, and its custom fields: model, model_version,
        card_sha256 for a bundle; delta for a delta}."""
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

    def key_path(self, role: str) -> Path:
        return self.keys_dir / f"{role}.key"

    def _require_initialised(self) -> None:
        if not self.initialised:
            raise ConfigError(
                f"{self.home}: no TUF repository here; "
                f"run `edgehub --home {self.home} keys init` first"
            )

    def _ask(self, path: Path) -> str:
        """The prompted passphrase, asked once and then remembered by this object."""
        if self._asked is None:
            if self.passphrase_prompt is None:
                raise ConfigError(f"cannot decrypt {path}: no passphrase was given")
            self._asked = self.passphrase_prompt(path)
        return self._asked

    def _ask_early(self, roles: list[str]) -> None:
        """Ask for (and check) the passphrase before taking the lock, if it will be needed."""
        if self.passphrase_prompt is None or self._asked or current_passphrase():
            return
        encrypted = [p for p in map(self.key_path, roles) if is_encrypted(p)]
        if encrypted:
            self._load_key(encrypted[0])

    def _load_key(self, path: Path) -> CryptoSigner:
        try:
            return load_key(path, prompt=self._ask if self.passphrase_prompt else None)
        except ConfigError:
            self._asked = None  # a wrong answer is not remembered
            raise

    def _signer(self, role: str, root: Root | None = None) -> CryptoSigner:
        """The role's key, checked against the keys root trusts for the role."""
        path = self.key_path(role)
        signer = self._load_key(path)
        trusted = root if root is not None else self._load("root", Root).signed
        if signer.public_key.keyid not in trusted.roles[role].keyids:
            expected = ", ".join(k[:16] for k in trusted.roles[role].keyids)
            raise ConfigError(
                f"{path} holds key {signer.public_key.keyid[:16]}, but root v{trusted.version} "
                f"trusts {expected} for {role}; was a rotation interrupted? `edgehub keys show` "
                "lists the keys root trusts"
            )
        return signer

    def _load(self, role: str, kind: type[Any]) -> Metadata[Any]:
        md = Metadata.from_file(str(self.metadata_dir / f"{role}.json"))
        if not isinstance(md.signed, kind):
            raise ConfigError(f"{role}.json: expected {kind.__name__} metadata")
        return md

    def _write(self, role: str, md: Metadata[Any], *signers: CryptoSigner) -> None:
        md.signatures.clear()
        for signer in signers or (self._signer(role),):
            md.sign(signer, append=True)
        data = md.to_bytes(JSONSerializer(compact=True))
        if role == "root":
            atomic_write(self.metadata_dir / f"{md.signed.version}.root.json", data)
        atomic_write(self.metadata_dir / f"{role}.json", data)


def _given(signers: dict[str, CryptoSigner], role: str) -> tuple[CryptoSigner, ...]:
    return (signers[role],) if role in signers else ()


def _pending(key_path: Path) -> Path:
    """Where a rotation keeps the new key until everything is re-signed."""
    return key_path.with_name(key_path.name + ".new")


def _no_interrupted_rotation(pending: Path) -> None:
    if pending.exists():
        raise ConfigError(
            f"{pending} is left from an interrupted rotation: compare it with the keys "
            "`edgehub keys show` lists, move it aside, then rotate again"
        )


def _delegate_commands(targets: Targets, key: Any) -> None:
    """Targets delegates the role `commands` to `key` alone. The role names no target paths
    (ngclient never looks a target up in it): it exists for its key."""
    role = DelegatedRole(COMMANDS, [key.keyid], 1, terminating=True, paths=[])
    targets.delegations = Delegations(keys={key.keyid: key}, roles={COMMANDS: role})


def _command_keyid(targets: Targets) -> str | None:
    """The keyid targets delegates `commands` to, None for a repository made before."""
    delegations = targets.delegations
    role = delegations.roles.get(COMMANDS) if delegations and delegations.roles else None
    if role is None:
        return None
    if len(role.keyids) != 1:
        raise ConfigError(f"targets lists {len(role.keyids)} keys for commands; expected one")
    return str(role.keyids[0])


def _single_keyid(root: Root, role: str) -> str:
    keyids = root.roles[role].keyids
    if len(keyids) != 1:
        raise ConfigError(f"root lists {len(keyids)} keys for {role}; this hub keeps exactly one")
    return keyids[0]


def delta_path(base: ModelRef, result: ModelRef) -> str:
    """Where the delta from `base` to `result` is kept, as a target."""
    return f"deltas/{result.name}/{base.version}-{result.version}.delta"


def chunk_hashes(data: bytes) -> list[str]:
    """sha256 of each transfer chunk of `data`, in order."""
    return [
        sha256_hex(data[start:end])
        for start, end in (chunk_bounds(i, len(data)) for i in range(chunk_count(len(data))))
    ]
