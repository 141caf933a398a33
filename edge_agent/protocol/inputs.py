"""The condition of a device's inputs, as the agent reports it and the hub reads it.

In the status (`stats.inputs`), one entry per configured source::

    {"name": "serial:/dev/ttyUSB0", "open": true, "lost": 2, "reopened": 2, "idle_s": 0.4,
     "no_input": false}

`lost` and `reopened` count since the agent started (a serial port that vanished, and came
back); `idle_s` is the seconds since the source's last line, or since it started if none came;
`no_input` is set once `idle_s` reaches the device's `telemetry.no_input_s` (0: never).

In each telemetry window (`inputs`), the same folded into one small object (`WindowInputs` of
edge_agent.protocol.records): the sums of `lost` and `reopened`, the longest `idle_s`, and
whether any source has `no_input`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from edge_agent.errors import MessageError
from edge_agent.protocol.fields import field_of
from edge_agent.protocol.frozen import frozen


@frozen
class InputState:
    """One source's condition at one moment."""

    name: str
    open: bool
    lost: int = 0
    reopened: int = 0
    idle_s: float = 0.0
    no_input: bool = False

    @classmethod
    def of(cls, name: str, stats: Mapping[str, Any], no_input_s: float) -> InputState:
        """From a source's `stats()` (edge_agent.sources); `no_input_s` 0 never flags."""
        idle = float(stats["idle_s"])
        return cls(
            name=name,
            open=bool(stats["open"]),
            lost=int(stats["lost"]),
            reopened=int(stats["reopened"]),
            idle_s=idle,
            no_input=0 < no_input_s <= idle,
        )

    def detail(self) -> str:
        """For people: "closed, idle 75 s, lost 3, reopened 2"."""
        state = "open" if self.open else "closed"
        return f"{state}, idle {self.idle_s:.0f} s, lost {self.lost}, reopened {self.reopened}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "open": self.open,
            "lost": self.lost,
            "reopened": self.reopened,
            "idle_s": self.idle_s,
            "no_input": self.no_input,
        }

    @classmethod
    def from_json(cls, obj: object, where: str) -> InputState:
        if not isinstance(obj, dict):
            raise MessageError(f"{where}: expected an object, got {type(obj).__name__}")
        counts = {}
        for key in ("lost", "reopened"):
            n = field_of(obj, key, int, where)
            if n < 0:
                raise MessageError(f"{where}.{key}: expected a count of 0 or more, got {n}")
            counts[key] = n
        idle = field_of(obj, "idle_s", (int, float), where)
        if not (math.isfinite(idle) and idle >= 0):
            raise MessageError(f"{where}.idle_s: expected seconds, 0 or more, got {idle!r}")
        return cls(
            name=field_of(obj, "name", str, where),
            open=field_of(obj, "open", bool, where),
            idle_s=float(idle),
            no_input=field_of(obj, "no_input", bool, where),
            **counts,
        )


def decode_inputs(value: object, where: str) -> tuple[InputState, ...]:
    """`stats.inputs` of a status; MessageError naming the entry that is wrong."""
    if not isinstance(value, list):
        raise MessageError(f"{where}: expected a list of inputs, got {type(value).__name__}")
    return tuple(InputState.from_json(item, f"{where}[{i}]") for i, item in enumerate(value))


def inputs_of(stats: Mapping[str, Any]) -> tuple[InputState, ...] | None:
    """The inputs a status's `stats` tell of (none for an agent that does not report them);
    None where they cannot be read, for a reader that shows rather than rejects."""
    try:
        return decode_inputs(stats.get("inputs", []), "stats.inputs")
    except MessageError:
        return None


def describe(states: Iterable[InputState], online: bool = True) -> str:
    """One short phrase for people: "ok", "no input 75s", "input closed" (not open, not yet
    past the limit), "port lost x3", some of these, or "-" for a device with no inputs. An
    offline device's condition stopped when it went away, so only its losses are told."""
    states = list(states)
    if not states:
        return "-"
    parts = []
    quiet = [s.idle_s for s in states if s.no_input]
    if online and quiet:
        parts.append(f"no input {max(quiet):.0f}s")
    if online and any(not s.open and not s.no_input for s in states):
        parts.append("input closed")
    lost = sum(s.lost for s in states)
    if lost:
        parts.append(f"port lost x{lost}")
    return ", ".join(parts) or "ok"
