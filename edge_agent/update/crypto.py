"""Optional per-device encryption of a transfer (pure functions, no I/O).

Scheme (v1):
- The hub draws a fresh random 32-byte transfer key K per (device, target) transfer.
- K is wrapped for the device's X25519 public key with RFC 9180 HPKE, base mode, suite
  DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305, single-shot with empty AAD;
  info = b"edgefleet-xfer-v1\\0" + device_id + b"\\0" + target. The wrapped key is enc || ct
  (32 + 32 + 16 = 80 bytes). Only that device can open it, and only for that target.
- Each chunk i of the target is sealed with ChaCha20-Poly1305 under K; nonce = 4 zero bytes +
  i as 8-byte big-endian (K is never reused across transfers, so a nonce never repeats under
  one key); AAD = b"edgefleet-chunk-v1\\0" + i (8 bytes BE) + total size (8 bytes BE) + target.
  A chunk replayed at another index, from another target or another size of the same target
  fails to open.
- Chunks are authenticated one by one so a corrupted or forged chunk is caught when it arrives
  and can be dropped and asked for again, rather than after the whole download. Dropped or
  missing chunks are caught by the downloader's size accounting, and the reassembled target is
  still verified by TUF (length and hashes) before anything is installed.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from edge_agent.errors import BadDataError, BundleRejected
from edge_agent.protocol.reasons import Reason
from edge_agent.protocol.topics import check_device_id
from edge_agent.system.identity import DeviceIdentity, check_public_key

KEY_SIZE = 32
TAG_SIZE = 16
HPKE_ENC_SIZE = 32
WRAPPED_KEY_SIZE = HPKE_ENC_SIZE + KEY_SIZE + TAG_SIZE
CHUNK_OVERHEAD = TAG_SIZE
MAX_INDEX = 2**64 - 1
MAX_TOTAL_SIZE = 2**64 - 1

INFO_PREFIX = b"edgefleet-xfer-v1\0"
CHUNK_AAD_PREFIX = b"edgefleet-chunk-v1\0"

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


def new_transfer_key() -> bytes:
    """A fresh random transfer key (32 bytes)."""
    return os.urandom(KEY_SIZE)


def wrap_info(device_id: str, target: str) -> bytes:
    """The HPKE `info` binding a wrapped key to one device and one target."""
    return INFO_PREFIX + device_id.encode("utf-8") + b"\0" + target.encode("utf-8")


def wrap_key(device_public: bytes, key: bytes, device_id: str, target: str) -> bytes:
    """Seal transfer key `key` for `device_id` (raw X25519 public key) and `target`: enc || ct."""
    _check_key(key)
    check_device_id(device_id)
    public = check_public_key(device_public, f"public key of device {device_id!r}")
    return _SUITE.encrypt(key, public, info=wrap_info(device_id, target))


def unwrap_key(identity: DeviceIdentity, wrapped: bytes, target: str) -> bytes:
    """The transfer key in `wrapped`; BundleRejected('wrong-device') unless sealed for us."""
    where = f"transfer key for {target!r}"
    if len(wrapped) != WRAPPED_KEY_SIZE:
        raise BundleRejected(
            Reason.WRONG_DEVICE,
            f"{where} was not sealed for this device ({identity.device_id}): expected "
            f"{WRAPPED_KEY_SIZE} bytes of HPKE output, found {len(wrapped)}",
        )
    try:
        key = _SUITE.decrypt(
            wrapped, identity.private_key, info=wrap_info(identity.device_id, target)
        )
    except (InvalidTag, ValueError) as exc:
        raise BundleRejected(
            Reason.WRONG_DEVICE,
            f"{where} was not sealed for this device ({identity.device_id}) and this target: "
            "HPKE open failed (another device's key, another target, or altered in transit)",
        ) from exc
    if len(key) != KEY_SIZE:  # cannot happen with the length check above; belt and braces
        raise BundleRejected(
            Reason.WRONG_DEVICE, f"{where}: expected a {KEY_SIZE}-byte key, found {len(key)} bytes"
        )
    return key


def chunk_nonce(index: int) -> bytes:
    """4 zero bytes + the chunk index as 8-byte big-endian."""
    return b"\0\0\0\0" + index.to_bytes(8, "big")


def chunk_aad(target: str, index: int, total_size: int) -> bytes:
    """Associated data binding a chunk to its target, index and the target's total size."""
    return (
        CHUNK_AAD_PREFIX
        + index.to_bytes(8, "big")
        + total_size.to_bytes(8, "big")
        + target.encode("utf-8")
    )


def seal_chunk(key: bytes, target: str, index: int, total_size: int, plaintext: bytes) -> bytes:
    """Chunk `index` of `target` sealed under transfer key `key` (len(plaintext) + 16 bytes)."""
    _check_key(key)
    _check_position(index, total_size)
    return ChaCha20Poly1305(key).encrypt(
        chunk_nonce(index), plaintext, chunk_aad(target, index, total_size)
    )


def open_chunk(key: bytes, target: str, index: int, total_size: int, ciphertext: bytes) -> bytes:
    """The plaintext of a sealed chunk; BundleRejected('bad-chunk') if it does not authenticate."""
    _check_key(key)
    where = f"chunk {index} of {target!r}"
    try:
        _check_position(index, total_size)
    except ValueError as exc:
        raise BundleRejected(Reason.BAD_CHUNK, f"{where}: {exc}") from exc
    if len(ciphertext) < TAG_SIZE:
        raise BundleRejected(
            Reason.BAD_CHUNK,
            f"{where}: expected at least {TAG_SIZE} bytes (the tag), found {len(ciphertext)}",
        )
    try:
        return ChaCha20Poly1305(key).decrypt(
            chunk_nonce(index), ciphertext, chunk_aad(target, index, total_size)
        )
    except InvalidTag as exc:
        raise BundleRejected(
            Reason.BAD_CHUNK,
            f"{where} (total size {total_size}) failed authentication: corrupted, altered, "
            "or belonging to another index, target or transfer",
        ) from exc


def _check_key(key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise BadDataError(f"transfer key: expected {KEY_SIZE} bytes, found {len(key)}")


def _check_position(index: int, total_size: int) -> None:
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"chunk index: expected 0..2**64-1, found {index}")
    if not 0 <= total_size <= MAX_TOTAL_SIZE:
        raise ValueError(f"total size: expected 0..2**64-1, found {total_size}")
