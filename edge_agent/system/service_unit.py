"""The systemd unit that keeps `edge-agent run` alive on a device. Pure: values in, text out.

`edge-agent install-service` resolves the paths, validates the config and writes what
`render_unit` returns; nothing here touches the disk or systemd.

What the unit promises:

- `Restart=always` with `RestartSec=5`: a crash, an OOM kill or a SIGKILL brings the agent back
  (the buffer, the model store and a transfer in progress all survive that);
- `KillSignal=SIGTERM` and `TimeoutStopSec=30`: on stop the agent finishes its micro-batch,
  drains its telemetry buffer to the broker and publishes its offline status, well within the
  timeout, before systemd would escalate to SIGKILL;
- `After=`/`Wants=network-online.target`: it starts once the network is up (it reconnects on
  its own anyway, with backoff and jitter);
- hardening that leaves the agent working: `NoNewPrivileges=yes`, `ProtectSystem=full` (/usr,
  /boot and /etc read-only) with the state folder writable, and `SupplementaryGroups=dialout`
  so the serial ports (/dev/ttyUSB*, /dev/ttyACM*) can be opened. Nothing that hides /home or
  /tmp: a device file and its input files may live there.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath

from edge_agent.errors import ConfigError
from edge_agent.protocol.frozen import frozen

_NEEDS_QUOTES = set(" \t\"'\\;")


@frozen
class ServiceSpec:
    """What the unit is rendered from; every path absolute."""

    config: PurePosixPath  # the device's TOML file
    command: tuple[str, ...]  # how to start edge-agent: (/path/to/edge-agent,) or (python, -m, ..)
    working_dir: PurePosixPath  # where the config lives: its relative paths resolve there
    state_dir: PurePosixPath  # the one folder the agent writes
    user: str
    description: str = "edgefleet device agent"
    groups: tuple[str, ...] = ("dialout",)  # serial ports; a group that does not exist fails


def _check_value(what: str, value: str) -> None:
    if not value or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ConfigError(
            f"service unit: {what} expected a non-empty value without control characters, "
            f"got {value!r}"
        )


def _check_absolute(what: str, path: PurePosixPath) -> str:
    text = str(path)
    _check_value(what, text)
    if not path.is_absolute():
        raise ConfigError(f"service unit: {what} expected an absolute path, got {text!r}")
    return text


def escape_specifiers(value: str) -> str:
    """systemd expands %x specifiers in most settings; a literal % is written %%."""
    return value.replace("%", "%%")


def quote_word(value: str) -> str:
    """One word of a command line or path list, quoted the way systemd unquotes it."""
    value = escape_specifiers(value)
    if not _NEEDS_QUOTES.intersection(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_start(command: Sequence[str], config: PurePosixPath) -> str:
    words = [*command, "run", "--config", str(config)]
    for word in words:
        _check_value("ExecStart", word)
    return " ".join(quote_word(w) for w in words)


def render_unit(spec: ServiceSpec) -> str:
    """The text of edge-agent.service for `spec`. ConfigError if a value cannot go in a unit."""
    if not spec.command:
        raise ConfigError("service unit: expected the edge-agent command, got nothing")
    executable = PurePosixPath(spec.command[0])
    _check_absolute("the edge-agent executable", executable)
    _check_absolute("the config file", spec.config)
    working_dir = _check_absolute("the working directory", spec.working_dir)
    state_dir = _check_absolute("the state folder", spec.state_dir)
    _check_value("User", spec.user)
    if any(ch.isspace() or ch in "%\"'\\" for ch in spec.user):
        raise ConfigError(f"service unit: User expected a user name, got {spec.user!r}")
    _check_value("Description", spec.description)
    for group in spec.groups:
        if not group or any(ch.isspace() or ch in "%\"'\\" for ch in group):
            raise ConfigError(f"service unit: expected a group name, got {group!r}")
    lines = [
        "# Written by `edge-agent install-service`; rerun it to regenerate.",
        "[Unit]",
        f"Description={escape_specifiers(spec.description)}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"User={spec.user}",
        *([f"SupplementaryGroups={' '.join(spec.groups)}"] if spec.groups else []),
        f"WorkingDirectory={escape_specifiers(working_dir)}",
        f"ExecStart={exec_start(spec.command, spec.config)}",
        "Environment=PYTHONUNBUFFERED=1",
        "Restart=always",
        "RestartSec=5",
        # SIGTERM: finish the batch, drain the buffer, publish offline; then exit 0.
        "KillSignal=SIGTERM",
        "TimeoutStopSec=30",
        "NoNewPrivileges=yes",
        "ProtectSystem=full",
        # "-": a state folder the agent has yet to create does not stop the unit from starting.
        f"ReadWritePaths={quote_word('-' + state_dir)}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"
