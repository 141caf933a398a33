"""A telemetry buffer's caps: what the buffer (edge_agent.uplink.buffer) keeps at most, of all
records and of each class. Apart from the buffer so that the settings that name them load none
of its I/O."""

from __future__ import annotations

from edge_agent.errors import ConfigError
from edge_agent.protocol.frozen import frozen


@frozen
class Cap:
    """At most `max_rows` records and `max_bytes` bytes of bodies (None: no byte cap)."""

    max_rows: int
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_rows < 1 or (self.max_bytes is not None and self.max_bytes < 1):
            raise ConfigError(f"a buffer cap expected positive limits, found {self}")

    def full(self, rows: int, size: int, incoming: int) -> bool:
        """Whether one more record of `incoming` bytes needs room first. A record larger than
        the byte cap still goes into an empty class: it is dropped by the next one, not lost
        unseen."""
        if rows and self.max_bytes is not None and size + incoming > self.max_bytes:
            return True
        return rows >= self.max_rows
