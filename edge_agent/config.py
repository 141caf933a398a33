"""Agent configuration: a device file naming a profile from firmware_configs/, validated and
built into `AgentSettings` (edge_agent.settings) once.

Layering: base.toml <- profile (`extends = "base"`) <- the device's own file. The keys and their
types are the settings dataclasses' fields. Unknown keys are rejected with a "did you mean"
suggestion; every error names the file, the key path, what was expected and what was found.
"""

from __future__ import annotations

import functools
import logging
import math
import tomllib
from dataclasses import MISSING, fields, is_dataclass, replace
from pathlib import Path
from types import UnionType
from typing import Any, TypeVar, Union, cast, get_args, get_origin, get_type_hints

from edge_agent.checks import suggest
from edge_agent.errors import ConfigError, MessageError
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.topics import check_device_id
from edge_agent.settings import (
    DEVICE_FILE_SECTIONS,
    NOT_A_KEY,
    RULE,
    AgentSettings,
    BrokerSettings,
    DeviceSettings,
    Rule,
)
from edge_agent.sources.factory import input_from_config
from firmware_configs import profile_names, profile_path

T = TypeVar("T")
log = logging.getLogger(__name__)

# keys an older profile or device file may still hold: ignored with a warning naming what
# replaced them, so an agent upgraded in the field keeps running on its old file
RETIRED_KEYS = {
    ("drift", "psi_warn"): "drift.warn_every (drift-free windows between false warnings)",
    ("drift", "psi_alert"): "drift.alert_every (drift-free windows between false alerts)",
}
# rows of predictions one telemetry message may carry (window_rows x batch_size): at 24 bytes a
# prediction at most (a float in JSON), 6 MB, under the 8 MiB packets of `edgehub broker-config`
MAX_ROWS_PER_MESSAGE = 250_000
# the TOML types a field of each Python type takes
_TOML_TYPES: dict[Any, tuple[type, ...]] = {
    bool: (bool,),
    int: (int,),
    float: (int, float),
    str: (str,),
    Path: (str,),  # relative to the device file
}


@frozen
class Key:
    """One key of a TOML table, as the settings dataclass's field declares it."""

    kinds: tuple[type, ...]  # the TOML types of a value; () for a sub-table
    table: type | None  # the dataclass of a sub-table
    rule: Rule | None
    required: bool  # no default: base.toml (or a device file's loader) must give it
    is_path: bool


@functools.cache
def keys_of(cls: type) -> dict[str, Key]:
    """The keys of the TOML table a settings dataclass reads, in field order (do not change
    the dict: it is computed once per class)."""
    hints = get_type_hints(cls)
    keys = {}
    for f in fields(cls):
        if f.metadata.get(NOT_A_KEY):
            continue
        hint = hints[f.name]
        if get_origin(hint) in (Union, UnionType):  # X | None: optional, TOML has no null
            (hint,) = (a for a in get_args(hint) if a is not type(None))
        required = f.default is MISSING and f.default_factory is MISSING
        if is_dataclass(hint):
            keys[f.name] = Key((), cast(type, hint), None, required, False)
        elif hint in _TOML_TYPES:
            keys[f.name] = Key(
                _TOML_TYPES[hint], None, f.metadata.get(RULE), required, hint is Path
            )
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no TOML type for {hint!r}")
    return keys


def sections() -> dict[str, type]:
    """Every [section] a device file may hold -> its settings dataclass."""
    return _sections_of(AgentSettings)


@functools.cache
def _sections_of(cls: type) -> dict[str, type]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if is_dataclass(hints[f.name])}


def profile_sections() -> dict[str, type]:
    """The [sections] a profile sets (and base.toml gives every key of)."""
    return {k: v for k, v in sections().items() if k not in DEVICE_FILE_SECTIONS}


def _type_name(kinds: tuple[type, ...]) -> str:
    return " or ".join("number" if k is float else k.__name__ for k in kinds)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except OSError as exc:  # a directory, no permission
        raise ConfigError(f"{path}: expected a readable TOML file ({exc.strerror})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: expected TOML, {exc}") from exc


def check_sections(data: dict[str, Any], source: str, known: dict[str, type]) -> None:
    """Types and known keys of every [section] of `known` present in `data`, at every depth
    ([buffer.caps.telemetry]); other top-level keys are check_top_level's."""
    for section, values in data.items():
        if section in known:
            check_table(values, source, section, known[section])


def check_table(values: Any, source: str, where: str, cls: type) -> None:
    """The TOML table at `where` (a key path, "buffer.caps") against the dataclass `cls`."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: [{where}] expected a table, found {values!r:.40}")
    known = keys_of(cls)
    for key in [k for k in values if (where, k) in RETIRED_KEYS]:
        log.warning(
            "%s: %s.%s is no longer used (drift levels follow the window and reference "
            "sizes); it is ignored, see %s",
            source,
            where,
            key,
            RETIRED_KEYS[(where, key)],
        )
        del values[key]
    for key, value in values.items():
        spec = known.get(key)
        if spec is None:
            if all(k.table is not None for k in known.values()):  # a table of tables
                raise ConfigError(
                    f"{source}: unknown table [{where}.{key}].{suggest(key, list(known))} "
                    f"Known tables: {', '.join(known)}"
                )
            raise ConfigError(
                f"{source}: unknown key {where}.{key}."
                f"{suggest(key, list(known))} Known keys: {', '.join(known)}"
            )
        if spec.table is not None:
            check_table(value, source, f"{where}.{key}", spec.table)
        else:
            check_value(value, source, f"{where}.{key}", spec)


def check_value(value: Any, source: str, where: str, spec: Key) -> None:
    """Its TOML type, then its field's rule, or for a number without one: positive."""
    if (isinstance(value, bool) and bool not in spec.kinds) or not isinstance(value, spec.kinds):
        raise ConfigError(
            f"{source}: {where} expected {_type_name(spec.kinds)}, "
            f"found {type(value).__name__} {value!r:.40}"
        )
    if spec.rule is not None:
        expected = spec.rule(value)
        if expected is not None:
            raise ConfigError(f"{source}: {where} expected {expected}, found {value!r:.80}")
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int | float) and not 0 < value < math.inf:  # nan fails too
        raise ConfigError(f"{source}: {where} expected a positive number, found {value!r}")


def check_complete(values: dict[str, Any], source: str, where: str, cls: type) -> None:
    """Every key without a default present: base.toml is where the profiles' defaults live."""
    for key, spec in keys_of(cls).items():
        if spec.required and key not in values:
            raise ConfigError(
                f"{source}: {where}.{key} expected in the profile or in base.toml (which sets "
                f"every key), found nothing"
            )
        if spec.table is not None and key in values:
            check_complete(values[key], source, f"{where}.{key}", spec.table)


def check_top_level(data: dict[str, Any], source: str) -> None:
    known = sorted({"extends", "profile", "inputs", *sections()})
    for key in data:
        if key not in known:
            raise ConfigError(
                f"{source}: unknown key {key!r}.{suggest(key, known)} "
                f"Known keys: {', '.join(known)}"
            )


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, table by table at every depth ([buffer.caps.events] in a
    device file keeps the profile's [buffer.caps.telemetry])."""
    out = {k: merge(v, {}) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_profile(name: str) -> dict[str, Any]:
    """A profile with its base merged in, validated: every key of every profile section."""
    path = profile_path(name)
    if name not in profile_names():  # not a path: "../x" or "/etc/x" must not load
        raise ConfigError(
            f"profile {name!r} does not exist.{suggest(name, profile_names())} "
            f"Known profiles: {', '.join(profile_names())}"
        )
    data = _load_layered(path, seen=())
    for section, cls in profile_sections().items():
        check_complete(data.get(section, {}), str(path), section, cls)
    return data


def _load_layered(path: Path, seen: tuple[str, ...]) -> dict[str, Any]:
    data = read_toml(path)
    check_top_level(data, str(path))
    for key in ("profile", "inputs", *DEVICE_FILE_SECTIONS):
        if key in data:
            raise ConfigError(f"{path}: {key} expected in a device file, found in a profile")
    check_sections(data, str(path), profile_sections())
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not profile_path(parent).exists():
        raise ConfigError(f"{path}: extends expected the name of a profile, found {parent!r}")
    if parent in seen:
        raise ConfigError(f"{path}: extends makes a loop through {parent!r}")
    return merge(_load_layered(profile_path(parent), (*seen, parent)), data)


def build(cls: type[T], values: dict[str, Any], folder: Path) -> T:
    """The settings dataclass `cls` of a checked, complete table; a path relative to `folder`."""
    args: dict[str, Any] = {}
    for key, spec in keys_of(cast(type, cls)).items():
        if key not in values:
            continue  # its default (check_complete saw every required key)
        value = values[key]
        if spec.table is not None:
            value = build(spec.table, value, folder)
        elif spec.is_path:
            value = folder / value
        args[key] = value
    return cls(**args)


def _relative_to(spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A file or folder input's relative path names one next to the device file, wherever the
    agent was started from (a systemd unit starts it in /)."""
    path = spec.get("path")
    if spec.get("kind") in ("file", "folder") and isinstance(path, str) and path != "-":
        return {**spec, "path": str(folder / path)}
    return spec


def load_config(path: Path) -> AgentSettings:
    """The device's file, layered over its profile; relative paths resolve against the file."""
    data = read_toml(path)
    source = str(path)
    check_top_level(data, source)
    if "extends" in data:
        raise ConfigError(f"{source}: a device file names its profile with `profile`, not extends")
    check_sections(data, source, sections())
    profile = data.get("profile", "generic-x86_64")
    if not isinstance(profile, str):
        raise ConfigError(f"{source}: profile expected a profile name, found {profile!r}")
    if profile not in profile_names():
        raise ConfigError(
            f"{source}: profile {profile!r} does not exist.{suggest(profile, profile_names())} "
            f"Known profiles: {', '.join(profile_names())}"
        )
    tables = profile_sections()
    settings = merge(load_profile(profile), {k: v for k, v in data.items() if k in tables})
    drift = settings["drift"]
    if drift["warn_every"] >= drift["alert_every"]:
        raise ConfigError(
            f"{source}: drift.warn_every ({drift['warn_every']}) expected below "
            f"drift.alert_every ({drift['alert_every']}): alerts are rarer than warnings"
        )
    telemetry = settings["telemetry"]
    if telemetry["window_rows"] * telemetry["batch_size"] > MAX_ROWS_PER_MESSAGE:
        raise ConfigError(
            f"{source}: telemetry.window_rows ({telemetry['window_rows']}) times "
            f"telemetry.batch_size ({telemetry['batch_size']}) expected at most "
            f"{MAX_ROWS_PER_MESSAGE}: a message of that many predictions stays under the "
            "broker's 8 MiB packet limit"
        )
    if settings["results"]["labels"] and not settings["results"]["enabled"]:
        raise ConfigError(
            f"{source}: results.labels = true expected results.enabled = true (labels come in "
            "on the results feed's broker), found enabled = false"
        )
    device = data.get("device", {})
    if "id" not in device:
        raise ConfigError(f"{source}: device.id is required (the device's MQTT username)")
    try:
        device_id = check_device_id(device["id"], f"{source}: device.id")
    except MessageError as exc:
        raise ConfigError(str(exc)) from exc
    folder = path.parent
    broker = build(BrokerSettings, {"username": device_id, **data.get("broker", {})}, folder)
    if broker.password_file is not None:
        try:
            password = broker.password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"{source}: broker.password_file {broker.password_file}: {exc}"
            ) from exc
        broker = replace(broker, password=password)
    inputs = data.get("inputs", [])
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise ConfigError(f"{source}: inputs expected a list of [[inputs]] tables")
    inputs = [_relative_to(spec, path.parent) for spec in inputs]
    for i, spec in enumerate(inputs):
        try:
            input_from_config(spec)  # builds, opens nothing: just the validation
        except ConfigError as exc:
            raise ConfigError(f"{source}: inputs[{i}]: {exc}") from exc
    return AgentSettings(
        profile=profile,
        device=build(
            DeviceSettings, {"state_dir": f"state-{device_id}", **device, "id": device_id}, folder
        ),
        broker=broker,
        inputs=tuple(inputs),
        **{section: build(cls, settings[section], folder) for section, cls in tables.items()},
    )
