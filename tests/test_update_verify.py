"""Trust: the hub's TUF repository, the device's verifier, bundle reading and the model store.

No broker: the device's `TufMirror` is fed `repo.published()` directly, which is exactly what the
retained `fleet/tuf/...` messages deliver. One real bundle (LogisticRegression on iris) is built
per module and reused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import stat
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from tuf.api.exceptions import DownloadHTTPError

from cloud_hub.signing.keys import KEY_ROLES, PASSPHRASE_ENV, generate_key, load_key
from cloud_hub.signing.tuf_repo import Expiry, TufRepository
from converters.bundle import bundle_bytes, card_json
from converters.pipeline import build_bundle
from edge_agent.errors import BundleRejected, ConfigError
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.transfer import CHUNK_SIZE
from edge_agent.update.bundle import read_bundle
from edge_agent.update.digest import sha256_hex
from edge_agent.update.fetcher import MqttFetcher
from edge_agent.update.store import ActiveRecord, ModelStore
from edge_agent.update.verify import (
    CheckFailed,
    CheckInProcess,
    CheckProcess,
    TufMirror,
    Verifier,
    install_trusted_root,
)

MAX_BUNDLE = 1 << 20
IRIS = ModelRef("iris", 1)


# --- one real bundle per module ------------------------------------------------------------------


@frozen
class RealBundle:
    data: bytes
    card: dict[str, Any]
    card_raw: bytes
    model_bytes: bytes

    @property
    def card_sha256(self) -> str:
        return sha256_hex(self.card_raw)


@pytest.fixture(scope="module")
def real_bundle(tmp_path_factory: pytest.TempPathFactory) -> RealBundle:
    iris = load_iris()
    estimator = LogisticRegression(max_iter=500).fit(iris.data, iris.target)
    out = tmp_path_factory.mktemp("bundle") / "iris-1.zip"
    build_bundle(estimator, iris.data, iris.target, name=IRIS.name, version=IRIS.version, out=out)
    data = out.read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        card_raw = zf.read("card.json")
        card = json.loads(card_raw)
        model_bytes = zf.read(card["model_file"])
    return RealBundle(data, card, card_raw, model_bytes)


# --- hub and device helpers ----------------------------------------------------------------------


def make_repo(home: Path, expiry: Expiry | None = None) -> TufRepository:
    repo = TufRepository(home, expiry=expiry)
    repo.init()
    return repo


def publish(bundle: RealBundle, repo: TufRepository, model: ModelRef) -> str:
    return repo.add_bundle(model, bundle.data, bundle.card_sha256)


def feed(mirror: TufMirror, files: dict[str, bytes]) -> None:
    """What the retained fleet/tuf/... messages do: the newest payload per name."""
    for name, payload in files.items():
        mirror.put(name, payload)


@dataclass
class Device:
    tuf_dir: Path
    mirror: TufMirror
    verifier: Verifier

    def persisted(self) -> dict[str, bytes]:
        """The trusted metadata ngclient keeps on disk (root.json read through its symlink; the
        root_history/ copies it adds on first use are left out)."""
        return {p.name: p.read_bytes() for p in sorted(self.tuf_dir.glob("*.json"))}


def enroll(folder: Path, repo: TufRepository, max_bundle_bytes: int = MAX_BUNDLE) -> Device:
    """A device that trusts `repo`'s root, with an empty mirror (nothing arrived yet)."""
    install_trusted_root(folder, repo.trusted_root())
    mirror = TufMirror()
    return Device(folder, mirror, Verifier(folder, mirror, max_bundle_bytes))


def rejected(device: Device, path: str, expected: ModelRef, running: ModelRef | None = None) -> str:
    """The reason `lookup` rejects with (it must reject)."""
    with pytest.raises(BundleRejected) as info:
        device.verifier.lookup(path, expected, running)
    return info.value.reason


@pytest.fixture
def hub(tmp_path: Path) -> TufRepository:
    return make_repo(tmp_path / "hub")


@pytest.fixture
def device(tmp_path: Path, hub: TufRepository) -> Device:
    return enroll(tmp_path / "device", hub)


def test_the_check_in_process_gives_the_verdicts_of_the_check_process(
    real_bundle: RealBundle, hub: TufRepository, tmp_path: Path
) -> None:
    """The simulated fleet's in-process check (one python-tuf for all its devices) decides as
    a device's own check process does: a good target, an unknown one, a tampered download."""
    path = publish(real_bundle, hub, IRIS)
    verdicts = []
    for opener in (CheckProcess, CheckInProcess):
        folder = tmp_path / opener.__name__
        install_trusted_root(folder, hub.trusted_root())
        mirror = TufMirror()
        feed(mirror, hub.published())
        verifier = Verifier(folder, mirror, MAX_BUNDLE, opener)
        with verifier.cycle():
            found = verifier.lookup(path, IRIS, None)
            with pytest.raises(BundleRejected) as unknown:
                verifier.lookup("models/nope-1.zip", IRIS, None)
        verifier.check(found, real_bundle.data)
        with pytest.raises(BundleRejected) as tampered:
            verifier.check(found, real_bundle.data[:-1] + b"!")
        verdicts.append((found.sha256, found.length, unknown.value.reason, tampered.value.reason))
    assert verdicts[0] == verdicts[1]
    assert verdicts[0][2:] == ("unknown-target", "tampered")


# --- 1. the good path ----------------------------------------------------------------------------


def test_good_path_lookup_check_and_read(
    real_bundle: RealBundle, hub: TufRepository, device: Device
) -> None:
    path = publish(real_bundle, hub, IRIS)
    assert path == IRIS.target_path
    feed(device.mirror, hub.published())

    target = device.verifier.lookup(path, IRIS, running=None)
    assert target.path == path
    assert target.model == IRIS
    assert target.length == len(real_bundle.data)
    assert target.card_sha256 == real_bundle.card_sha256
    device.verifier.check(target, hub.read_target(path))
    bundle = read_bundle(real_bundle.data, target.card_sha256, 4 * MAX_BUNDLE)
    assert bundle.card.model == IRIS
    assert bundle.model_bytes == real_bundle.model_bytes
    assert bundle.card_sha256 == real_bundle.card_sha256
    # ngclient persisted the verified metadata for the next refresh
    assert {"timestamp.json", "snapshot.json", "targets.json"} <= set(device.persisted())


def test_hub_targets_listing_matches_bundle(real_bundle: RealBundle, hub: TufRepository) -> None:
    path = publish(real_bundle, hub, IRIS)
    assert hub.targets() == {
        path: {
            "length": len(real_bundle.data),
            "sha256": hashlib.sha256(real_bundle.data).hexdigest(),
            "model": IRIS.name,
            "model_version": IRIS.version,
            "card_sha256": real_bundle.card_sha256,
            "chunk_sha256": [hashlib.sha256(real_bundle.data).hexdigest()],  # one chunk
        }
    }
    assert len(real_bundle.data) <= CHUNK_SIZE
    assert hub.read_target(path) == real_bundle.data
    with pytest.raises(ConfigError, match="leaves the targets folder"):
        hub.read_target("../keys/root.key")


def test_newer_version_after_refresh_timestamp_and_upgrade(
    real_bundle: RealBundle, hub: TufRepository, device: Device
) -> None:
    publish(real_bundle, hub, IRIS)
    feed(device.mirror, hub.published())
    device.verifier.lookup(IRIS.target_path, IRIS, None)

    before = hub.timestamp_version()
    assert hub.refresh_timestamp(dt.timedelta(days=365)) is True
    assert hub.timestamp_version() == before + 1
    assert hub.refresh_timestamp(dt.timedelta(seconds=0)) is False
    v2 = ModelRef("iris", 2)
    path2 = publish(real_bundle, hub, v2)
    feed(device.mirror, hub.published())
    assert device.mirror.timestamp_version() == hub.timestamp_version()
    assert device.verifier.lookup(path2, v2, running=IRIS).model == v2


# --- 2. bytes that do not match the signed target ------------------------------------------------


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda b: b[:100] + bytes([b[100] ^ 0x01]) + b[101:], "tampered"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b"", "truncated"),
        (lambda b: b + b"\x00", "oversized"),
    ],
    ids=["flipped-byte", "truncated", "empty", "extra-byte"],
)
def test_check_rejects_bytes_not_matching_the_target(
    real_bundle: RealBundle, hub: TufRepository, device: Device, mangle: Any, reason: str
) -> None:
    path = publish(real_bundle, hub, IRIS)
    feed(device.mirror, hub.published())
    target = device.verifier.lookup(path, IRIS, None)
    with pytest.raises(BundleRejected) as info:
        device.verifier.check(target, mangle(real_bundle.data))
    assert info.value.reason == reason


# --- 3. metadata signed by keys the device does not trust ----------------------------------------


def test_metadata_from_an_untrusted_repo_is_rejected_and_not_persisted(
    real_bundle: RealBundle, tmp_path: Path, hub: TufRepository, device: Device
) -> None:
    path = publish(real_bundle, hub, IRIS)
    feed(device.mirror, hub.published())
    device.verifier.lookup(path, IRIS, None)
    before = device.persisted()

    # an attacker's own repo, with a newer version of the same model, fed to the device
    evil = make_repo(tmp_path / "evil")
    evil_ref = ModelRef("iris", 2)
    publish(real_bundle, evil, ModelRef("iris", 1))
    evil_path = publish(real_bundle, evil, evil_ref)
    feed(device.mirror, evil.published())
    assert device.mirror.timestamp_version() > hub.timestamp_version()

    assert rejected(device, evil_path, evil_ref, running=IRIS) == "bad-signature"
    assert device.persisted() == before


def test_untrusted_repo_rejected_on_a_fresh_device(
    real_bundle: RealBundle, tmp_path: Path, hub: TufRepository, device: Device
) -> None:
    evil = make_repo(tmp_path / "evil")
    evil_path = publish(real_bundle, evil, IRIS)
    feed(device.mirror, evil.published())
    before = device.persisted()
    assert rejected(device, evil_path, IRIS) == "bad-signature"
    assert device.persisted() == before


def test_edited_targets_metadata_is_rejected(
    real_bundle: RealBundle, tmp_path: Path, hub: TufRepository, device: Device
) -> None:
    """Swapping the bundle means changing its hash in targets.json, which breaks the signature."""
    path = publish(real_bundle, hub, IRIS)
    files = hub.published()
    targets = json.loads(files["targets.json"])
    targets["signed"]["targets"][path]["hashes"]["sha256"] = "0" * 64
    files["targets.json"] = json.dumps(targets, separators=(",", ":")).encode()
    feed(device.mirror, files)
    assert rejected(device, path, IRIS) == "bad-signature"


def test_garbage_metadata_is_untrusted(
    real_bundle: RealBundle, hub: TufRepository, device: Device
) -> None:
    path = publish(real_bundle, hub, IRIS)
    feed(device.mirror, hub.published())
    device.verifier.lookup(path, IRIS, None)
    before = device.persisted()
    device.mirror.put("timestamp.json", b"\x00 not metadata")
    assert rejected(device, path, IRIS) == "untrusted-metadata"
    assert device.persisted() == before


# --- 4. replay of older metadata -----------------------------------------------------------------


def test_replayed_older_metadata_is_rejected(
    real_bundle: RealBundle, hub: TufRepository, device: Device
) -> None:
    path = publish(real_bundle, hub, IRIS)
    old = hub.published()
    feed(device.mirror, old)
    device.verifier.lookup(path, IRIS, None)

    publish(real_bundle, hub, ModelRef("iris", 2))
    feed(device.mirror, hub.published())
    device.verifier.lookup(path, IRIS, None)  # the device has now seen the newer timestamp
    seen = device.persisted()

    feed(device.mirror, old)  # an attacker re-publishes the earlier retained messages
    # ngclient: BadVersionNumberError("New timestamp version 2 must be >= 3")
    assert rejected(device, path, IRIS) == "replayed"
    assert device.persisted() == seen


def test_mixed_new_timestamp_with_old_targets_is_rejected(
    real_bundle: RealBundle, tmp_path: Path, hub: TufRepository
) -> None:
    path = publish(real_bundle, hub, IRIS)
    old_targets = hub.published()["targets.json"]
    publish(real_bundle, hub, ModelRef("iris", 2))
    files = hub.published()
    files["targets.json"] = old_targets  # snapshot says targets v3, this is v2
    device = enroll(tmp_path / "fresh", hub)
    feed(device.mirror, files)
    assert rejected(device, path, IRIS) == "replayed"


# --- 5. expired metadata -------------------------------------------------------------------------


def test_timestamp_signed_already_expired_is_rejected(
    real_bundle: RealBundle, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "hub", Expiry(timestamp=dt.timedelta(seconds=-1)))
    path = publish(real_bundle, repo, IRIS)
    device = enroll(tmp_path / "device", repo)
    feed(device.mirror, repo.published())
    assert rejected(device, path, IRIS) == "expired"

    # the hub re-signs with a sane expiry, and the device recovers
    fixed = TufRepository(repo.home)
    assert fixed.refresh_timestamp(dt.timedelta(days=1)) is True
    feed(device.mirror, fixed.published())
    assert device.verifier.lookup(path, IRIS, None).model == IRIS


def shimmed(monkeypatch: pytest.MonkeyPatch, folder: Path, code: str) -> None:
    """The TUF check processes started from now on run `code` at their interpreter's start
    (a sitecustomize on their PYTHONPATH)."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(textwrap.dedent(code))
    paths = [str(folder), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))


def test_metadata_expires_when_the_hub_stops_refreshing(
    real_bundle: RealBundle,
    hub: TufRepository,
    device: Device,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A freeze attack: the broker keeps serving the last metadata past its expiry. The TUF
    check runs in a process of its own: its clock is moved there (a sitecustomize on its
    PYTHONPATH), past the expiry, while the metadata stays what it was."""
    path = publish(real_bundle, hub, IRIS)
    feed(device.mirror, hub.published())
    device.verifier.lookup(path, IRIS, None)

    later = dt.datetime.now(dt.UTC) + hub.expiry.timestamp + dt.timedelta(hours=1)
    shimmed(
        monkeypatch,
        tmp_path / "later-clock",
        f"""
        import datetime as dt
        import types

        from tuf.ngclient._internal import trusted_metadata_set

        class _Later(dt.datetime):
            @classmethod
            def now(cls, tz=None):
                return cls.fromtimestamp({later.timestamp()!r}, tz)

        trusted_metadata_set.datetime = types.SimpleNamespace(
            datetime=_Later, timezone=dt.timezone
        )
        """,
    )
    assert rejected(device, path, IRIS) == "expired"


def test_a_stray_line_on_the_checks_stdout_passes_for_no_reply(
    real_bundle: RealBundle,
    hub: TufRepository,
    device: Device,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Something in the check's process printing at its start (here a sitecustomize) must not
    shift the replies: a forged command would then get the refresh's "ok"."""
    publish(real_bundle, hub, IRIS)
    feed(device.mirror, hub.published())
    forged = ({"ab" * 32: "cd" * 64}, b'{"kind": "deploy"}')

    def verdict() -> str:
        with pytest.raises(BundleRejected) as info, device.verifier.cycle():
            device.verifier.verify_command(forged[1], forged[0])
        return info.value.reason

    honest = verdict()
    shimmed(monkeypatch, tmp_path / "noisy", 'print(\'{"ok": true}\')\nprint("hello")\n')
    assert verdict() == honest == "bad-signature"


def test_a_check_that_cannot_start_or_dies_fails_the_update_not_the_bundle(
    real_bundle: RealBundle,
    hub: TufRepository,
    device: Device,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    path = publish(real_bundle, hub, IRIS)
    feed(device.mirror, hub.published())
    with monkeypatch.context() as patched:
        patched.setattr(sys, "executable", str(tmp_path / "no-python"))
        with pytest.raises(CheckFailed, match="could not start"):
            device.verifier.lookup(path, IRIS, None)
    shimmed(monkeypatch, tmp_path / "dying", "import os\nos._exit(3)\n")
    with pytest.raises(CheckFailed, match="exit code 3"):
        device.verifier.lookup(path, IRIS, None)


# --- 6. our own rules on top of TUF --------------------------------------------------------------


def test_downgrade_is_rejected(real_bundle: RealBundle, hub: TufRepository, device: Device) -> None:
    v2 = ModelRef("m", 2)
    path = publish(real_bundle, hub, v2)
    feed(device.mirror, hub.published())
    assert rejected(device, path, v2, running=ModelRef("m", 3)) == "downgrade"
    # same version of another model, or the same version again, is not a downgrade
    assert device.verifier.lookup(path, v2, running=ModelRef("other", 3)).model == v2
    assert device.verifier.lookup(path, v2, running=v2).model == v2


@pytest.mark.parametrize("claimed", [ModelRef("m", 5), ModelRef("m", 1), ModelRef("n", 2)], ids=str)
def test_command_not_matching_signed_target_is_rejected(
    real_bundle: RealBundle, hub: TufRepository, device: Device, claimed: ModelRef
) -> None:
    path = publish(real_bundle, hub, ModelRef("m", 2))
    feed(device.mirror, hub.published())
    assert rejected(device, path, claimed) == "mismatch"


def test_unknown_target_is_rejected(
    real_bundle: RealBundle, hub: TufRepository, device: Device
) -> None:
    publish(real_bundle, hub, ModelRef("m", 2))
    feed(device.mirror, hub.published())
    assert rejected(device, "m/9.zip", ModelRef("m", 9)) == "unknown-target"


def test_target_longer_than_the_device_accepts_is_rejected(
    real_bundle: RealBundle, tmp_path: Path, hub: TufRepository
) -> None:
    path = publish(real_bundle, hub, IRIS)
    small = enroll(tmp_path / "small", hub, max_bundle_bytes=len(real_bundle.data) - 1)
    feed(small.mirror, hub.published())
    assert rejected(small, path, IRIS) == "oversized"
    exact = enroll(tmp_path / "exact", hub, max_bundle_bytes=len(real_bundle.data))
    feed(exact.mirror, hub.published())
    assert exact.verifier.lookup(path, IRIS, None).length == len(real_bundle.data)


# --- 7. nothing on the broker yet ----------------------------------------------------------------


def test_no_metadata_yet_is_unavailable(
    real_bundle: RealBundle, hub: TufRepository, device: Device
) -> None:
    path = publish(real_bundle, hub, IRIS)
    assert rejected(device, path, IRIS) == "metadata-unavailable"
    # a partial set (timestamp arrived, the rest not yet) is unavailable too
    device.mirror.put("timestamp.json", hub.published()["timestamp.json"])
    assert rejected(device, path, IRIS) == "metadata-unavailable"


def test_verifier_needs_an_enrolled_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"root\.json"):
        Verifier(tmp_path, TufMirror(), MAX_BUNDLE)


def test_mirror_and_fetcher(hub: TufRepository) -> None:
    mirror = TufMirror()
    assert mirror.timestamp_version() == 0
    assert mirror.wait_for_timestamp(1, timeout=0) is False
    feed(mirror, hub.published())
    assert mirror.timestamp_version() == hub.timestamp_version() == 1
    assert mirror.wait_for_timestamp(1, timeout=0) is True
    mirror.put("timestamp.json", b"not json")
    assert mirror.timestamp_version() == 0

    fetcher = MqttFetcher(mirror)
    assert b"".join(fetcher.fetch("mqtt:/tuf/1.root.json")) == hub.published()["root/1.json"]
    with pytest.raises(DownloadHTTPError):
        fetcher.fetch("https://example.invalid/tuf/timestamp.json")
    with pytest.raises(DownloadHTTPError):
        fetcher.fetch("mqtt:/tuf/2.root.json")


# --- 9. reading the bundle -----------------------------------------------------------------------


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _reason_of_read(data: bytes, card_sha256: str | None, limit: int = MAX_BUNDLE) -> str:
    with pytest.raises(BundleRejected) as info:
        read_bundle(data, card_sha256, limit)
    return info.value.reason


def test_read_bundle_rejects_what_is_not_a_zip(real_bundle: RealBundle) -> None:
    assert _reason_of_read(b"PK\x03\x04 not really", None) == "bad-bundle"
    assert _reason_of_read(real_bundle.card_raw, None) == "bad-bundle"


def test_read_bundle_rejects_missing_or_extra_members(real_bundle: RealBundle) -> None:
    model_file = real_bundle.card["model_file"]
    extra = _zip(
        {
            "card.json": real_bundle.card_raw,
            model_file: real_bundle.model_bytes,
            "payload.sh": b"#!/bin/sh\n",
        }
    )
    assert _reason_of_read(extra, real_bundle.card_sha256) == "bad-bundle"
    no_card = _zip({model_file: real_bundle.model_bytes})
    assert _reason_of_read(no_card, None) == "bad-bundle"
    no_model = _zip({"card.json": real_bundle.card_raw})
    assert _reason_of_read(no_model, real_bundle.card_sha256) == "bad-bundle"
    # a card naming itself as the model: the converter refuses to write one, the agent's card
    # parser too
    self_card = json.dumps(dict(real_bundle.card, model_file="card.json")).encode()
    assert _reason_of_read(_zip({"card.json": self_card}), sha256_hex(self_card)) == "bad-card"


def test_read_bundle_rejects_card_not_matching_signed_digest(real_bundle: RealBundle) -> None:
    assert _reason_of_read(real_bundle.data, "0" * 64) == "tampered"
    # a different (still valid) card in an otherwise identical bundle
    other_card = dict(real_bundle.card, max_latency_ms=1e9)
    swapped = bundle_bytes(other_card, real_bundle.model_bytes)
    assert _reason_of_read(swapped, real_bundle.card_sha256) == "tampered"


def test_read_bundle_rejects_what_unpacks_past_the_limit(real_bundle: RealBundle) -> None:
    with zipfile.ZipFile(io.BytesIO(real_bundle.data)) as zf:
        unpacked = sum(i.file_size for i in zf.infolist())
    assert read_bundle(real_bundle.data, real_bundle.card_sha256, unpacked).card.model == IRIS
    assert _reason_of_read(real_bundle.data, real_bundle.card_sha256, unpacked - 1) == "oversized"
    # a small archive that inflates far past the limit
    card = card_json(real_bundle.card)
    bomb = _zip({"card.json": card, real_bundle.card["model_file"]: bytes(8 * MAX_BUNDLE)})
    assert len(bomb) < MAX_BUNDLE // 8
    assert _reason_of_read(bomb, real_bundle.card_sha256) == "oversized"


@pytest.mark.parametrize(
    "card_raw",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"card_version": 1}',
    ],
    ids=["not-json", "not-utf8", "not-an-object", "missing-fields"],
)
def test_read_bundle_rejects_malformed_card(real_bundle: RealBundle, card_raw: bytes) -> None:
    data = _zip({"card.json": card_raw, real_bundle.card["model_file"]: real_bundle.model_bytes})
    assert _reason_of_read(data, sha256_hex(card_raw)) == "bad-card"


def test_read_bundle_rejects_card_with_wrong_field_types(real_bundle: RealBundle) -> None:
    card = dict(real_bundle.card, version="1")
    raw = json.dumps(card).encode()
    data = _zip({"card.json": raw, real_bundle.card["model_file"]: real_bundle.model_bytes})
    assert _reason_of_read(data, sha256_hex(raw)) == "bad-card"


# --- 10. the model store -------------------------------------------------------------------------


def _no_temp_files(folder: Path) -> None:
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name]
    assert leftovers == []


def test_store_install_keeps_previous_and_rollback_prunes(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    v1, v2, v3 = ModelRef("m", 1), ModelRef("m", 2), ModelRef("m", 3)
    assert store.record() == ActiveRecord(None, None)

    assert store.install(v1, b"one") == ActiveRecord(v1, None)
    assert store.install(v2, b"two") == ActiveRecord(v2, v1)
    assert store.read(v1) == b"one"
    assert store.read(v2) == b"two"
    assert ModelStore(store.folder).record() == ActiveRecord(v2, v1)  # survives a restart

    assert store.rollback() == ActiveRecord(v1, None)
    assert store.record() == ActiveRecord(v1, None)
    assert store.read(v1) == b"one"
    assert sorted(p.name for p in store.folder.glob("*.zip")) == ["m-1.zip"]

    store.install(v2, b"two")
    assert store.install(v3, b"three") == ActiveRecord(v3, v2)
    assert sorted(p.name for p in store.folder.glob("*.zip")) == ["m-2.zip", "m-3.zip"]
    # reinstalling the current model keeps the previous one
    assert store.install(v3, b"three") == ActiveRecord(v3, v2)
    _no_temp_files(store.folder)


def test_store_rollback_with_nothing_previous_leaves_no_model(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    store.install(ModelRef("m", 1), b"one")
    assert store.rollback() == ActiveRecord(None, None)
    assert store.record() == ActiveRecord(None, None)
    assert list(store.folder.glob("*.zip")) == []
    assert store.rollback() == ActiveRecord(None, None)
    _no_temp_files(store.folder)


def test_store_remembers_which_rollout_installed_the_current_model(tmp_path: Path) -> None:
    """What a hub rollback of a rollout undoes: only an install that rollout made."""
    store = ModelStore(tmp_path / "models")
    v1, v2 = ModelRef("m", 1), ModelRef("m", 2)
    assert store.install(v1, b"one", "r-1") == ActiveRecord(v1, None, "r-1")
    assert store.install(v2, b"two", "r-2") == ActiveRecord(v2, v1, "r-2")
    assert ModelStore(store.folder).record() == ActiveRecord(v2, v1, "r-2")  # survives a restart
    assert store.rollback() == ActiveRecord(v1, None, None)  # r-1's install is no longer known
    assert store.install(v2, b"two") == ActiveRecord(v2, v1, None)  # not by a rollout
    (store.folder / "active.json").write_text('{"current": null, "previous": null}')
    assert store.record() == ActiveRecord(None, None, None)  # as an older agent wrote it
    (store.folder / "active.json").write_text('{"current": null, "previous": null, "rollout": 7}')
    with pytest.raises(ConfigError, match=r"active\.json.*rollout: expected a string or null"):
        store.record()
    _no_temp_files(store.folder)


def test_store_unreadable_record_is_a_config_error(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    (store.folder / "active.json").write_bytes(b"{broken")
    with pytest.raises(ConfigError, match=r"active\.json"):
        store.record()


# --- 11. keys ------------------------------------------------------------------------------------


def test_private_keys_are_owner_only(hub: TufRepository) -> None:
    for role in KEY_ROLES:
        path = hub.keys_dir / f"{role}.key"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert b"BEGIN PRIVATE KEY" in path.read_bytes()


def test_generate_key_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    generate_key(path)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_key(path)
    assert path.read_bytes() == before


def test_passphrase_encrypts_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse")
    path = tmp_path / "k.key"
    signer = generate_key(path)
    pem = path.read_bytes()
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in pem
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path).public_key.keyid == signer.public_key.keyid

    monkeypatch.delenv(PASSPHRASE_ENV)
    with pytest.raises(ConfigError, match=PASSPHRASE_ENV):
        load_key(path)
    monkeypatch.setenv(PASSPHRASE_ENV, "wrong horse")
    with pytest.raises(ConfigError, match=PASSPHRASE_ENV):
        load_key(path)


def test_encrypted_repo_cannot_sign_without_passphrase(
    real_bundle: RealBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "s3cret")
    repo = make_repo(tmp_path / "hub")
    publish(real_bundle, repo, IRIS)
    version = repo.timestamp_version()

    monkeypatch.delenv(PASSPHRASE_ENV)
    with pytest.raises(ConfigError, match=PASSPHRASE_ENV):
        publish(real_bundle, repo, ModelRef("iris", 2))
    assert repo.timestamp_version() == version


def test_missing_key_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no key here"):
        load_key(tmp_path / "absent.key")


# --- 12. the hub only publishes increasing versions ----------------------------------------------


def test_hub_refuses_lower_or_equal_versions(real_bundle: RealBundle, hub: TufRepository) -> None:
    publish(real_bundle, hub, ModelRef("m", 2))
    published = hub.published()
    for older in (ModelRef("m", 2), ModelRef("m", 1)):
        with pytest.raises(ConfigError, match="m@"):
            publish(real_bundle, hub, older)
    assert hub.published() == published  # nothing re-signed
    assert not (hub.targets_dir / ModelRef("m", 1).target_path).exists()
    assert set(hub.targets()) == {"m/2.zip"}

    publish(real_bundle, hub, ModelRef("m", 3))
    publish(real_bundle, hub, ModelRef("other", 1))  # versions are per model name
    assert set(hub.targets()) == {"m/2.zip", "m/3.zip", "other/1.zip"}


def test_hub_init_twice_is_refused(hub: TufRepository) -> None:
    with pytest.raises(ConfigError, match="already there"):
        hub.init()


def test_a_write_cut_short_by_a_kill_is_removed_when_the_store_opens(tmp_path: Path) -> None:
    """SIGKILL between atomic_write's temp file and its rename leaves `.NAME.xxxx.tmp`."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / ".iris-2.zip.r1h4nu_d.tmp").write_bytes(b"half a bundle")
    (folder / ".active.json.abc.tmp").write_bytes(b"{")
    (folder / "iris-1.zip").write_bytes(b"kept")
    ModelStore(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["iris-1.zip"]
