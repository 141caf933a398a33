"""Agent configuration: a device file naming a profile from firmware_configs/, validated.

Layering: base.toml <- profile (`extends = "base"`) <- the device's own file. Unknown keys are
rejected with a "did you mean" suggestion; every error names the file, the key path, what was
expected and what was found.
"""

from __future__ import annotations

import difflib
import logging
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError, MessageError
from edge_agent.inference.results import is_results_topic
from edge_agent.protocol.topics import check_device_id
from edge_agent.sources.factory import input_from_config
from firmware_configs import profile_names, profile_path

log = logging.getLogger(__name__)

Number = (int, float)
MAX_CAPTURE_ROWS = 1000  # rows of inputs a drift alert may carry to the hub

# section -> key -> expected type(s)
PROFILE_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "runtime": {"threads": int},
    "pipeline": {"batch_max": int, "queue_max": int},
    "telemetry": {
        "interval_s": Number,
        "batch_size": int,
        "max_inflight": int,
        "confirm_timeout_s": Number,
        "status_interval_s": Number,
        "drain_rate": Number,
        "raw_sample_rate": Number,
        "no_input_s": Number,
    },
    "buffer": {"max_rows": int, "max_bytes": int, "caps": dict},
    "drift": {
        "window": int,
        "window_s": Number,
        "warn_every": Number,
        "alert_every": Number,
        "capture": bool,
        "capture_rows": int,
    },
    "limits": {"max_bundle_bytes": int, "transfer_window": int, "transfer_timeout_s": Number},
    # inference results published for local actuators (edge_agent.inference.results)
    "results": {"enabled": bool, "host": str, "port": int, "topic": str, "qos": int},
}
DEVICE_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "device": {"id": str, "state_dir": str},
    "broker": {
        "host": str,
        "port": int,
        "username": str,
        "password_file": str,
        "topic_prefix": str,
    },
}
# keys an older profile or device file may still hold: ignored with a warning naming what
# replaced them, so an agent upgraded in the field keeps running on its old file
RETIRED_KEYS = {
    ("drift", "psi_warn"): "drift.warn_every (drift-free windows between false warnings)",
    ("drift", "psi_alert"): "drift.alert_every (drift-free windows between false alerts)",
}
TOP_LEVEL = {"extends", "profile", "inputs", *PROFILE_SCHEMA, *DEVICE_SCHEMA}
# tables inside a section: (section, key) -> sub-table -> key -> type. [buffer.caps.telemetry]
# etc.: each priority class's own cap (edge_agent.uplink.buffer.next_drop)
_CAP_KEYS: dict[str, type | tuple[type, ...]] = {"max_rows": int, "max_bytes": int}
NESTED_SCHEMA: dict[tuple[str, str], dict[str, dict[str, type | tuple[type, ...]]]] = {
    ("buffer", "caps"): {kind: _CAP_KEYS for kind in ("events", "drift", "telemetry")},
}


# (section, key) -> None if the (well-typed) value is fine, else what was expected. Numbers
# without a rule must be positive.
def _zero_or_positive(v: Any) -> str | None:
    return None if 0 <= v < math.inf else "0 (off) or a positive number"


VALUE_RULES: dict[tuple[str, str], Callable[[Any], str | None]] = {
    ("drift", "warn_every"): lambda v: (
        None if 1 < v < math.inf else "a number of windows above 1, like 100 (1% of windows)"
    ),
    ("drift", "alert_every"): lambda v: (
        None if 1 < v < math.inf else "a number of windows above 1, like 10000"
    ),
    ("drift", "window_s"): _zero_or_positive,
    ("telemetry", "drain_rate"): _zero_or_positive,
    ("telemetry", "no_input_s"): lambda v: (
        None if 0 <= v < math.inf else "0 (off) or a number of seconds above 0, like 60"
    ),
    ("telemetry", "raw_sample_rate"): lambda v: (
        None if 0 <= v <= 1 else "a probability from 0 (off) to 1 (every row)"
    ),
    ("drift", "capture_rows"): lambda v: (
        None if 1 <= v <= MAX_CAPTURE_ROWS else (f"1 to {MAX_CAPTURE_ROWS} rows")
    ),
    ("results", "host"): lambda v: None if v.strip() else "a host name or address",
    ("results", "port"): lambda v: None if 1 <= v <= 65535 else "a port number 1-65535",
    ("results", "qos"): lambda v: None if v in (0, 1) else "0 or 1",
    ("results", "topic"): lambda v: (
        None
        if is_results_topic(v)
        else "an MQTT topic name without wildcards ('+', '#') whose only placeholder is {device_id}"
    ),
}


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _type_name(kinds: type | tuple[type, ...]) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
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


def check_sections(
    data: dict[str, Any],
    source: str,
    schema: dict[str, dict[str, type | tuple[type, ...]]],
    within: str = "",
) -> None:
    """Types and known keys of every [section] of `schema` present in `data` (`within`: the
    path of a nested table, "buffer.caps", whose sub-tables must all be known)."""
    for section, values in data.items():
        if section not in schema:
            if not within:
                continue
            raise ConfigError(
                f"{source}: unknown table [{within}.{section}].{_suggest(section, list(schema))} "
                f"Known tables: {', '.join(schema)}"
            )
        where = f"{within}.{section}" if within else section
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{where}] expected a table, found {values!r:.40}")
        known = schema[section]
        for key in [k for k in values if (section, k) in RETIRED_KEYS and not within]:
            log.warning(
                "%s: %s.%s is no longer used (drift levels follow the window and reference "
                "sizes); it is ignored, see %s",
                source,
                section,
                key,
                RETIRED_KEYS[(section, key)],
            )
            del values[key]
        for key, value in values.items():
            if key not in known:
                raise ConfigError(
                    f"{source}: unknown key {where}.{key}."
                    f"{_suggest(key, list(known))} Known keys: {', '.join(known)}"
                )
            nested = NESTED_SCHEMA.get((section, key)) if not within else None
            if nested is not None:
                if not isinstance(value, dict):
                    raise ConfigError(
                        f"{source}: [{where}.{key}] expected a table, found {value!r:.40}"
                    )
                check_sections(value, source, nested, within=f"{where}.{key}")
                continue
            kinds = known[key]
            kinds_t = kinds if isinstance(kinds, tuple) else (kinds,)
            if (isinstance(value, bool) and bool not in kinds_t) or not isinstance(value, kinds_t):
                raise ConfigError(
                    f"{source}: {where}.{key} expected {_type_name(kinds)}, "
                    f"found {type(value).__name__} {value!r:.40}"
                )
            rule = VALUE_RULES.get((section, key))
            if rule is not None:
                expected = rule(value)
                if expected is not None:
                    raise ConfigError(
                        f"{source}: {where}.{key} expected {expected}, found {value!r:.80}"
                    )
            elif isinstance(value, bool):
                pass
            elif isinstance(value, int | float) and not 0 < value < math.inf:  # nan fails too
                raise ConfigError(
                    f"{source}: {where}.{key} expected a positive number, found {value!r}"
                )


def check_top_level(data: dict[str, Any], source: str) -> None:
    for key in data:
        if key not in TOP_LEVEL:
            raise ConfigError(
                f"{source}: unknown key {key!r}.{_suggest(key, sorted(TOP_LEVEL))} "
                f"Known keys: {', '.join(sorted(TOP_LEVEL))}"
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
    """A profile with its base merged in, validated."""
    path = profile_path(name)
    if name not in profile_names():  # not a path: "../x" or "/etc/x" must not load
        raise ConfigError(
            f"profile {name!r} does not exist.{_suggest(name, profile_names())} "
            f"Known profiles: {', '.join(profile_names())}"
        )
    return _load_layered(path, seen=())


def _load_layered(path: Path, seen: tuple[str, ...]) -> dict[str, Any]:
    data = read_toml(path)
    check_top_level(data, str(path))
    check_sections(data, str(path), PROFILE_SCHEMA)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not profile_path(parent).exists():
        raise ConfigError(f"{path}: extends expected the name of a profile, found {parent!r}")
    if parent in seen:
        raise ConfigError(f"{path}: extends makes a loop through {parent!r}")
    return merge(_load_layered(profile_path(parent), (*seen, parent)), data)


@dataclass(frozen=True)
class AgentConfig:
    device_id: str
    state_dir: Path
    profile_name: str
    broker_host: str
    broker_port: int
    username: str
    password: str | None
    topic_prefix: str
    inputs: tuple[dict[str, Any], ...]
    settings: dict[str, Any]  # the merged profile sections

    def get(self, section: str, key: str) -> Any:
        return self.settings[section][key]


def _relative_to(spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A file input's relative path names a file next to the device file, wherever the agent
    was started from (a systemd unit starts it in /)."""
    path = spec.get("path")
    if spec.get("kind") == "file" and isinstance(path, str) and path != "-":
        return {**spec, "path": str(folder / path)}
    return spec


def load_config(path: Path) -> AgentConfig:
    """The device's file, layered over its profile; relative paths resolve against the file."""
    data = read_toml(path)
    source = str(path)
    check_top_level(data, source)
    if "extends" in data:
        raise ConfigError(f"{source}: a device file names its profile with `profile`, not extends")
    check_sections(data, source, {**PROFILE_SCHEMA, **DEVICE_SCHEMA})
    profile = data.get("profile", "generic-x86_64")
    if not isinstance(profile, str):
        raise ConfigError(f"{source}: profile expected a profile name, found {profile!r}")
    if profile not in profile_names():
        raise ConfigError(
            f"{source}: profile {profile!r} does not exist.{_suggest(profile, profile_names())} "
            f"Known profiles: {', '.join(profile_names())}"
        )
    settings = merge(load_profile(profile), {k: v for k, v in data.items() if k in PROFILE_SCHEMA})
    drift = settings["drift"]
    if drift["warn_every"] >= drift["alert_every"]:
        raise ConfigError(
            f"{source}: drift.warn_every ({drift['warn_every']}) expected below "
            f"drift.alert_every ({drift['alert_every']}): alerts are rarer than warnings"
        )
    device = data.get("device", {})
    if "id" not in device:
        raise ConfigError(f"{source}: device.id is required (the device's MQTT username)")
    try:
        device_id = check_device_id(device["id"], f"{source}: device.id")
    except MessageError as exc:
        raise ConfigError(str(exc)) from exc
    broker = data.get("broker", {})
    password = None
    if "password_file" in broker:
        pw_path = path.parent / broker["password_file"]
        try:
            password = pw_path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{source}: broker.password_file {pw_path}: {exc}") from exc
    inputs = data.get("inputs", [])
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise ConfigError(f"{source}: inputs expected a list of [[inputs]] tables")
    inputs = [_relative_to(spec, path.parent) for spec in inputs]
    for i, spec in enumerate(inputs):
        try:
            input_from_config(spec)  # builds, opens nothing: just the validation
        except ConfigError as exc:
            raise ConfigError(f"{source}: inputs[{i}]: {exc}") from exc
    return AgentConfig(
        device_id=device_id,
        state_dir=path.parent / device.get("state_dir", f"state-{device_id}"),
        profile_name=profile,
        broker_host=broker.get("host", "127.0.0.1"),
        broker_port=broker.get("port", 1883),
        username=broker.get("username", device_id),
        password=password,
        topic_prefix=broker.get("topic_prefix", "edgefleet"),
        inputs=tuple(inputs),
        settings=settings,
    )
