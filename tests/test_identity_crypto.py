"""Device identity (enroll/load/public json) and per-device transfer encryption."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.errors import BadDataError, BundleRejected, ConfigError
from edge_agent.system.identity import (
    DeviceIdentity,
    create_identity,
    identity_paths,
    load_identity,
    parse_public_identity,
)
from edge_agent.update.crypto import (
    WRAPPED_KEY_SIZE,
    new_transfer_key,
    open_chunk,
    seal_chunk,
    unwrap_key,
    wrap_info,
    wrap_key,
)

TARGET = "models/vib-anomaly-3.bundle"
KEY = bytes(range(32))


def fixed_identity(device_id: str, seed: int) -> DeviceIdentity:
    return DeviceIdentity(device_id, X25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- identity on disk ---------------------------------------------------------------------------


def test_not_enrolled_is_none(tmp_path: Path) -> None:
    assert load_identity(tmp_path) is None


def test_create_then_load(tmp_path: Path) -> None:
    created = create_identity(tmp_path, "pi-07")
    key_path, pub_path = identity_paths(tmp_path)
    assert key_path == tmp_path / "identity" / "device.key"
    assert pub_path == tmp_path / "identity" / "device.pub.json"
    assert mode_of(key_path) == 0o600
    assert mode_of(pub_path) == 0o644
    assert mode_of(key_path.parent) == 0o700
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")

    loaded = load_identity(tmp_path)
    assert loaded is not None
    assert loaded.device_id == "pi-07"
    assert loaded.public_bytes() == created.public_bytes()
    assert len(created.public_bytes()) == 32
    assert json.loads(pub_path.read_bytes()) == created.public_json()
    assert created.public_json() == {
        "v": 1,
        "device": "pi-07",
        "x25519": base64.b64encode(created.public_bytes()).decode(),
    }


def test_create_is_idempotent_for_same_id(tmp_path: Path) -> None:
    first = create_identity(tmp_path, "pi-07")
    key_before = identity_paths(tmp_path)[0].read_bytes()
    again = create_identity(tmp_path, "pi-07")
    assert again.public_bytes() == first.public_bytes()
    assert identity_paths(tmp_path)[0].read_bytes() == key_before


def test_create_refuses_another_id(tmp_path: Path) -> None:
    first = create_identity(tmp_path, "pi-07")
    with pytest.raises(ConfigError, match=r"already enrolled as 'pi-07'.*'pi-08'"):
        create_identity(tmp_path, "pi-08")
    loaded = load_identity(tmp_path)
    assert loaded is not None and loaded.public_bytes() == first.public_bytes()


def test_create_rejects_invalid_device_id(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="device id to enroll"):
        create_identity(tmp_path, "pi/07")
    assert load_identity(tmp_path) is None


def test_key_file_wider_than_0600_is_refused(tmp_path: Path) -> None:
    create_identity(tmp_path, "pi-07")
    key_path, _ = identity_paths(tmp_path)
    os.chmod(key_path, 0o644)
    with pytest.raises(ConfigError) as err:
        load_identity(tmp_path)
    message = str(err.value)
    assert str(key_path) in message
    assert "expected permissions 0600" in message and "found 0644" in message
    # create_identity (idempotent enroll) does not silently accept it either
    with pytest.raises(ConfigError, match="found 0644"):
        create_identity(tmp_path, "pi-07")


def test_key_file_0400_is_fine(tmp_path: Path) -> None:
    create_identity(tmp_path, "pi-07")
    os.chmod(identity_paths(tmp_path)[0], 0o400)
    assert load_identity(tmp_path) is not None


def write_key(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o600)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "PKCS#8 PEM"),
        (b"not a key at all", "PKCS#8 PEM"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "PKCS#8 PEM"),
        (
            Ed25519PrivateKey.from_private_bytes(bytes(32)).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "expected an X25519 private key, found",
        ),
        (
            X25519PrivateKey.from_private_bytes(bytes([9]) * 32).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "files do not belong together",
        ),
    ],
    ids=["empty", "garbage", "bad-pem-body", "ed25519", "other-x25519"],
)
def test_corrupt_key_file(tmp_path: Path, content: bytes, expected: str) -> None:
    create_identity(tmp_path, "pi-07")
    key_path, pub_path = identity_paths(tmp_path)
    write_key(key_path, content)
    with pytest.raises(ConfigError, match=expected) as err:
        load_identity(tmp_path)
    assert str(key_path) in str(err.value) or str(pub_path) in str(err.value)


def test_unreadable_key_file(tmp_path: Path) -> None:
    create_identity(tmp_path, "pi-07")
    key_path, _ = identity_paths(tmp_path)
    key_path.unlink()
    key_path.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match=r"device\.key"):
        load_identity(tmp_path)


def test_symlinked_key_file_is_refused(tmp_path: Path) -> None:
    create_identity(tmp_path, "pi-07")
    key_path, _ = identity_paths(tmp_path)
    real = tmp_path / "elsewhere.key"
    os.replace(key_path, real)
    key_path.symlink_to(real)
    with pytest.raises(ConfigError, match="not a symlink"):
        load_identity(tmp_path)


def test_corrupt_public_file(tmp_path: Path) -> None:
    create_identity(tmp_path, "pi-07")
    _, pub_path = identity_paths(tmp_path)
    pub_path.write_bytes(b"{nope")
    with pytest.raises(ConfigError, match=r"device\.pub\.json.*invalid JSON"):
        load_identity(tmp_path)


def test_missing_public_file_and_reenroll_completes_it(tmp_path: Path) -> None:
    created = create_identity(tmp_path, "pi-07")
    _, pub_path = identity_paths(tmp_path)
    pub_path.unlink()
    with pytest.raises(ConfigError, match="enrollment was interrupted"):
        load_identity(tmp_path)
    again = create_identity(tmp_path, "pi-07")
    assert again.public_bytes() == created.public_bytes()
    assert load_identity(tmp_path) == again


def test_missing_key_file_is_refused(tmp_path: Path) -> None:
    create_identity(tmp_path, "pi-07")
    key_path, _ = identity_paths(tmp_path)
    key_path.unlink()
    with pytest.raises(ConfigError, match=r"device\.key.*found none"):
        load_identity(tmp_path)
    with pytest.raises(ConfigError, match="identity is lost"):
        create_identity(tmp_path, "pi-07")


# -- public identity json -----------------------------------------------------------------------


def test_public_json_round_trip() -> None:
    ident = fixed_identity("pi-07", 3)
    data = json.dumps(ident.public_json()).encode()
    assert parse_public_identity(data, "upload") == ("pi-07", ident.public_bytes())


GOOD_PUB = base64.b64encode(fixed_identity("x", 3).public_bytes()).decode()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"{not json", "invalid JSON"),
        (b"\xff\xfe", "invalid JSON"),
        (b"[1, 2]", "expected a JSON object, found list"),
        (b'"text"', "expected a JSON object, found str"),
        ({"device": "pi-07", "x25519": GOOD_PUB}, 'version "v": 1, found None'),
        ({"v": 2, "device": "pi-07", "x25519": GOOD_PUB}, 'version "v": 1, found 2'),
        ({"v": "1", "device": "pi-07", "x25519": GOOD_PUB}, "found '1'"),
        ({"v": True, "device": "pi-07", "x25519": GOOD_PUB}, "found True"),
        ({"v": 1, "x25519": GOOD_PUB}, '"device" field'),
        ({"v": 1, "device": "", "x25519": GOOD_PUB}, "1-64 characters"),
        ({"v": 1, "device": "a/b", "x25519": GOOD_PUB}, "1-64 characters"),
        ({"v": 1, "device": "pi+", "x25519": GOOD_PUB}, "1-64 characters"),
        ({"v": 1, "device": 7, "x25519": GOOD_PUB}, "1-64 characters"),
        ({"v": 1, "device": "pi-07"}, '"x25519" to be the base64 public key, found None'),
        ({"v": 1, "device": "pi-07", "x25519": 12}, "found 12"),
        ({"v": 1, "device": "pi-07", "x25519": "not base64!"}, "standard base64"),
        ({"v": 1, "device": "pi-07", "x25519": GOOD_PUB[:-2]}, "standard base64"),
        (
            {"v": 1, "device": "pi-07", "x25519": base64.b64encode(bytes(31)).decode()},
            "32-byte X25519 public key, found 31 bytes",
        ),
        (
            {"v": 1, "device": "pi-07", "x25519": base64.b64encode(bytes(33)).decode()},
            "found 33 bytes",
        ),
        (
            {"v": 1, "device": "pi-07", "x25519": base64.b64encode(bytes(32)).decode()},
            "low-order point",
        ),
        ({"v": 1, "device": "pi-07", "x25519": GOOD_PUB, "extra": 1}, "unexpected fields"),
    ],
)
def test_malformed_public_identity(data: bytes | dict[str, object], expected: str) -> None:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    with pytest.raises(BadDataError, match=r"^upload\.json: ") as err:
        parse_public_identity(raw, "upload.json")
    assert expected in str(err.value)


# -- key wrapping -------------------------------------------------------------------------------


def test_wrap_unwrap_round_trip() -> None:
    dev = fixed_identity("pi-07", 1)
    key = new_transfer_key()
    assert len(key) == 32 and key != new_transfer_key()
    wrapped = wrap_key(dev.public_bytes(), key, "pi-07", TARGET)
    assert len(wrapped) == WRAPPED_KEY_SIZE == 80
    assert unwrap_key(dev, wrapped, TARGET) == key


def test_wrapped_key_for_another_device_is_wrong_device() -> None:
    dev, other = fixed_identity("pi-07", 1), fixed_identity("pi-08", 2)
    wrapped = wrap_key(other.public_bytes(), KEY, "pi-08", TARGET)
    with pytest.raises(BundleRejected, match="not sealed for this device") as err:
        unwrap_key(dev, wrapped, TARGET)
    assert err.value.reason == "wrong-device"


def test_wrapped_key_for_our_key_but_another_device_id_is_wrong_device() -> None:
    dev = fixed_identity("pi-07", 1)
    wrapped = wrap_key(dev.public_bytes(), KEY, "pi-08", TARGET)
    with pytest.raises(BundleRejected) as err:
        unwrap_key(dev, wrapped, TARGET)
    assert err.value.reason == "wrong-device"


def test_wrapped_key_for_another_target_is_wrong_device() -> None:
    dev = fixed_identity("pi-07", 1)
    wrapped = wrap_key(dev.public_bytes(), KEY, "pi-07", TARGET)
    with pytest.raises(BundleRejected, match="not sealed for this device") as err:
        unwrap_key(dev, wrapped, "models/other.bundle")
    assert err.value.reason == "wrong-device"


@pytest.mark.parametrize("position", [0, 31, 32, 50, 79])
def test_tampered_wrapped_key_is_wrong_device(position: int) -> None:
    dev = fixed_identity("pi-07", 1)
    wrapped = bytearray(wrap_key(dev.public_bytes(), KEY, "pi-07", TARGET))
    wrapped[position] ^= 0x01
    with pytest.raises(BundleRejected) as err:
        unwrap_key(dev, bytes(wrapped), TARGET)
    assert err.value.reason == "wrong-device"


@pytest.mark.parametrize("length", [0, 48, 79, 81])
def test_wrong_length_wrapped_key_is_wrong_device(length: int) -> None:
    dev = fixed_identity("pi-07", 1)
    wrapped = wrap_key(dev.public_bytes(), KEY, "pi-07", TARGET)
    bad = (wrapped + b"\0")[:length]
    with pytest.raises(BundleRejected, match=f"found {length}") as err:
        unwrap_key(dev, bad, TARGET)
    assert err.value.reason == "wrong-device"


def test_wrap_rejects_bad_inputs() -> None:
    dev = fixed_identity("pi-07", 1)
    with pytest.raises(BadDataError, match="low-order"):
        wrap_key(bytes(32), KEY, "pi-07", TARGET)
    with pytest.raises(BadDataError, match="32-byte"):
        wrap_key(bytes(31), KEY, "pi-07", TARGET)
    with pytest.raises(BadDataError, match="transfer key"):
        wrap_key(dev.public_bytes(), KEY[:16], "pi-07", TARGET)
    with pytest.raises(BadDataError):
        wrap_key(dev.public_bytes(), KEY, "pi/07", TARGET)


def test_wrapped_key_is_rfc9180_hpke() -> None:
    dev = fixed_identity("pi-07", 1)
    wrapped = wrap_key(dev.public_bytes(), KEY, "pi-07", TARGET)
    info = b"edgefleet-xfer-v1\0pi-07\0" + TARGET.encode()
    assert wrap_info("pi-07", TARGET) == info
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
    assert suite.decrypt(wrapped, dev.private_key, info=info) == KEY
    # and independently of any HPKE library: RFC 9180 base mode, written out
    assert rfc9180_open_base(dev.private_key, wrapped, info) == KEY


def test_hpke_sealed_key_from_library_unwraps() -> None:
    dev = fixed_identity("pi-07", 1)
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
    wrapped = suite.encrypt(
        KEY, dev.private_key.public_key(), info=b"edgefleet-xfer-v1\0pi-07\0" + TARGET.encode()
    )
    assert unwrap_key(dev, wrapped, TARGET) == KEY


def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, b"HPKE-v1" + suite_id + label + ikm, hashlib.sha256).digest()


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled_info = length.to_bytes(2, "big") + b"HPKE-v1" + suite_id + label + info
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + labeled_info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def rfc9180_open_base(sk: X25519PrivateKey, sealed: bytes, info: bytes) -> bytes:
    """RFC 9180 §4.1 DHKEM(X25519) Decap + §5.1 KeySchedule (mode_base) + single-shot Open."""
    enc, ct = sealed[:32], sealed[32:]
    kem_id = b"KEM" + (0x0020).to_bytes(2, "big")
    dh = sk.exchange(X25519PublicKey.from_public_bytes(enc))
    pk_rm = sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    eae_prk = _labeled_extract(kem_id, b"", b"eae_prk", dh)
    shared = _labeled_expand(kem_id, eae_prk, b"shared_secret", enc + pk_rm, 32)

    hpke_id = b"HPKE" + bytes([0x00, 0x20, 0x00, 0x01, 0x00, 0x03])
    psk_id_hash = _labeled_extract(hpke_id, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(hpke_id, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash
    secret = _labeled_extract(hpke_id, shared, b"secret", b"")
    key = _labeled_expand(hpke_id, secret, b"key", context, 32)
    base_nonce = _labeled_expand(hpke_id, secret, b"base_nonce", context, 12)
    return ChaCha20Poly1305(key).decrypt(base_nonce, ct, b"")


# -- chunks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4096, 65536])
def test_seal_open_round_trip(size: int) -> None:
    plaintext = bytes(i % 251 for i in range(size))
    sealed = seal_chunk(KEY, TARGET, 3, 200_000, plaintext)
    assert len(sealed) == size + 16
    assert open_chunk(KEY, TARGET, 3, 200_000, sealed) == plaintext


def test_chunk_nonce_and_aad_layout() -> None:
    plaintext = b"hello chunk"
    aad = b"edgefleet-chunk-v1\0" + (5).to_bytes(8, "big") + (1000).to_bytes(8, "big")
    expected = ChaCha20Poly1305(KEY).encrypt(
        bytes(4) + (5).to_bytes(8, "big"), plaintext, aad + TARGET.encode()
    )
    assert seal_chunk(KEY, TARGET, 5, 1000, plaintext) == expected


def _sealed() -> bytes:
    return seal_chunk(KEY, TARGET, 7, 10_000, b"chunk seven payload" * 10)


def _flip(data: bytes, position: int) -> bytes:
    out = bytearray(data)
    out[position] ^= 0x80
    return bytes(out)


@pytest.mark.parametrize(
    ("key", "target", "index", "total", "ciphertext"),
    [
        (KEY, TARGET, 7, 10_000, _flip(_sealed(), 0)),
        (KEY, TARGET, 7, 10_000, _flip(_sealed(), 100)),
        (KEY, TARGET, 7, 10_000, _flip(_sealed(), -1)),
        (KEY, TARGET, 8, 10_000, _sealed()),
        (KEY, TARGET, 6, 10_000, _sealed()),
        (KEY, "models/other.bundle", 7, 10_000, _sealed()),
        (KEY, TARGET, 7, 10_001, _sealed()),
        (KEY, TARGET, 7, 10_000, _sealed()[:-1]),
        (KEY, TARGET, 7, 10_000, _sealed()[:20]),
        (KEY, TARGET, 7, 10_000, _sealed()[:15]),
        (KEY, TARGET, 7, 10_000, b""),
        (KEY, TARGET, 7, 10_000, _sealed() + b"\0"),
        (bytes(32), TARGET, 7, 10_000, _sealed()),
        (KEY, TARGET, -1, 10_000, _sealed()),
        (KEY, TARGET, 2**64, 10_000, _sealed()),
        (KEY, TARGET, 7, -5, _sealed()),
    ],
    ids=[
        "flip-first",
        "flip-middle",
        "flip-tag",
        "next-index",
        "previous-index",
        "other-target",
        "other-total-size",
        "truncated-by-one",
        "truncated",
        "shorter-than-tag",
        "empty",
        "extended",
        "other-key",
        "negative-index",
        "index-too-large",
        "negative-size",
    ],
)
def test_bad_chunk(key: bytes, target: str, index: int, total: int, ciphertext: bytes) -> None:
    with pytest.raises(BundleRejected) as err:
        open_chunk(key, target, index, total, ciphertext)
    assert err.value.reason == "bad-chunk"
    assert "chunk" in err.value.detail


def test_seal_rejects_bad_inputs() -> None:
    with pytest.raises(BadDataError, match="transfer key"):
        seal_chunk(KEY[:31], TARGET, 0, 1, b"x")
    with pytest.raises(ValueError, match="chunk index"):
        seal_chunk(KEY, TARGET, -1, 1, b"x")
    with pytest.raises(ValueError, match="total size"):
        seal_chunk(KEY, TARGET, 0, 2**64, b"x")


@settings(max_examples=60, derandomize=True, database=None, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    target=st.text(max_size=40),
    index=st.integers(min_value=0, max_value=2**64 - 1),
    total=st.integers(min_value=0, max_value=2**64 - 1),
    plaintext=st.binary(max_size=2048),
)
def test_seal_open_property(
    key: bytes, target: str, index: int, total: int, plaintext: bytes
) -> None:
    sealed = seal_chunk(key, target, index, total, plaintext)
    assert len(sealed) == len(plaintext) + 16
    assert open_chunk(key, target, index, total, sealed) == plaintext
    other = (index + 1) % 2**64
    with pytest.raises(BundleRejected):
        open_chunk(key, target, other, total, sealed)
