"""`edgehub` and `edge-agent`: user mistakes give one line on stderr, no traceback."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from cloud_hub.cli import app as hub_cli
from cloud_hub.store.database import Store
from cloud_hub.store.url import store_url
from edge_agent import cli as agent_cli
from edge_agent.inference import tflite
from edge_agent.inference.tflite import runtime_mismatch
from edge_agent.protocol.messages import ModelRef, Status
from tests.support.cli import agent_fails, bundle, hub_fails


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised hub for the read-only tests (key generation is the slow part)."""
    home = tmp_path_factory.mktemp("hub") / "home"
    assert hub_cli.main(["--home", str(home), "keys", "init"]) == 0
    return home


# ---- edgehub: mistakes -----------------------------------------------------------------------
def test_rollout_start_without_a_hub(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = hub_fails(capsys, "--home", str(tmp_path / "h"), "rollout", "start", "notamodel")
    assert "NAME@VERSION" in err
    assert "'notamodel'" in err
    err = hub_fails(capsys, "--home", str(tmp_path / "h"), "rollout", "start", "wine@1")
    assert "no hub here" in err
    assert "keys init" in err


@pytest.mark.parametrize("command", [["devices", "list"], ["model", "list"], ["rollout", "list"]])
def test_reading_commands_without_a_hub(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    home = tmp_path / "nohub"
    err = hub_fails(capsys, "--home", str(home), *command)
    assert str(home) in err
    assert "keys init" in err


def test_init_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "h"
    assert hub_cli.main(["--home", str(home), "keys", "init"]) == 0
    out, err = capsys.readouterr()
    assert "hub initialised" in out
    assert err == ""
    err = hub_fails(capsys, "--home", str(home), "keys", "init")
    assert str(home) in err
    assert "already there" in err


def test_init_where_a_file_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "a-file"
    home.write_text("not a folder")
    err = hub_fails(capsys, "--home", str(home), "keys", "init")
    assert str(home) in err
    assert "cannot create the hub here" in err


@pytest.mark.parametrize(
    "ref", ["bad@x", "wine", "wine@0", "Wine@1", "wine@²", "wine@-1", "wine@" + "9" * 5000]
)
def test_rollout_start_bad_model_ref(
    hub: Path, capsys: pytest.CaptureFixture[str], ref: str
) -> None:
    err = hub_fails(capsys, "--home", str(hub), "rollout", "start", ref)
    assert "model" in err
    assert "expected" in err


def test_rollout_start_unpublished_model(hub: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = hub_fails(capsys, "--home", str(hub), "rollout", "start", "ghost@3")
    assert "ghost@3 is not published" in err


def test_model_publish_missing_file(
    hub: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.zip"
    err = hub_fails(capsys, "--home", str(hub), "model", "publish", str(missing))
    assert str(missing) in err
    assert "cannot read" in err


def test_model_publish_a_directory(
    hub: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = hub_fails(capsys, "--home", str(hub), "model", "publish", str(tmp_path))
    assert str(tmp_path) in err


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"this is not a zip\n", ["not a valid bundle", "zip"]),
        (b"", ["not a valid bundle"]),
        (b"PK\x03\x04garbage", ["not a valid bundle"]),
    ],
    ids=["text", "empty", "broken-zip"],
)
def test_model_publish_not_a_zip(
    hub: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    words: list[str],
) -> None:
    path = tmp_path / "model.zip"
    path.write_bytes(content)
    err = hub_fails(capsys, "--home", str(hub), "model", "publish", str(path))
    assert str(path) in err
    for word in words:
        assert word in err


def test_model_publish_zip_without_a_card(
    hub: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nocard.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model.onnx", b"x")
    err = hub_fails(capsys, "--home", str(hub), "model", "publish", str(path))
    assert "expected card.json" in err


def test_model_publish_zip_with_a_bad_card(
    hub: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "badcard.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("card.json", json.dumps({"card_version": 1, "name": "wine", "version": "1"}))
        z.writestr("model.onnx", b"x")
    err = hub_fails(capsys, "--home", str(hub), "model", "publish", str(path))
    assert "bad-card" in err
    assert "card.version" in err


def test_rollout_status_unknown_id(hub: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = hub_fails(capsys, "--home", str(hub), "rollout", "status", "nope")
    assert "no rollout with id 'nope'" in err


# ---- edgehub: what works ---------------------------------------------------------------------
def test_model_list_json_after_init(hub: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hub_cli.main(["--home", str(hub), "model", "list", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == []
    assert err == ""


def test_devices_list_prints_a_table(hub: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hub_cli.main(["--home", str(hub), "devices", "list"]) == 0
    out, err = capsys.readouterr()
    assert "devices" in out
    for column in ("device", "online", "model", "profile"):
        assert column in out
    assert err == ""


def test_publish_list_and_roll_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "h"
    assert hub_cli.main(["--home", str(home), "keys", "init"]) == 0
    path = tmp_path / "wine-1.zip"
    path.write_bytes(bundle("wine", 1))
    assert hub_cli.main(["--home", str(home), "model", "publish", str(path)]) == 0
    capsys.readouterr()

    # published twice, or a lower version later: refused in one line
    assert "already published" in hub_fails(
        capsys, "--home", str(home), "model", "publish", str(path)
    )

    assert hub_cli.main(["--home", str(home), "model", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["model"], r["version"], r["target"]) for r in rows] == [("wine", 1, "wine/1.zip")]

    # no devices yet
    err = hub_fails(capsys, "--home", str(home), "rollout", "start", "wine@1")
    assert "no devices" in err

    store = Store(store_url(home))
    for device in ("pi-1", "pi-2", "pi-3"):
        store.set_status(Status(device, True, 1, "0.1", "raspberry-pi-4", ModelRef("wine", 1)))
    assert hub_cli.main(["--home", str(home), "devices", "list", "--json"]) == 0
    devices = json.loads(capsys.readouterr().out)
    assert [d["device"] for d in devices] == ["pi-1", "pi-2", "pi-3"]

    assert hub_cli.main(["--home", str(home), "devices", "list"]) == 0
    table = capsys.readouterr().out
    assert "pi-2" in table
    assert "wine@1" in table

    for canary in ("x", "0", "inf%", "0%"):
        err = hub_fails(
            capsys, "--home", str(home), "rollout", "start", "wine@1", "--canary", canary
        )
        assert "--canary" in err
        assert repr(canary) in err or canary in err

    code = hub_cli.main(["--home", str(home), "rollout", "start", "wine@1", "--json"])
    assert code == 0
    started = json.loads(capsys.readouterr().out)
    assert started["waves"] == [["pi-1"], ["pi-2", "pi-3"]]
    assert started["state"] == "running"

    assert hub_cli.main(["--home", str(home), "rollout", "status", started["id"], "--json"]) == 0
    (status,) = json.loads(capsys.readouterr().out)
    assert status["id"] == started["id"]

    assert hub_cli.main(["--home", str(home), "rollout", "list"]) == 0
    assert started["id"] in capsys.readouterr().out


# ---- argparse usage errors -------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["model"],
        ["model", "publish"],
        ["rollout", "start"],
        ["devices", "enroll", "pi-1"],
        ["serve", "--broker-port", "eighty"],
        ["demo", "--broker", "rabbitmq"],
        ["model", "list", "--jsn"],
    ],
)
def test_hub_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        hub_cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: edgehub" in err
    assert "Traceback" not in err


def test_devices_enroll_bad_id(
    hub: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = hub_fails(
        capsys, "--home", str(hub), "devices", "enroll", "a/b", "--state-dir", str(tmp_path)
    )
    assert "'a/b'" in err


# ---- edge-agent ------------------------------------------------------------------------------
def test_config_check_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "device.toml"
    path.write_text('profile = "raspberry-pi-5"\n[device]\nid = "pi-5"\n')
    assert agent_cli.main(["config", "check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "ok (device pi-5, profile raspberry-pi-5)" in out
    assert "checked on tflite-runtime 2.14" in out and "warning" not in out  # litert here
    assert err == ""


@pytest.mark.parametrize(
    ("profile", "installed", "warned"),
    [
        ("litert", "litert 1.4.0", None),
        ("tflite-runtime 2.14", "litert 1.4.0", None),  # LiteRT loads the older op versions
        ("tflite-runtime 2.14", "tflite-runtime 2.14.0", None),
        ("tflite-runtime 2.14", "tflite-runtime 2.15.1", None),
        ("tflite-runtime 2.14", "tflite-runtime 2.13.0", "older than the models"),
        ("litert", "tflite-runtime 2.14.0", "newer operator versions"),
        ("litert", None, "none is installed"),
    ],
)
def test_the_installed_tflite_runtime_is_set_against_the_profiles(
    profile: str, installed: str | None, warned: str | None
) -> None:
    mismatch = runtime_mismatch(profile, installed)
    assert (mismatch is None) if warned is None else (mismatch is not None and warned in mismatch)


def test_config_check_warns_of_a_tflite_runtime_the_profiles_models_may_not_load_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "device.toml"
    path.write_text('profile = "generic-x86_64"\n[device]\nid = "gw-1"\n')
    monkeypatch.setattr(tflite, "runtime_version", lambda: "tflite-runtime 2.14.0")
    assert agent_cli.main(["config", "check", str(path)]) == 0  # ONNX models still run
    out, _ = capsys.readouterr()
    assert "TFLite runtime here: tflite-runtime 2.14.0" in out
    assert "warning: TFLite models may not load here" in out and "edgefleet[litert]" in out


def test_config_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.toml"
    err = agent_fails(capsys, "config", "check", str(missing))
    assert err == f"edge-agent: error: {missing}: no such file"


def test_config_check_unknown_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "device.toml"
    path.write_text('[device]\nid = "d1"\n[telemetry]\nintervall_s = 1\n')
    err = agent_fails(capsys, "config", "check", str(path))
    assert str(path) in err
    assert "telemetry.intervall_s" in err
    assert "Did you mean 'interval_s'?" in err


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[device\n", ["expected TOML"]),
        ('profile = "raspbery-pi-4"\n[device]\nid = "d1"\n', ["Did you mean 'raspberry-pi-4'"]),
        ('[device]\nid = "a/b"\n', ["device.id", "'a/b'"]),
        ("[broker]\nport = true\n[device]\nid = 'd'\n", ["broker.port", "bool"]),
    ],
)
def test_config_check_wrong_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, words: list[str]
) -> None:
    path = tmp_path / "device.toml"
    path.write_text(text)
    err = agent_fails(capsys, "config", "check", str(path))
    assert str(path) in err
    for word in words:
        assert word in err


def test_config_check_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = agent_fails(capsys, "config", "check", str(tmp_path))
    assert str(tmp_path) in err


def test_status_before_the_agent_ran(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "device.toml"
    path.write_text('[device]\nid = "d1"\n')
    err = agent_fails(capsys, "status", "--config", str(path))
    assert "no status yet" in err


@pytest.mark.parametrize(
    "argv", [[], ["config"], ["config", "check"], ["run"], ["launch"], ["status", "--json"]]
)
def test_agent_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        agent_cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: edge-agent" in err
    assert "Traceback" not in err


def test_enrolled_device_is_listed_before_it_is_ever_seen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "h"
    assert hub_cli.main(["--home", str(home), "keys", "init"]) == 0
    state = tmp_path / "state"
    argv = ["--home", str(home), "devices", "enroll", "pi-7", "--state-dir", str(state)]
    assert hub_cli.main(argv) == 0
    capsys.readouterr()
    assert hub_cli.main(["--home", str(home), "devices", "list", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["device"], row["online"], row["last_seen"]) == ("pi-7", False, "never")


def test_enroll_with_identity_then_encrypted_rollout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "h"
    assert hub_cli.main(["--home", str(home), "keys", "init"]) == 0
    devices = {}
    for name in ("pi-1", "pi-2"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "agent.toml").write_text(f'[device]\nid = "{name}"\nstate_dir = "state"\n')
        devices[name] = folder
    assert agent_cli.main(["enroll", "--config", str(devices["pi-1"] / "agent.toml")]) == 0
    assert "device.pub.json" in capsys.readouterr().out
    public = devices["pi-1"] / "state" / "identity" / "device.pub.json"
    assert json.loads(public.read_text())["device"] == "pi-1"

    # the identity must be the device's own; a missing or broken file says which and why
    state2 = str(devices["pi-2"] / "state")
    enroll = ["--home", str(home), "devices", "enroll"]
    err = hub_fails(capsys, *enroll, "pi-2", "--state-dir", state2, "--public", str(public))
    assert "expected the identity of 'pi-2', got 'pi-1'" in err
    err = hub_fails(capsys, *enroll, "pi-2", "--state-dir", state2, "--public", "nope.json")
    assert "nope.json: no such public identity file" in err
    broken = tmp_path / "broken.json"
    broken.write_text('{"v": 1, "device": "pi-2", "x25519": "c2hvcnQ="}')
    err = hub_fails(capsys, *enroll, "pi-2", "--state-dir", state2, "--public", str(broken))
    assert "broken.json" in err

    # pi-1's key is found in its state folder; pi-2 enrolls without one
    assert hub_cli.main([*enroll, "pi-1", "--state-dir", str(devices["pi-1"] / "state")]) == 0
    assert "public key registered" in capsys.readouterr().out
    assert hub_cli.main([*enroll, "pi-2", "--state-dir", state2]) == 0
    assert "public key" not in capsys.readouterr().out
    store = Store(store_url(home))
    assert store.public_key("pi-1") is not None and store.public_key("pi-2") is None

    path = tmp_path / "wine-1.zip"
    path.write_bytes(bundle("wine", 1))
    assert hub_cli.main(["--home", str(home), "model", "publish", str(path)]) == 0
    err = hub_fails(capsys, "--home", str(home), "rollout", "start", "wine@1", "--encrypt")
    assert "--encrypt: no public key for pi-2" in err
