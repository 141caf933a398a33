"""The one way an `[[inputs]]` table of the device file becomes a `Source`."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import Any

from edge_agent.checks import positive_int, suggest
from edge_agent.errors import ConfigError
from edge_agent.protocol.input_spec import IMAGE_FORMAT as IMAGE
from edge_agent.sources.base import DEFAULT_IMAGE_BYTES, OnStatus, Source
from edge_agent.sources.line_parser import FORMATS

log = logging.getLogger(__name__)


def _build(where: str, settings: dict[str, Any]) -> Source:
    """The source class at `where` ("module:Class") built from `settings`: a kind's module
    (and what it needs: pyserial, an MQTT client, image encoders) is imported only by an agent
    that has an input of that kind."""
    module, name = where.split(":")
    source: Source = getattr(importlib.import_module(module), name)(**settings)
    return source


# kind -> (required keys, optional keys, "module:Class" of its source)
_KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "serial": (
        ("port",),
        ("baudrate", "parity", "bytesize", "stopbits", "reopen_delay", "name", "max_line_bytes"),
        "edge_agent.sources.serial_port:SerialSource",
    ),
    "mqtt": (
        ("topic",),
        ("host", "port", "qos", "username", "password", "keepalive", "name", "max_line_bytes"),
        "edge_agent.sources.mqtt:MqttSource",
    ),
    "file": (
        ("path",),
        ("rate_hz", "loop", "name", "max_line_bytes"),
        "edge_agent.sources.file:FileSource",
    ),
    "folder": (
        ("path",),
        ("pattern", "poll_s", "after", "done_folder", "name", "max_image_bytes"),
        "edge_agent.sources.folder:FolderSource",
    ),
    "camera": (
        (),
        ("device", "fps", "width", "height", "backend", "reopen_delay", "name", "max_image_bytes"),
        "edge_agent.sources.camera:CameraSource",
    ),
}
_CONNECTED = ("serial", "mqtt")  # the kinds with a connection whose events `on_status` hears
IMAGE_KINDS = ("folder", "camera")  # the kinds that give images, not lines
# an mqtt input of images: its payloads are bounded by max_image_bytes instead of max_line_bytes
_IMAGE_MQTT = (*(k for k in _KINDS["mqtt"][1] if k != "max_line_bytes"), "max_image_bytes")
ALL_FORMATS = (*FORMATS, IMAGE)


def source_from_config(
    cfg: Mapping[str, Any], on_status: OnStatus | None = None, images: bool = False
) -> Source:
    """A source from its config table, e.g. {"kind": "serial", "port": "/dev/ttyUSB0"}.

    serial: port (required), baudrate, parity, bytesize, stopbits, reopen_delay, name,
    max_line_bytes.
    mqtt: topic (required; a subscription filter), host, port, qos, username, password,
    keepalive, name, max_line_bytes.
    file: path (required; "-" is stdin), rate_hz, loop, name, max_line_bytes.
    folder: path (required), pattern, poll_s, after (keep, delete, move), done_folder, name,
    max_image_bytes.
    camera: device, fps, width, height, backend (auto, picamera2, opencv), reopen_delay, name,
    max_image_bytes.
    With `images` (an image input), an mqtt source gives each payload whole, up to
    max_image_bytes (instead of max_line_bytes).

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
    required, optional, where_built = _KINDS[kind]
    image_mqtt = images and kind == "mqtt"
    if image_mqtt:
        optional = _IMAGE_MQTT
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
    if image_mqtt:
        limit = settings.pop("max_image_bytes", DEFAULT_IMAGE_BYTES)
        settings["max_line_bytes"] = positive_int(f"{where} ({kind})", "max_image_bytes", limit)
        settings["whole_payloads"] = True
    if on_status is not None and kind in _CONNECTED:
        settings["on_status"] = on_status
    return _build(where_built, settings)


def input_from_config(cfg: Mapping[str, Any]) -> tuple[str, Source]:
    """An [[inputs]] table -> (message format, source): `source_from_config` plus the `format`
    key that tells the agent what its messages are: "csv" (the default) or "json" lines, or
    "image" (the only format, and the default, of a folder or a camera; an mqtt input whose
    every payload is an image)."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(
            f"source config: expected a table of settings, found {type(cfg).__name__}"
        )
    spec = dict(cfg)
    kind = spec.get("kind")
    fmt = spec.pop("format", IMAGE if kind in IMAGE_KINDS else "csv")
    if fmt not in ALL_FORMATS:
        raise ConfigError(
            f"source config: 'format' expected {', '.join(map(repr, ALL_FORMATS[:-1]))} or "
            f"{ALL_FORMATS[-1]!r}, found {fmt!r}"
        )
    if kind in IMAGE_KINDS and fmt != IMAGE:
        raise ConfigError(
            f"source config ({kind}): 'format' expected 'image' (a {kind} gives images), "
            f"found {fmt!r}"
        )
    if fmt == IMAGE and kind in _KINDS and kind not in (*IMAGE_KINDS, "mqtt"):
        raise ConfigError(
            f"source config ({kind}): 'format' 'image' expected a folder, camera or mqtt "
            f"input (a {kind} gives lines), found kind {kind!r}"
        )
    return fmt, source_from_config(spec, images=fmt == IMAGE)
