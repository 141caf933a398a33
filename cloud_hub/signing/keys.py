"""Ed25519 signing keys of the TUF roles, on disk as PKCS#8 PEM, mode 0600.

A passphrase, when set, comes from the environment variable EDGEHUB_KEY_PASSPHRASE. The command
line may also ask for it: `load_key` takes a `PassphrasePrompt`, called only when the variable
is unset and the key file turns out to be encrypted, and `passphrase_in_use` lets `edgehub keys
init --passphrase-prompt` create encrypted keys with a passphrase typed in a terminal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey

from edge_agent.errors import ConfigError
from edge_agent.system.fsutil import atomic_write

ROLES = ("root", "targets", "snapshot", "timestamp")  # TUF's top-level roles, listed in root
COMMANDS = "commands"  # signs hub -> device commands; delegated to by targets (tuf_repo.py)
KEY_ROLES = (*ROLES, COMMANDS)  # every key the hub keeps
PASSPHRASE_ENV = "EDGEHUB_KEY_PASSPHRASE"

PassphrasePrompt = Callable[[Path], str]
"""Asked for the passphrase that opens the key file at the given path (getpass in a terminal)."""

_ENCRYPTED_PEM = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
_HOW = f"set {PASSPHRASE_ENV} or run in a terminal to be asked"
_in_use: ContextVar[str | None] = ContextVar("edgehub_key_passphrase", default=None)


@contextmanager
def passphrase_in_use(secret: str) -> Iterator[None]:
    """Within the block, keys are created and opened with `secret`, as if EDGEHUB_KEY_PASSPHRASE
    were set to it (without touching the process environment)."""
    if not secret:
        raise ConfigError("an empty passphrase would leave the keys unencrypted")
    token = _in_use.set(secret)
    try:
        yield
    finally:
        _in_use.reset(token)


def current_passphrase() -> str | None:
    """The passphrase in use: `passphrase_in_use`, else EDGEHUB_KEY_PASSPHRASE (empty = none)."""
    return _in_use.get() or os.environ.get(PASSPHRASE_ENV) or None


def is_encrypted(path: Path) -> bool:
    """Whether the PEM key file at `path` is passphrase-protected (False if there is none)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(_ENCRYPTED_PEM)) == _ENCRYPTED_PEM
    except FileNotFoundError:
        return False


def generate_key(path: Path, passphrase: str | None = None) -> CryptoSigner:
    """A new Ed25519 key written to `path` (0600); refuses to overwrite an existing key.

    Encrypted with `passphrase`, else with `current_passphrase()`, else not at all.
    """
    if path.exists():
        raise ConfigError(f"{path}: a key is already there; refusing to overwrite it")
    private = Ed25519PrivateKey.generate()
    secret = passphrase or current_passphrase()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(secret.encode())
        if secret
        else serialization.NoEncryption()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    atomic_write(path, pem, mode=0o600)
    return _signer(private)


def load_key(
    path: Path, passphrase: str | None = None, prompt: PassphrasePrompt | None = None
) -> CryptoSigner:
    """The key at `path`. An encrypted key is opened with `passphrase`, else the passphrase in
    use (see `current_passphrase`), else what `prompt` answers; a plain key needs none."""
    try:
        pem = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no key here; run `edgehub keys init` first") from exc
    secret: str | None = None
    if pem.startswith(_ENCRYPTED_PEM):
        secret = passphrase or current_passphrase()
        if secret is None and prompt is not None:
            secret = prompt(path)
        if not secret:
            raise ConfigError(
                f"cannot decrypt {path}: it is encrypted and no passphrase was given; {_HOW}"
            )
    try:
        private = serialization.load_pem_private_key(
            pem, password=secret.encode() if secret else None
        )
    except ValueError as exc:
        if secret:
            raise ConfigError(f"cannot decrypt {path}: wrong passphrase? {_HOW}") from exc
        raise ConfigError(f"{path}: not a PEM private key ({exc})") from exc
    except TypeError as exc:  # encrypted in a way the header check did not see
        raise ConfigError(f"cannot decrypt {path}: {exc}; {_HOW}") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(f"{path}: expected an Ed25519 private key, got {type(private).__name__}")
    return _signer(private)


def _signer(private: Ed25519PrivateKey) -> CryptoSigner:
    return CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))
