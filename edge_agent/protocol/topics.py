"""Topic names of DESIGN.md's wire contract, built from validated values."""

from __future__ import annotations

import re

from edge_agent.errors import MessageError
from edge_agent.protocol.fields import matching
from edge_agent.protocol.frozen import frozen

_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PREFIX = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")

DEVICE_UP = ("status", "telemetry", "drift", "events", "labels", "xfer/req")
DEVICE_DOWN = ("cmd", "ack", "xfer/chunk")


def check_device_id(value: object, where: str = "device id") -> str:
    """A device id is also an MQTT username and a topic level: no wildcards, no slashes."""
    expected = (
        "1-64 characters of letters, digits, '.', '_' or '-' starting with a letter or digit,"
    )
    return matching(value, _DEVICE_ID, where, expected)


@frozen
class Topics:
    """All topic names under one prefix (default `edgefleet`)."""

    prefix: str = "edgefleet"

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.prefix):
            raise MessageError(
                f"topic prefix: expected levels of letters, digits, '.', '_' or '-' "
                f"separated by '/', got {self.prefix!r}"
            )

    # fleet-wide
    def tuf(self, name: str) -> str:
        """`timestamp.json`, `snapshot.json`, `targets.json` or `root/N.json`."""
        return f"{self.prefix}/fleet/tuf/{name}"

    @property
    def tuf_all(self) -> str:
        return f"{self.prefix}/fleet/tuf/#"

    # one device
    def device(self, device_id: str, kind: str) -> str:
        if kind not in DEVICE_UP and kind not in DEVICE_DOWN:
            raise ValueError(f"unknown device topic kind {kind!r}")
        return f"{self.prefix}/dev/{check_device_id(device_id)}/{kind}"

    def any_device(self, kind: str) -> str:
        return f"{self.prefix}/dev/+/{kind}"

    def parse_device_topic(self, topic: str) -> tuple[str, str]:
        """`edgefleet/dev/ID/KIND` -> (ID, KIND); MessageError for anything else."""
        head = f"{self.prefix}/dev/"
        if not topic.startswith(head):
            raise MessageError(f"topic: expected {head}<id>/<kind>, got {topic!r}")
        device_id, _, kind = topic[len(head) :].partition("/")
        check_device_id(device_id, f"topic {topic!r}")
        if kind not in DEVICE_UP and kind not in DEVICE_DOWN:
            raise MessageError(
                f"topic {topic!r}: expected kind one of {DEVICE_UP + DEVICE_DOWN}, got {kind!r}"
            )
        return device_id, kind
