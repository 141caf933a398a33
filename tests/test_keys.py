"""Key rotation, passphrases, `edgehub keys`, and checking signatures with openssl.

Devices are the real `Verifier` on `tuf.ngclient`, fed `repo.published()` directly as the retained
`fleet/tuf/...` messages would (no broker), as in test_update_verify.py. Bundles are plain bytes:
TUF only cares about their length and hashes.
"""

from __future__ import annotations

import getpass
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.formats import encode_canonical
from tuf.api.metadata import Metadata, Root, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from cloud_hub.cli import app as hub_cli
from cloud_hub.signing.keys import KEY_ROLES, PASSPHRASE_ENV, is_encrypted, load_key
from cloud_hub.signing.tuf_repo import KeyRotation, TufRepository
from edge_agent.errors import BundleRejected, ConfigError
from edge_agent.protocol.messages import ModelRef
from edge_agent.update.mirror import TufMirror
from edge_agent.update.verify import Verifier, install_trusted_root

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "verify-metadata.md"
MAX_BUNDLE = 1 << 20
COMPACT = JSONSerializer(compact=True)


@pytest.fixture(autouse=True)
def _no_env_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set the passphrase themselves; an operator's shell must not leak in."""
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)


# --- hub and device helpers (the patterns of test_update_verify.py) -----------------------------


def bundle_bytes(model: ModelRef) -> bytes:
    return f"bundle of {model}".encode()


def publish(repo: TufRepository, model: ModelRef) -> str:
    data = bundle_bytes(model)
    return repo.add_bundle(model, data, hashlib.sha256(data).hexdigest())


@dataclass
class Device:
    tuf_dir: Path
    mirror: TufMirror
    verifier: Verifier

    def feed(self, files: dict[str, bytes]) -> None:
        for name, payload in files.items():
            self.mirror.put(name, payload)

    def install(self, repo: TufRepository, model: ModelRef) -> None:
        """Verify `model` as a device would before installing it (it must pass)."""
        target = self.verifier.lookup(model.target_path, model, running=None)
        self.verifier.check(target, repo.read_target(target.path))

    def rejected(self, model: ModelRef) -> str:
        with pytest.raises(BundleRejected) as info:
            self.verifier.lookup(model.target_path, model, running=None)
        return info.value.reason

    def root_version(self) -> int:
        return int(json.loads((self.tuf_dir / "root.json").read_bytes())["signed"]["version"])

    def persisted(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.tuf_dir.glob("*.json"))}


def enroll(folder: Path, root: bytes) -> Device:
    install_trusted_root(folder, root)
    mirror = TufMirror()
    return Device(folder, mirror, Verifier(folder, mirror, MAX_BUNDLE))


@pytest.fixture
def hub(tmp_path: Path) -> TufRepository:
    repo = TufRepository(tmp_path / "hub")
    repo.init()
    return repo


@pytest.fixture
def device(tmp_path: Path, hub: TufRepository) -> Device:
    """Enrolled with root v1, and already verified m@1 with the original keys."""
    dev = enroll(tmp_path / "device", hub.trusted_root())
    publish(hub, ModelRef("m", 1))
    dev.feed(hub.published())
    dev.install(hub, ModelRef("m", 1))
    return dev


def resign(raw: bytes, signer_key: Path, edit: Callable[[Any], None]) -> bytes:
    """`raw` metadata changed by `edit` and signed by the key file `signer_key` alone."""
    md: Metadata[Any] = Metadata.from_bytes(raw)
    edit(md.signed)
    md.signatures.clear()
    md.sign(load_key(signer_key))
    return md.to_bytes(COMPACT)


def signer_keyids(raw: bytes) -> set[str]:
    return {s["keyid"] for s in json.loads(raw)["signatures"]}


# --- 1. rotating targets -------------------------------------------------------------------------


def test_rotate_targets_device_follows_and_the_old_key_is_refused(
    hub: TufRepository, device: Device
) -> None:
    rot = hub.rotate_key("targets")
    assert rot.role == "targets"
    assert rot.root_version == 2
    assert rot.resigned == {"targets": 3, "snapshot": 3, "timestamp": 3}
    assert rot.old_keyid != rot.new_keyid
    assert rot.retired == hub.keys_dir / "retired" / f"targets-{rot.old_keyid[:8]}.key"

    # the device walks to root 2 and verifies what was signed before and after the rotation
    device.feed(hub.published())
    device.install(hub, ModelRef("m", 1))
    assert device.root_version() == 2
    publish(hub, ModelRef("m", 2))
    device.feed(hub.published())
    device.install(hub, ModelRef("m", 2))
    assert signer_keyids(hub.published()["targets.json"]) == {rot.new_keyid}

    # someone holding the retired targets key forges the next targets.json: same version as the
    # genuine one (so snapshot points at it), but m@3's hash is theirs
    publish(hub, ModelRef("m", 3))
    files = hub.published()
    evil = b"evil bundle"

    def swap_m3(signed: Targets) -> None:
        signed.targets["m/3.zip"] = TargetFile.from_data("m/3.zip", evil, ["sha256"])
        signed.targets["m/3.zip"].unrecognized_fields.update(
            {"custom": {"model": "m", "model_version": 3, "card_sha256": "0" * 64}}
        )

    assert rot.retired is not None
    files["targets.json"] = resign(files["targets.json"], rot.retired, swap_m3)
    before = device.persisted()
    device.feed(files)
    assert device.rejected(ModelRef("m", 3)) == "bad-signature"
    assert device.persisted()["targets.json"] == before["targets.json"]

    # the genuine targets.json arrives after all: the device is fine
    device.feed(hub.published())
    device.install(hub, ModelRef("m", 3))


def test_a_device_enrolled_before_the_rotation_refuses_old_key_targets(
    tmp_path: Path, hub: TufRepository
) -> None:
    """A device that never fetched anything, still holding root 1 (which trusts the old targets
    key), walks to root 2 before it looks at targets."""
    late = enroll(tmp_path / "late", hub.trusted_root())
    rot = hub.rotate_key("targets")
    publish(hub, ModelRef("m", 1))
    files = hub.published()
    assert rot.retired is not None
    files["targets.json"] = resign(files["targets.json"], rot.retired, lambda s: None)
    late.feed(files)
    assert late.rejected(ModelRef("m", 1)) == "bad-signature"
    late.feed(hub.published())
    late.install(hub, ModelRef("m", 1))
    assert late.root_version() == 2


# --- 2. rotating root ----------------------------------------------------------------------------


def test_rotate_root_twice_device_walks_the_chain(
    tmp_path: Path, hub: TufRepository, device: Device
) -> None:
    first = hub.rotate_key("root")
    second = hub.rotate_key("root")
    assert (first.root_version, second.root_version) == (2, 3)
    assert second.old_keyid == first.new_keyid
    files = hub.published()
    assert {f"root/{n}.json" for n in (1, 2, 3)} <= set(files)
    # each new root is signed by the root key before it and by its own
    assert signer_keyids(files["root/2.json"]) == {first.old_keyid, first.new_keyid}
    assert signer_keyids(files["root/3.json"]) == {second.old_keyid, second.new_keyid}
    assert hub.trusted_root() == files["root/3.json"]

    publish(hub, ModelRef("m", 2))
    device.feed(hub.published())
    device.install(hub, ModelRef("m", 2))
    assert device.root_version() == 3

    # a device enrolled long ago with root 1 that never fetched anything walks 1 -> 2 -> 3 too
    fresh = enroll(tmp_path / "fresh", files["root/1.json"])
    fresh.feed(hub.published())
    fresh.install(hub, ModelRef("m", 2))
    assert fresh.root_version() == 3

    # root 4 forged with a retired root key alone (naming itself as the new root key, so its own
    # threshold is met): root 3 does not trust that key
    for retired in (first.retired, second.retired):
        assert retired is not None
        forged_key = load_key(retired).public_key

        def take_over(signed: Root, key: Any = forged_key) -> None:
            signed.version = 4
            for keyid in list(signed.roles["root"].keyids):
                signed.revoke_key(keyid, "root")
            signed.add_key(key, "root")

        forged = resign(files["root/3.json"], retired, take_over)
        device.mirror.put("root/4.json", forged)
        assert device.rejected(ModelRef("m", 2)) == "bad-signature"
        assert device.root_version() == 3


def test_root_signed_by_the_new_key_only_is_refused(hub: TufRepository, device: Device) -> None:
    """Why the old key co-signs: a root N+1 without the old root key's signature is refused."""
    rot = hub.rotate_key("root")
    files = hub.published()
    only_new = resign(files["root/2.json"], hub.key_path("root"), lambda s: None)
    files["root/2.json"] = only_new
    device.feed(files)
    assert device.rejected(ModelRef("m", 1)) == "bad-signature"
    assert device.root_version() == 1
    device.feed(hub.published())
    device.install(hub, ModelRef("m", 1))
    assert device.root_version() == rot.root_version == 2


# --- 3. rotating snapshot and timestamp ----------------------------------------------------------


def test_rotate_snapshot_and_timestamp_device_keeps_verifying(
    hub: TufRepository, device: Device
) -> None:
    snap = hub.rotate_key("snapshot")
    assert snap.resigned == {"snapshot": 3, "timestamp": 3}
    device.feed(hub.published())
    device.install(hub, ModelRef("m", 1))
    publish(hub, ModelRef("m", 2))
    device.feed(hub.published())
    device.install(hub, ModelRef("m", 2))

    ts = hub.rotate_key("timestamp")
    assert ts.root_version == 3
    assert ts.resigned == {"timestamp": hub.timestamp_version()}
    device.feed(hub.published())
    device.install(hub, ModelRef("m", 2))
    assert json.loads(device.persisted()["timestamp.json"])["signed"]["version"] == (
        hub.timestamp_version()
    )
    publish(hub, ModelRef("m", 3))
    device.feed(hub.published())
    device.install(hub, ModelRef("m", 3))

    # a newer timestamp signed by the retired timestamp key is refused
    assert ts.retired is not None

    def bump(signed: Timestamp) -> None:
        signed.version += 1

    forged = resign(hub.published()["timestamp.json"], ts.retired, bump)
    device.mirror.put("timestamp.json", forged)
    assert device.rejected(ModelRef("m", 3)) == "bad-signature"


def test_refresh_timestamp_signs_with_the_rotated_key(hub: TufRepository, device: Device) -> None:
    rot = hub.rotate_key("timestamp")
    assert hub.refresh_timestamp(min_remaining=hub.expiry.timestamp * 2) is True
    assert signer_keyids(hub.published()["timestamp.json"]) == {rot.new_keyid}
    device.feed(hub.published())
    device.install(hub, ModelRef("m", 1))


# --- 4. what rotation leaves on disk -------------------------------------------------------------


def test_retired_keys_kept_owner_only_and_key_info(hub: TufRepository) -> None:
    before = {row["role"]: row for row in hub.key_info()}
    assert [row["role"] for row in hub.key_info()] == list(KEY_ROLES)
    for row in before.values():
        assert row["threshold"] == 1
        assert row["version"] == 1
        assert row["encrypted"] is False
        assert row["present"] is True
        assert row["key_file"] == str(hub.key_path(row["role"]))
        assert load_key(Path(row["key_file"])).public_key.keyid == row["keyid"]

    rotations: dict[str, KeyRotation] = {role: hub.rotate_key(role) for role in KEY_ROLES}
    after = {row["role"]: row for row in hub.key_info()}
    for role, rot in rotations.items():
        assert rot.old_keyid == before[role]["keyid"]
        assert after[role]["keyid"] == rot.new_keyid != rot.old_keyid
        assert load_key(hub.key_path(role)).public_key.keyid == rot.new_keyid
        assert stat.S_IMODE(hub.key_path(role).stat().st_mode) == 0o600
        assert rot.retired is not None
        assert stat.S_IMODE(rot.retired.stat().st_mode) == 0o600
        assert load_key(rot.retired).public_key.keyid == rot.old_keyid
    # root: 1 + four rotations (the commands key is listed by targets, not root); targets by
    # its own rotation and the commands one; snapshot by those and its own; timestamp after
    # every rotation; the commands key's version is that of targets, which lists it
    assert {role: after[role]["version"] for role in KEY_ROLES} == {
        "root": 5,
        "targets": 3,
        "snapshot": 4,
        "timestamp": 6,
        "commands": 3,
    }
    expires = datetime.strptime(after["timestamp"]["expires"], "%Y-%m-%dT%H:%M:%SZ")
    assert expires.replace(tzinfo=UTC) > datetime.now(UTC)
    retired = sorted(p.name for p in (hub.keys_dir / "retired").iterdir())
    assert retired == sorted(f"{r}-{rotations[r].old_keyid[:8]}.key" for r in KEY_ROLES)
    assert stat.S_IMODE((hub.keys_dir / "retired").stat().st_mode) == 0o700
    assert sorted(p.name for p in hub.keys_dir.iterdir()) == sorted(
        [f"{r}.key" for r in KEY_ROLES] + ["retired"]
    )
    assert sorted(n for n in hub.published() if n.startswith("root/")) == [
        f"root/{n}.json" for n in range(1, 6)
    ]


def test_rotate_refuses_bad_role_uninitialised_home_and_leftovers(
    tmp_path: Path, hub: TufRepository
) -> None:
    with pytest.raises(ConfigError, match="unknown role 'admin'"):
        hub.rotate_key("admin")
    with pytest.raises(ConfigError, match="no TUF repository here"):
        TufRepository(tmp_path / "nowhere").rotate_key("targets")
    with pytest.raises(ConfigError, match="no TUF repository here"):
        TufRepository(tmp_path / "nowhere").key_info()

    published = hub.published()
    leftover = hub.keys_dir / "targets.key.new"
    leftover.write_bytes(b"from a rotation that was interrupted")
    with pytest.raises(ConfigError, match="interrupted rotation"):
        hub.rotate_key("targets")
    assert hub.published() == published
    assert leftover.read_bytes() == b"from a rotation that was interrupted"


def test_a_key_file_root_does_not_trust_is_not_used(hub: TufRepository) -> None:
    """A key file swapped behind the hub's back would sign metadata every device rejects."""
    published = hub.published()
    other = TufRepository(hub.home.parent / "other")
    other.init()
    shutil.copyfile(other.key_path("timestamp"), hub.key_path("timestamp"))
    with pytest.raises(ConfigError, match=r"timestamp\.key holds key .* trusts"):
        hub.refresh_timestamp(min_remaining=hub.expiry.timestamp * 2)
    with pytest.raises(ConfigError, match="trusts"):
        hub.rotate_key("targets")
    assert hub.published() == published


# --- 5. passphrases ------------------------------------------------------------------------------

HOW = f"set {PASSPHRASE_ENV} or run in a terminal to be asked"


def encrypted_hub(home: Path, monkeypatch: pytest.MonkeyPatch, secret: str) -> TufRepository:
    monkeypatch.setenv(PASSPHRASE_ENV, secret)
    repo = TufRepository(home)
    repo.init()
    monkeypatch.delenv(PASSPHRASE_ENV)
    return repo


def test_encrypted_keys_rotate_with_the_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = encrypted_hub(tmp_path / "hub", monkeypatch, "s3cret")
    assert all(row["encrypted"] for row in repo.key_info())
    published = repo.published()

    with pytest.raises(ConfigError) as missing:
        repo.rotate_key("targets")
    assert str(missing.value) == (
        f"cannot decrypt {repo.key_path('root')}: it is encrypted and no passphrase was given; "
        f"{HOW}"
    )
    monkeypatch.setenv(PASSPHRASE_ENV, "wrong")
    with pytest.raises(ConfigError) as wrong:
        repo.rotate_key("targets")
    assert str(wrong.value) == (f"cannot decrypt {repo.key_path('root')}: wrong passphrase? {HOW}")
    assert "\n" not in str(wrong.value)
    assert repo.published() == published  # nothing was signed or written
    assert not (repo.keys_dir / "retired").exists()
    assert not (repo.keys_dir / "targets.key.new").exists()

    monkeypatch.setenv(PASSPHRASE_ENV, "s3cret")
    rot = repo.rotate_key("targets")
    assert rot.encrypted is True
    assert is_encrypted(repo.key_path("targets"))
    assert rot.retired is not None and is_encrypted(rot.retired)
    assert load_key(repo.key_path("targets")).public_key.keyid == rot.new_keyid


def test_prompt_is_asked_once_when_the_env_var_is_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = encrypted_hub(tmp_path / "hub", monkeypatch, "typed")
    asked: list[Path] = []

    def prompt(path: Path) -> str:
        asked.append(path)
        return "typed"

    repo.passphrase_prompt = prompt
    rot = repo.rotate_key("root")
    assert asked == [repo.key_path("root")]  # once, though root, timestamp and a new key need it
    assert rot.encrypted is True
    assert load_key(repo.key_path("root"), passphrase="typed").public_key.keyid == rot.new_keyid
    publish(repo, ModelRef("m", 1))  # signing later in the same session does not ask again
    assert len(asked) == 1

    # with the variable set the prompt is not used at all
    later = TufRepository(repo.home, passphrase_prompt=prompt)
    monkeypatch.setenv(PASSPHRASE_ENV, "typed")
    later.rotate_key("snapshot")
    assert len(asked) == 1


def test_a_wrong_answer_is_not_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = encrypted_hub(tmp_path / "hub", monkeypatch, "right")
    answers = iter(["wrong", "right"])
    repo.passphrase_prompt = lambda path: next(answers)
    with pytest.raises(ConfigError, match=re.escape(f"wrong passphrase? {HOW}")):
        repo.rotate_key("timestamp")
    assert repo.rotate_key("timestamp").root_version == 2


def test_plain_keys_load_while_a_passphrase_is_set_and_new_keys_get_it(
    hub: TufRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "from now on")
    rot = hub.rotate_key("targets")  # the plain root key still opens
    assert rot.encrypted is True
    assert [row["encrypted"] for row in hub.key_info()] == [False, True, False, False, False]
    assert rot.retired is not None and not is_encrypted(rot.retired)


# --- 6. the command line -------------------------------------------------------------------------


def edgehub(argv: Sequence[str]) -> int:
    return hub_cli.main(list(argv))


def one_line_error(capsys: pytest.CaptureFixture[str], code: int) -> str:
    _, err = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert err.startswith("edgehub: error: ")
    return err.strip()


def test_cli_init_show_rotate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = str(tmp_path / "hub")
    assert edgehub(["--home", home, "keys", "init"]) == 0
    assert "hub initialised" in capsys.readouterr().out

    assert edgehub(["--home", home, "keys", "show", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["role"] for r in rows] == list(KEY_ROLES)
    assert {r["version"] for r in rows} == {1}
    assert set(rows[0]) >= {"role", "keyid", "key_file", "encrypted", "version", "expires"}

    assert edgehub(["--home", home, "keys", "show"]) == 0
    table = capsys.readouterr().out
    for r in rows:
        assert r["role"] in table
        assert r["keyid"][:16] in table
        assert r["expires"] in table

    assert edgehub(["--home", home, "keys", "rotate", "targets"]) == 0
    out = capsys.readouterr().out
    new = {r["role"]: r for r in TufRepository(Path(home)).key_info()}
    assert f"{rows[1]['keyid'][:16]} -> {new['targets']['keyid'][:16]}" in out
    assert "root is now version 2" in out
    assert f"targets-{rows[1]['keyid'][:8]}.key" in out

    assert edgehub(["--home", home, "keys", "rotate", "root", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["root_version"] == 3
    assert body["old_keyid"] == rows[0]["keyid"]
    assert body["resigned"] == {"timestamp": 3}


def test_cli_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as bad_role:
        edgehub(["--home", str(tmp_path), "keys", "rotate", "admin"])
    assert bad_role.value.code == 2
    assert "invalid choice: 'admin'" in capsys.readouterr().err

    nowhere = tmp_path / "nowhere"
    err = one_line_error(capsys, edgehub(["--home", str(nowhere), "keys", "rotate", "targets"]))
    assert "no hub here" in err
    assert not nowhere.exists()
    assert "no hub here" in one_line_error(
        capsys, edgehub(["--home", str(nowhere), "keys", "show"])
    )

    # encrypted keys, no variable, not a terminal: one line saying what to do
    home = tmp_path / "hub"
    encrypted_hub(home, monkeypatch, "pw")
    monkeypatch.setattr(sys, "stdin", io.StringIO())
    err = one_line_error(capsys, edgehub(["--home", str(home), "keys", "rotate", "targets"]))
    assert err.endswith(HOW)

    assert edgehub(["--home", str(home), "keys", "init"]) == 1
    assert "already there" in capsys.readouterr().err


def test_cli_init_with_passphrase_prompt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    answers: list[str] = []
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": answers.pop(0))

    home = tmp_path / "hub"
    answers[:] = ["one", "two"]
    err = one_line_error(
        capsys, edgehub(["--home", str(home), "keys", "init", "--passphrase-prompt"])
    )
    assert "differ" in err
    assert not (home / "keys").exists()

    answers[:] = ["typed twice", "typed twice"]
    assert edgehub(["--home", str(home), "keys", "init", "--passphrase-prompt"]) == 0
    assert "encrypted" in capsys.readouterr().out
    assert answers == []
    repo = TufRepository(home)
    assert all(row["encrypted"] for row in repo.key_info())
    assert load_key(repo.key_path("root"), passphrase="typed twice")
    assert PASSPHRASE_ENV not in os.environ  # the prompt did not leak into env


# --- 7. checking a signature with openssl alone, as docs/verify-metadata.md says -----------------


def documented_commands() -> str:
    blocks = re.findall(r"^```sh\n(.*?)^```", DOC.read_text(), re.S | re.M)
    assert len(blocks) == 1, "docs/verify-metadata.md must have exactly one ```sh block"
    return str(blocks[0])


def run_documented(folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", documented_commands()],
        cwd=folder,
        env={**{k: v for k, v in os.environ.items() if k not in ("META", "ROOT")}, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_documented_openssl_check(tmp_path: Path, hub: TufRepository) -> None:
    if shutil.which("openssl") is None or shutil.which("python3") is None:
        pytest.skip("openssl or python3 is not installed")
    publish(hub, ModelRef("m", 1))
    rot = hub.rotate_key("root")
    folder = tmp_path / "check"
    folder.mkdir()
    for path in hub.metadata_dir.glob("*.json"):
        shutil.copyfile(path, folder / path.name)

    ok = run_documented(folder)  # the defaults: timestamp.json against root.json
    assert ok.returncode == 0, ok.stderr
    assert "Signature Verified Successfully" in ok.stdout
    assert f"signed by key {hub.key_info()[3]['keyid']}" in ok.stdout
    for meta, root in [
        ("root.json", "root.json"),
        ("targets.json", "root.json"),
        ("snapshot.json", "root.json"),
        ("2.root.json", "1.root.json"),  # the new root, signed by the old root key
    ]:
        res = run_documented(folder, META=meta, ROOT=root)
        assert res.returncode == 0, (meta, res.stdout, res.stderr)
        assert "Signature Verified Successfully" in res.stdout, meta
    res = run_documented(folder, META="2.root.json", ROOT="1.root.json")
    assert rot.old_keyid in res.stdout

    # one changed field and the same signature: openssl says no
    raw = json.loads((folder / "timestamp.json").read_bytes())
    raw["signed"]["version"] += 1
    (folder / "timestamp.json").write_text(json.dumps(raw))
    bad = run_documented(folder)
    assert bad.returncode != 0
    assert "Signature Verification Failure" in bad.stdout + bad.stderr
    # root 1 is not signed by any key root 2 lists: the check stops before openssl
    stranger = run_documented(folder, META="1.root.json", ROOT="2.root.json")
    assert stranger.returncode != 0
    assert "no signature by a key 2.root.json lists for root" in stranger.stderr
    assert "Verified" not in stranger.stdout


def test_the_documented_canonical_json_is_tufs(hub: TufRepository) -> None:
    """The doc's json.dumps equals securesystemslib's OLPC canonical JSON for our metadata."""
    publish(hub, ModelRef("m.v2_x-y", 7))
    hub.rotate_key("root")
    for name, raw in hub.published().items():
        signed = json.loads(raw)["signed"]
        doc_way = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert doc_way.encode() == encode_canonical(signed).encode(), name
