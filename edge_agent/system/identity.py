"""The device's identity: an X25519 key pair that per-device transfer encryption is sealed to.

On disk, under the agent's state folder:

    identity/                 0700
        device.key            0600  the private key, PKCS#8 PEM (unencrypted)
        device.pub.json       0644  {"v": 1, "device": "<id>", "x25519": "<base64 raw 32 bytes>"}

`device.pub.json` is what the operator hands to the hub to register the device (the hub reads
it with `parse_public_identity`). The private key never leaves the device. Enrolling twice with
the same device id is a no-op; enrolling with another id over an existing identity is refused.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from edge_agent.errors import BadDataError, ConfigError
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.topics import check_device_id
from edge_agent.system.fsutil import atomic_write

IDENTITY_DIR = "identity"
KEY_FILE = "device.key"
PUBLIC_FILE = "device.pub.json"
PUBLIC_FORMAT_VERSION = 1
X25519_KEY_SIZE = 32

_DIR_MODE = 0o700
_KEY_MODE = 0o600
_PUBLIC_MODE = 0o644
_PUBLIC_FIELDS = frozenset({"v", "device", "x25519"})


@frozen
class DeviceIdentity:
    """A device id with its X25519 private key."""

    device_id: str
    private_key: X25519PrivateKey

    def __eq__(self, other: object) -> bool:
        # key objects compare by identity; two identities are equal when their keys agree
        if not isinstance(other, DeviceIdentity):
            return NotImplemented
        return (self.device_id, self.public_bytes()) == (other.device_id, other.public_bytes())

    def __hash__(self) -> int:
        return hash((self.device_id, self.public_bytes()))

    def public_bytes(self) -> bytes:
        """The raw 32-byte X25519 public key."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def public_json(self) -> dict[str, Any]:
        """The public part, as written to `device.pub.json`."""
        return {
            "v": PUBLIC_FORMAT_VERSION,
            "device": self.device_id,
            "x25519": base64.b64encode(self.public_bytes()).decode("ascii"),
        }


def identity_paths(state_dir: Path) -> tuple[Path, Path]:
    """(private key file, public json file) under `state_dir`."""
    folder = state_dir / IDENTITY_DIR
    return folder / KEY_FILE, folder / PUBLIC_FILE


def create_identity(state_dir: Path, device_id: str) -> DeviceIdentity:
    """Enroll: make a key pair for `device_id` under `state_dir/identity`, or return the one there.

    Idempotent for the same device id. Refuses (ConfigError) an existing identity of another
    device, and a public file whose private key is gone. A private key without its public file
    (enrollment interrupted before the public part was written, so never handed to the hub) is
    completed with `device_id`.
    """
    try:
        check_device_id(device_id, "device id to enroll")
    except BadDataError as exc:
        raise ConfigError(str(exc)) from exc
    key_path, pub_path = identity_paths(state_dir)
    key_exists, pub_exists = _exists(key_path), _exists(pub_path)

    if pub_exists:
        if not key_exists:
            raise ConfigError(
                f"{key_path}: expected the private key that goes with {pub_path}, found none; "
                f"the identity is lost: remove {key_path.parent} and enroll again, then "
                "register the new device.pub.json at the hub"
            )
        existing = load_identity(state_dir)
        assert existing is not None  # both files exist
        if existing.device_id != device_id:
            raise ConfigError(
                f"{pub_path}: this device is already enrolled as {existing.device_id!r}; "
                f"refusing to enroll it as {device_id!r} (remove {key_path.parent} first "
                "to start over with a new key)"
            )
        return existing

    _make_private_dir(key_path.parent)
    if key_exists:
        identity = DeviceIdentity(device_id, _read_private_key(key_path))
    else:
        identity = DeviceIdentity(device_id, X25519PrivateKey.generate())
        pem = identity.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write(key_path, pem, mode=_KEY_MODE)
    public = json.dumps(identity.public_json(), indent=2, sort_keys=True) + "\n"
    atomic_write(pub_path, public.encode("utf-8"), mode=_PUBLIC_MODE)
    return identity


def load_identity(state_dir: Path) -> DeviceIdentity | None:
    """The enrolled identity, or None when the device is not enrolled.

    ConfigError (naming the file, saying what was expected and found) when a file is unreadable
    or corrupt, the key file is readable by anyone but its owner, or the two files disagree.
    """
    key_path, pub_path = identity_paths(state_dir)
    key_exists, pub_exists = _exists(key_path), _exists(pub_path)
    if not key_exists and not pub_exists:
        return None
    if not key_exists:
        raise ConfigError(
            f"{key_path}: expected the private key that goes with {pub_path}, found none; "
            f"remove {key_path.parent} and enroll again"
        )
    if not pub_exists:
        raise ConfigError(
            f"{pub_path}: expected the public identity next to {key_path}, found none "
            "(enrollment was interrupted): run enroll again"
        )
    private_key = _read_private_key(key_path)
    try:
        raw = pub_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{pub_path}: cannot read the public identity: {exc}") from exc
    try:
        device_id, public = parse_public_identity(raw, str(pub_path))
    except BadDataError as exc:
        raise ConfigError(str(exc)) from exc
    identity = DeviceIdentity(device_id, private_key)
    if identity.public_bytes() != public:
        raise ConfigError(
            f"{pub_path}: expected the public key of {key_path}, found another key; "
            "the files do not belong together"
        )
    return identity


def parse_public_identity(data: bytes, where: str) -> tuple[str, bytes]:
    """(device id, raw 32-byte X25519 public key) from a `device.pub.json`; BadDataError if bad."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadDataError(
            f"{where}: expected a JSON public identity, found invalid JSON: {exc}"
        ) from exc
    if not isinstance(doc, dict):
        raise BadDataError(f"{where}: expected a JSON object, found {type(doc).__name__}")
    unexpected = sorted(set(doc) - _PUBLIC_FIELDS)
    if unexpected:
        raise BadDataError(
            f"{where}: unexpected fields {unexpected}; expected only {sorted(_PUBLIC_FIELDS)}"
        )
    version = doc.get("v")
    if isinstance(version, bool) or version != PUBLIC_FORMAT_VERSION:
        raise BadDataError(
            f'{where}: expected format version "v": {PUBLIC_FORMAT_VERSION}, found {version!r}'
        )
    if "device" not in doc:
        raise BadDataError(f'{where}: expected a "device" field with the device id, found none')
    device_id = check_device_id(doc["device"], f'{where}: "device"')
    encoded = doc.get("x25519")
    if not isinstance(encoded, str):
        raise BadDataError(
            f'{where}: expected "x25519" to be the base64 public key, found {encoded!r}'
        )
    try:
        public = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadDataError(
            f'{where}: expected "x25519" in standard base64, found {encoded!r} ({exc})'
        ) from exc
    if len(public) != X25519_KEY_SIZE:
        raise BadDataError(
            f'{where}: expected "x25519" to hold a {X25519_KEY_SIZE}-byte X25519 public key, '
            f"found {len(public)} bytes"
        )
    check_public_key(public, where)
    return device_id, public


def check_public_key(public: bytes, where: str) -> X25519PublicKey:
    """The key, if it is usable for key agreement (not one of the low-order points)."""
    if len(public) != X25519_KEY_SIZE:
        raise BadDataError(
            f"{where}: expected a {X25519_KEY_SIZE}-byte X25519 public key, found {len(public)}"
        )
    key = X25519PublicKey.from_public_bytes(public)
    try:
        X25519PrivateKey.generate().exchange(key)
    except ValueError as exc:
        raise BadDataError(
            f"{where}: expected an X25519 public key, found a low-order point "
            "(no shared secret can be agreed with it)"
        ) from exc
    return key


def _exists(path: Path) -> bool:
    return os.path.lexists(path)


def _make_private_dir(folder: Path) -> None:
    folder.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # best effort: the key file itself is 0600 anyway
        os.chmod(folder, _DIR_MODE)


def _read_private_key(key_path: Path) -> X25519PrivateKey:
    try:
        fd = os.open(key_path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise ConfigError(
            f"{key_path}: expected a readable private key file (not a symlink), found: {exc}"
        ) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{key_path}: expected a regular file with the private key")
        mode = stat.S_IMODE(info.st_mode)
        if mode & ~_KEY_MODE:
            raise ConfigError(
                f"{key_path}: expected permissions 0600 or narrower (owner only), found "
                f"{mode:04o}; the private key may have been exposed: fix with "
                f"`chmod 600 {key_path}` if it was not"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            pem = f.read(64 * 1024)
    except OSError as exc:
        raise ConfigError(f"{key_path}: cannot read the private key: {exc}") from exc
    finally:
        os.close(fd)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            f"{key_path}: expected an unencrypted PKCS#8 PEM X25519 private key, "
            f"found unreadable data ({exc})"
        ) from exc
    if not isinstance(key, X25519PrivateKey):
        raise ConfigError(f"{key_path}: expected an X25519 private key, found {type(key).__name__}")
    return key
