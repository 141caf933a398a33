"""Ed25519 signing keys of the TUF roles, on disk as PKCS#8 PEM, mode 0600.

A passphrase, when set, comes from the environment variable EDGEHUB_KEY_PASSPHRASE.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey

from edge_agent.errors import ConfigError
from edge_agent.fsutil import atomic_write

ROLES = ("root", "targets", "snapshot", "timestamp")
PASSPHRASE_ENV = "EDGEHUB_KEY_PASSPHRASE"


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def generate_key(path: Path) -> CryptoSigner:
    """A new Ed25519 key written to `path` (0600); refuses to overwrite an existing key."""
    if path.exists():
        raise ConfigError(f"{path}: a key is already there; refusing to overwrite it")
    private = Ed25519PrivateKey.generate()
    secret = _passphrase()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(secret) if secret else serialization.NoEncryption()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    atomic_write(path, pem, mode=0o600)
    return _signer(private)


def load_key(path: Path) -> CryptoSigner:
    try:
        pem = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no key here; run `edgehub keys init` first") from exc
    try:
        private = serialization.load_pem_private_key(pem, password=_passphrase())
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{path}: cannot load the key ({exc}); is {PASSPHRASE_ENV} set to its passphrase?"
        ) from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(f"{path}: expected an Ed25519 private key, got {type(private).__name__}")
    return _signer(private)


def _signer(private: Ed25519PrivateKey) -> CryptoSigner:
    return CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))
