"""The one way an `[[inputs]]` table of the device file becomes a `Source`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from edge_agent.checks import suggest
from edge_agent.errors import ConfigError
from edge_agent.sources.base import OnStatus, Source
from edge_agent.sources.file import FileSource
from edge_agent.sources.line_parser import FORMATS
from edge_agent.sources.mqtt import MqttSource
from edge_agent.sources.serial_port import SerialSource

log = logging.getLogger(__name__)


_KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], Callable[..., Source]]] = {
    "serial": (
        ("port",),
        ("baudrate", "parity", "bytesize", "stopbits", "reopen_delay", "name", "max_line_bytes"),
        SerialSource,
    ),
    "mqtt": (
        ("topic",),
        ("host", "port", "qos", "username", "password", "keepalive", "name", "max_line_bytes"),
        MqttSource,
    ),
    "file": (("path",), ("rate_hz", "loop", "name", "max_line_bytes"), FileSource),
}
_CONNECTED = ("serial", "mqtt")  # the kinds with a connection whose events `on_status` hears


def source_from_config(cfg: Mapping[str, Any], on_status: OnStatus | None = None) -> Source:
    """A source from its config table, e.g. {"kind": "serial", "port": "/dev/ttyUSB0"}.

    serial: port (required), baudrate, parity, bytesize, stopbits, reopen_delay, name,
    max_line_bytes.
    mqtt: topic (required; a subscription filter), host, port, qos, username, password,
    keepalive, name, max_line_bytes.
    file: path (required; "-" is stdin), rate_hz, loop, name, max_line_bytes.

    `on_status(event, error)` hears a serial or mqtt source's connection events (a file has
    none). Building a source does no I/O (nothing is opened before start()), so this also
    validates.
    """
    where = "source config"
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where}: expected a table of settings, found {type(cfg).__name__}")
    kind = cfg.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        names = [repr(k) for k in _KINDS]
        expected = f"{', '.join(names[:-1])} or {names[-1]}"
        found = "nothing" if kind is None else repr(kind)
        hint = suggest(kind, list(_KINDS)) if isinstance(kind, str) else ""
        raise ConfigError(f"{where}: 'kind' expected {expected}, found {found}.{hint}".rstrip("."))
    required, optional, build = _KINDS[kind]
    for key in required:
        if key not in cfg:
            raise ConfigError(f"{where} ({kind}): '{key}' is required, found nothing")
    allowed = {"kind", *required, *optional}
    for key in cfg:
        if key not in allowed:
            raise ConfigError(
                f"{where} ({kind}): unknown key {key!r},"
                f" expected one of {', '.join(sorted(allowed))}.{suggest(str(key), allowed)}"
            )
    settings = {k: v for k, v in cfg.items() if k != "kind"}
    if on_status is not None and kind in _CONNECTED:
        settings["on_status"] = on_status
    return build(**settings)


def input_from_config(cfg: Mapping[str, Any]) -> tuple[str, Source]:
    """An [[inputs]] table -> (line format, source): `source_from_config` plus the `format`
    key ("csv", the default, or "json") that tells the agent which parser its lines go to."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(
            f"source config: expected a table of settings, found {type(cfg).__name__}"
        )
    spec = dict(cfg)
    fmt = spec.pop("format", "csv")
    if fmt not in FORMATS:
        raise ConfigError(
            f"source config: 'format' expected {' or '.join(map(repr, FORMATS))}, found {fmt!r}"
        )
    return fmt, source_from_config(spec)
