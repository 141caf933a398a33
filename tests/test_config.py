"""Device files and the shipped profiles: what validates, and what each wrong file says."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

import firmware_configs
from edge_agent import config as loader
from edge_agent.config import Key, keys_of, load_config, load_profile, profile_sections, sections
from edge_agent.errors import ConfigError
from edge_agent.protocol.frozen import frozen
from edge_agent.settings import (
    AgentSettings,
    BrokerSettings,
    BufferCaps,
    DriftSettings,
    TelemetrySettings,
)
from edge_agent.uplink.buffer import PRIORITY

GOOD = """\
profile = "raspberry-pi-4"

[device]
id = "pi-kitchen-01"

[broker]
host = "hub.local"
port = 8883

[telemetry]
interval_s = 1

[[inputs]]
kind = "file"
path = "sensor.csv"
"""


def write(tmp_path: Path, text: str, name: str = "device.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


# ---- what validates --------------------------------------------------------------------------
def test_load_config_layers_device_over_profile_over_base(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.device.id == "pi-kitchen-01"
    assert cfg.profile == "raspberry-pi-4"
    assert cfg.broker.host == "hub.local"
    assert cfg.broker.port == 8883
    assert cfg.broker.username == "pi-kitchen-01"  # defaults to the device id
    assert cfg.broker.password is None
    assert cfg.broker.topic_prefix == "edgefleet"
    assert cfg.device.state_dir == tmp_path / "state-pi-kitchen-01"
    assert cfg.inputs == ({"kind": "file", "path": str(tmp_path / "sensor.csv")},)
    assert cfg.telemetry.interval_s == 1  # the device file
    assert cfg.telemetry.batch_size == 100  # base, kept beside the override
    assert cfg.runtime.threads == 2  # the profile


def test_minimal_device_file_uses_the_generic_profile(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[device]\nid = "d1"\nstate_dir = "st"\n'))
    assert cfg.profile == "generic-x86_64"
    assert cfg.device.state_dir == tmp_path / "st"
    assert cfg.runtime.threads == 4


def test_password_file_is_read_relative_to_the_device_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    cfg = load_config(write(tmp_path, '[device]\nid = "d1"\n[broker]\npassword_file = "pw"\n'))
    assert cfg.broker.password == "s3cret"
    assert cfg.broker.password_file == tmp_path / "pw"
    assert "s3cret" not in repr(cfg)  # settings may be logged; the password is not shown


@pytest.mark.parametrize("name", firmware_configs.profile_names())
def test_every_shipped_profile_loads(name: str) -> None:
    profile = load_profile(name)
    assert "extends" not in profile
    for section, cls in profile_sections().items():
        assert set(profile[section]) == set(keys_of(cls)), f"{name}: [{section}]"
    assert 1 < profile["drift"]["warn_every"] < profile["drift"]["alert_every"]


def test_there_are_profiles_and_base_is_not_one() -> None:
    names = firmware_configs.profile_names()
    assert "raspberry-pi-4" in names
    assert "base" not in names


@pytest.mark.parametrize("name", firmware_configs.profile_names())
def test_every_shipped_profile_works_in_a_device_file(tmp_path: Path, name: str) -> None:
    cfg = load_config(write(tmp_path, f'profile = "{name}"\n[device]\nid = "d1"\n'))
    assert cfg.profile == name


# ---- wrong files -----------------------------------------------------------------------------
def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = write(tmp_path, '[device]\nid = "d1"\n[telemetry]\nintervall_s = 1\n')
    text = error_of(path)
    assert str(path) in text
    assert "telemetry.intervall_s" in text
    assert "Did you mean 'interval_s'?" in text


def test_unknown_top_level_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = write(tmp_path, 'profle = "raspberry-pi-4"\n[device]\nid = "d1"\n')
    text = error_of(path)
    assert str(path) in text
    assert "'profle'" in text
    assert "Did you mean 'profile'?" in text


def test_unknown_section_key_in_device(tmp_path: Path) -> None:
    path = write(tmp_path, '[device]\nid = "d1"\nname = "x"\n')
    text = error_of(path)
    assert str(path) in text
    assert "device.name" in text
    assert "Known keys: id, state_dir" in text


@pytest.mark.parametrize(
    ("body", "where", "expected", "found"),
    [
        ('[telemetry]\nbatch_size = "100"', "telemetry.batch_size", "expected int", "str '100'"),
        ("[telemetry]\nbatch_size = true", "telemetry.batch_size", "expected int", "bool True"),
        ("[telemetry]\nbatch_size = 1.5", "telemetry.batch_size", "expected int", "float 1.5"),
        ('[telemetry]\ninterval_s = "2s"', "telemetry.interval_s", "expected int or", "'2s'"),
        ("[drift]\nwarn_every = false", "drift.warn_every", "expected int or", "bool False"),
        ('[broker]\nport = "1883"', "broker.port", "expected int", "str '1883'"),
        ("[broker]\nhost = 127", "broker.host", "expected str", "int 127"),
        ("[telemetry]\nbatch_size = -5", "telemetry.batch_size", "positive", "-5"),
        ("[buffer]\nmax_rows = 0", "buffer.max_rows", "positive", "0"),
        ("[drift]\nalert_every = -0.25", "drift.alert_every", "above 1", "-0.25"),
        ("[broker]\nport = -1", "broker.port", "positive", "-1"),
        ("[drift]\nwarn_every = nan", "drift.warn_every", "above 1", "nan"),
        ("[telemetry]\ninterval_s = inf", "telemetry.interval_s", "positive", "inf"),
        ("[runtime]\nthreads = [2]", "runtime.threads", "expected int", "list"),
        (
            '[runtime]\ntflite = "tflite-runtime 2.13"',
            "runtime.tflite",
            "expected a TFLite runtime, one of 'litert', 'tflite-runtime 2.14'",
            "'tflite-runtime 2.13'",
        ),
        ("[runtime]\ntflite = 2.14", "runtime.tflite", "expected str", "float 2.14"),
        ("telemetry = 5", "[telemetry]", "expected a table", "5"),
        ("[telemetry]\nno_input_s = -1", "telemetry.no_input_s", "0 (off) or a number", "-1"),
        ("[telemetry]\nno_input_s = inf", "telemetry.no_input_s", "seconds above 0", "inf"),
        ("[telemetry]\nno_input_s = nan", "telemetry.no_input_s", "like 60", "nan"),
        ('[telemetry]\nno_input_s = "60s"', "telemetry.no_input_s", "expected int or", "'60s'"),
        ("[telemetry]\nno_input_s = true", "telemetry.no_input_s", "expected int or", "True"),
    ],
)
def test_wrong_values_say_where_what_and_found(
    tmp_path: Path, body: str, where: str, expected: str, found: str
) -> None:
    top_level = not body.startswith("[")
    text = f'{body}\n[device]\nid = "d1"\n' if top_level else f'[device]\nid = "d1"\n{body}\n'
    path = write(tmp_path, text)
    text = error_of(path)
    assert text.startswith(f"{path}: ")
    for word in (where, expected, found):
        assert word in text, f"{word!r} not in {text!r}"


def test_no_input_limit_defaults_to_a_minute_and_zero_turns_it_off(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, GOOD)).telemetry.no_input_s == 60
    off = load_config(write(tmp_path, GOOD.replace("interval_s = 1", "no_input_s = 0")))
    assert off.telemetry.no_input_s == 0
    text = error_of(write(tmp_path, GOOD.replace("interval_s = 1", "no_inputs_s = 5")))
    assert "unknown key telemetry.no_inputs_s. Did you mean 'no_input_s'?" in text


def test_unknown_profile_suggests_and_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'profile = "raspbery-pi-4"\n[device]\nid = "d1"\n')
    text = error_of(path)
    assert str(path) in text
    assert "'raspbery-pi-4'" in text
    assert "Did you mean 'raspberry-pi-4'?" in text
    assert "generic-x86_64" in text  # the known profiles are listed


@pytest.mark.parametrize("profile", ['"../firmware_configs/base"', '"/etc/passwd"', "4"])
def test_profile_must_be_a_profile_name(tmp_path: Path, profile: str) -> None:
    path = write(tmp_path, f'profile = {profile}\n[device]\nid = "d1"\n')
    text = error_of(path)
    assert str(path) in text
    assert "profile" in text


def test_load_profile_unknown_name() -> None:
    with pytest.raises(ConfigError, match=r"profile 'jetson-nan' does not exist\. Did you mean"):
        load_profile("jetson-nan")


@pytest.mark.parametrize(
    "text",
    ["[device\nid = 'd1'", "[device]\nid = d1\n", "[device]\nid = 'a'\nid = 'b'\n", "\xff"],
    ids=["unclosed-table", "bare-string", "duplicate-key", "not-toml"],
)
def test_bad_toml_syntax_names_the_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}: expected TOML")
    assert "\n" not in message


def test_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "device.toml"
    path.write_bytes(b'[device]\nid = "\xff\xfe"\n')
    assert error_of(path).startswith(f"{path}: expected TOML")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    assert error_of(path) == f"{path}: no such file"


def test_a_directory_is_not_a_config(tmp_path: Path) -> None:
    text = error_of(tmp_path)
    assert text.startswith(f"{tmp_path}: ")


def test_missing_device_id(tmp_path: Path) -> None:
    path = write(tmp_path, 'profile = "raspberry-pi-4"\n')
    text = error_of(path)
    assert str(path) in text
    assert "device.id is required" in text


@pytest.mark.parametrize("device_id", ["a/b", "+", "#", "x" * 65, "", "has space"])
def test_bad_device_id(tmp_path: Path, device_id: str) -> None:
    path = write(tmp_path, f'[device]\nid = "{device_id}"\n')
    text = error_of(path)
    assert text.startswith(f"{path}: device.id: expected 1-64 characters")
    assert repr(device_id) in text


def test_device_id_of_the_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, "[device]\nid = 5\n")
    text = error_of(path)
    assert str(path) in text
    assert "device.id expected str, found int 5" in text


def test_extends_in_a_device_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'extends = "base"\n[device]\nid = "d1"\n')
    text = error_of(path)
    assert str(path) in text
    assert "`profile`, not extends" in text


def test_inputs_must_be_tables(tmp_path: Path) -> None:
    path = write(tmp_path, 'inputs = ["serial"]\n[device]\nid = "d1"\n')
    text = error_of(path)
    assert str(path) in text
    assert "inputs expected a list of [[inputs]] tables" in text


def test_unreadable_password_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[device]\nid = "d1"\n[broker]\npassword_file = "nope"\n')
    text = error_of(path)
    assert str(path) in text
    assert "broker.password_file" in text
    assert "nope" in text


def test_retired_psi_bands_are_ignored_with_a_warning_naming_the_replacement(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A device file from before calibrated drift still loads (an agent upgraded in the field
    keeps running); the log says what replaced the keys."""
    path = tmp_path / "agent.toml"
    path.write_text('[device]\nid = "pi-01"\n[drift]\npsi_warn = 0.1\npsi_alert = 0.25\n')
    with caplog.at_level("WARNING"):
        cfg = load_config(path)
    assert cfg.drift.warn_every == 100
    text = caplog.text
    assert "drift.psi_warn is no longer used" in text and "drift.warn_every" in text
    assert "drift.psi_alert is no longer used" in text and "drift.alert_every" in text


def test_warn_threshold_must_be_below_alert(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[device]\nid = "pi-01"\n[drift]\nwarn_every = 500\nalert_every = 200\n')
    with pytest.raises(ConfigError, match=r"agent\.toml: drift\.warn_every \(500\) expected below"):
        load_config(path)


def test_a_file_input_path_is_relative_to_the_device_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (
        '[device]\nid = "d1"\n'
        '[[inputs]]\nkind = "file"\npath = "replay/sensor.csv"\n'
        '[[inputs]]\nkind = "file"\npath = "-"\n'
    )
    config = write(tmp_path, text)
    monkeypatch.chdir("/")  # as systemd starts it
    cfg = load_config(config)
    assert cfg.inputs[0]["path"] == str(tmp_path / "replay" / "sensor.csv")
    assert cfg.inputs[1]["path"] == "-"  # stdin stays stdin


def test_the_readme_device_file_is_valid(tmp_path: Path) -> None:
    """README.md's "On a device" example stays a file the agent accepts."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("<<'TOML'\n") + len("<<'TOML'\n")
    (tmp_path / "broker-password").write_text("secret\n")
    cfg = load_config(write(tmp_path, readme[start : readme.index("TOML\n", start)]))
    assert cfg.profile == "raspberry-pi-4" and cfg.broker.password == "secret"
    assert cfg.inputs[0]["kind"] == "serial"


# ---- drain pacing, capture, caps per class and sampling (moved from test_buffer.py) --------------
@pytest.mark.parametrize(
    ("body", "where", "expected"),
    [
        ("[buffer]\nmax_bytes = 0", "buffer.max_bytes", "positive"),
        ('[buffer]\nmax_bytes = "1MB"', "buffer.max_bytes", "expected int"),
        ("[buffer]\ngroup_rows = 0", "buffer.group_rows", "positive"),
        ("[buffer]\ngroup_rows = 2.5", "buffer.group_rows", "expected int"),
        ("[buffer]\ngroup_window_s = 0", "buffer.group_window_s", "positive"),
        ("[telemetry]\ndrain_rate = -1", "telemetry.drain_rate", "0 (off) or a positive"),
        ("[telemetry]\ndrain_rate = inf", "telemetry.drain_rate", "0 (off) or a positive"),
        ("[drift]\nwindow_s = -2", "drift.window_s", "0 (off) or a positive"),
        ("[drift]\nmin_interval_s = -1", "drift.min_interval_s", "0 (off) or a positive"),
        ('[drift]\nmin_interval_s = "1s"', "drift.min_interval_s", "expected int or number"),
        ("[drift]\ncapture = 1", "drift.capture", "expected bool"),
        ("[drift]\ncapture_rows = 0", "drift.capture_rows", "1 to 1000 rows"),
        ("[drift]\ncapture_rows = 5000", "drift.capture_rows", "1 to 1000 rows"),
        ("[drift]\ncaptures = true", "drift.captures", "Did you mean 'capture'"),
    ],
)
def test_new_config_keys_refuse_wrong_values(
    tmp_path: Path, body: str, where: str, expected: str
) -> None:
    _refused(tmp_path, body, where, expected)


def test_new_config_keys_have_safe_defaults(tmp_path: Path) -> None:
    from edge_agent.config import load_config

    path = tmp_path / "device.toml"
    path.write_text('[device]\nid = "d1"\n')
    cfg = load_config(path)
    assert cfg.drift.capture is False  # raw inputs stay on the device by default
    assert cfg.drift.window_s == 0
    assert cfg.drift.min_interval_s == 1.0  # at most about one drift report a second
    assert cfg.telemetry.drain_rate > 0
    assert cfg.buffer.max_bytes > 0
    # records fsynced in groups, each kept through a kill from the moment it is accepted
    assert cfg.buffer.group_rows > 1
    assert cfg.buffer.group_window_s > 0


def test_caps_per_class_come_from_the_profile(tmp_path: Path) -> None:
    from edge_agent.config import load_config

    path = tmp_path / "device.toml"
    path.write_text('[device]\nid = "d1"\n[buffer.caps.events]\nmax_rows = 500\n')
    caps = load_config(path).buffer.caps
    assert caps.events.max_rows == 500
    assert caps.events.max_bytes is not None
    assert caps.events.max_bytes > 0  # the base's, merged under the device's own key
    assert set(caps.by_kind()) == {"events", "drift", "labels", "telemetry"}
    assert load_config(path).telemetry.raw_sample_rate == 0  # off by default


@pytest.mark.parametrize(
    ("body", "where", "expected"),
    [
        ("[buffer.caps.telemetry]\nmax_rows = 0", "buffer.caps.telemetry.max_rows", "positive"),
        ("[buffer.caps.drift]\nmax_bytes = 1.5", "buffer.caps.drift.max_bytes", "expected int"),
        ("[buffer.caps.events]\nmax_row = 5", "buffer.caps.events.max_row", "'max_rows'"),
        ("[buffer.caps.telemetri]\nmax_rows = 5", "buffer.caps.telemetri", "'telemetry'"),
        ("[buffer]\ncaps = 5", "buffer.caps", "expected a table"),
        ("[buffer.caps]\nevents = 5", "buffer.caps.events", "expected a table"),
        ("[telemetry]\nraw_sample_rate = 1.5", "telemetry.raw_sample_rate", "0 (off) to 1"),
        ("[telemetry]\nraw_sample_rate = -0.1", "telemetry.raw_sample_rate", "0 (off) to 1"),
        ("[telemetry]\nraw_sample_rate = nan", "telemetry.raw_sample_rate", "0 (off) to 1"),
        ('[telemetry]\nraw_sample_rate = "1%"', "telemetry.raw_sample_rate", "expected int"),
        ("[telemetry]\nraw_sample = 0.1", "telemetry.raw_sample", "'raw_sample_rate'"),
    ],
)
def test_cap_and_sampling_keys_refuse_wrong_values(
    tmp_path: Path, body: str, where: str, expected: str
) -> None:
    _refused(tmp_path, body, where, expected)


def _refused(tmp_path: Path, body: str, where: str, expected: str) -> None:
    """A device file with `body` is refused, naming the file, the key and what was expected."""
    from edge_agent.config import load_config
    from edge_agent.errors import ConfigError

    path = tmp_path / "device.toml"
    path.write_text(f'[device]\nid = "d1"\n{body}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and where in text and expected in text, text


# ---- the settings dataclasses are the schema ------------------------------------------------
def _leaf_keys(cls: type, where: str) -> list[tuple[str, Key]]:
    """(key path, Key) of every value key under the table `cls` reads, sub-tables included."""
    out: list[tuple[str, Key]] = []
    for name, key in keys_of(cls).items():
        if key.table is not None:
            out += _leaf_keys(key.table, f"{where}.{name}")
        else:
            out.append((f"{where}.{name}", key))
    return out


EVERY_KEY = [leaf for section, cls in sections().items() for leaf in _leaf_keys(cls, section)]
# a value of the wrong TOML type for each kind of field, and how the error shows it
WRONG = {(str,): ("5", "int 5"), (bool,): ('"yes"', "str 'yes'")}


def _device_file(key_path: str, value: str) -> str:
    """A device file setting `key_path` to the TOML `value` (and naming its device)."""
    *table, key = key_path.split(".")
    header = ".".join(table)
    if header == "device":
        return (
            f'[device]\nid = "d1"\n{key} = {value}\n'
            if key != "id"
            else f"[device]\nid = {value}\n"
        )
    return f'[device]\nid = "d1"\n[{header}]\n{key} = {value}\n'


@pytest.mark.parametrize(("where", "key"), EVERY_KEY, ids=[w for w, _ in EVERY_KEY])
def test_a_wrong_type_for_any_field_names_file_key_expected_and_found(
    tmp_path: Path, where: str, key: Key
) -> None:
    value, found = WRONG.get(key.kinds, ('"x"', "str 'x'"))
    path = write(tmp_path, _device_file(where, value))
    text = error_of(path)
    kind = " or ".join("number" if k is float else k.__name__ for k in key.kinds)
    assert text == f"{path}: {where} expected {kind}, found {found}"


def test_the_derived_schema_covers_the_files_and_their_types() -> None:
    assert list(sections()) == [
        "device", "broker", "runtime", "pipeline", "telemetry", "buffer", "drift", "limits",
        "results",
    ]  # fmt: skip
    telemetry = keys_of(TelemetrySettings)
    assert telemetry["batch_size"].kinds == (int,)
    assert telemetry["interval_s"].kinds == (int, float)  # a float field takes any number
    assert keys_of(DriftSettings)["capture"].kinds == (bool,)
    broker = keys_of(BrokerSettings)
    assert "password" not in broker  # read from password_file, not a key of the file
    assert broker["password_file"].is_path and not broker["password_file"].required
    assert set(keys_of(BufferCaps)) == set(PRIORITY)  # a cap for each priority class


def test_profile_sections_take_their_defaults_from_base_toml_only() -> None:
    """One place for the defaults: no profile section's field has one of its own."""
    for section, cls in profile_sections().items():
        for where, key in _leaf_keys(cls, section):
            assert key.required or where.startswith("buffer.caps."), where


@frozen(kw_only=True)
class TelemetryWithBurst(TelemetrySettings):
    burst_s: float = 3.0  # a field added, with its own default


@frozen(kw_only=True)
class SettingsWithBurst(AgentSettings):
    telemetry: TelemetryWithBurst


@frozen(kw_only=True)
class TelemetryNeedingBurst(TelemetrySettings):
    burst_s: float  # a field added without a default, and not in base.toml


@frozen(kw_only=True)
class SettingsNeedingBurst(AgentSettings):
    telemetry: TelemetryNeedingBurst


def test_a_field_added_to_a_dataclass_is_a_key_the_files_accept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader, "AgentSettings", SettingsWithBurst)
    cfg = load_config(write(tmp_path, GOOD.replace("interval_s = 1", "burst_s = 0.5")))
    assert isinstance(cfg, SettingsWithBurst) and cfg.telemetry.burst_s == 0.5
    assert cfg.telemetry.batch_size == 100  # the base's keys beside it
    defaulted = load_config(write(tmp_path, GOOD))
    assert isinstance(defaulted, SettingsWithBurst) and defaulted.telemetry.burst_s == 3.0
    path = write(tmp_path, GOOD.replace("interval_s = 1", 'burst_s = "1s"'))
    assert error_of(path) == f"{path}: telemetry.burst_s expected int or number, found str '1s'"
    path = write(tmp_path, GOOD.replace("interval_s = 1", "burst_s = -1"))
    assert error_of(path) == f"{path}: telemetry.burst_s expected a positive number, found -1"
    path = write(tmp_path, GOOD.replace("interval_s = 1", "burst = 1"))
    assert "telemetry.burst. Did you mean 'burst_s'?" in error_of(path)


def test_a_required_field_base_toml_does_not_set_names_the_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader, "AgentSettings", SettingsNeedingBurst)
    profile = firmware_configs.profile_path("raspberry-pi-4")
    text = error_of(write(tmp_path, GOOD.replace("interval_s = 1", "burst_s = 0.5")))
    assert text == (
        f"{profile}: telemetry.burst_s expected in the profile or in base.toml (which sets "
        "every key), found nothing"
    )


@pytest.mark.parametrize("key", ["[device]\nid = 'd1'", "[broker]\nport = 1", "inputs = []"])
def test_a_profile_holding_a_device_files_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    """Once silently dropped: a profile is shared by every device of its class."""
    folder = tmp_path / "profiles"
    folder.mkdir()
    base = firmware_configs.profile_path("base").read_text(encoding="utf-8")
    (folder / "base.toml").write_text(base, encoding="utf-8")
    (folder / "odd.toml").write_text(f'extends = "base"\n{key}\n', encoding="utf-8")
    monkeypatch.setattr(firmware_configs, "FOLDER", folder)
    name = key.split("\n")[0].strip("[]").split(" ")[0]
    with pytest.raises(ConfigError) as info:
        load_profile("odd")
    assert (
        str(info.value)
        == f"{folder / 'odd.toml'}: {name} expected in a device file, found in a profile"
    )


def test_settings_are_frozen(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    with pytest.raises(FrozenInstanceError):
        cfg.telemetry = cfg.telemetry  # type: ignore[misc]
    for section in sections():
        table = getattr(cfg, section)
        name = next(iter(keys_of(type(table))))
        with pytest.raises(FrozenInstanceError):
            setattr(table, name, getattr(table, name))
    with pytest.raises(FrozenInstanceError):
        cfg.buffer.caps.events = cfg.buffer.caps.drift  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        cfg.buffer.caps.events.max_rows = 1  # type: ignore[misc]
