"""Pull-based chunked transfer: reassembly with a bitmap of what has arrived (pure logic).

The device asks for chunks within a window; chunks may arrive in any order, twice, or not at all.
`Reassembly` decides what to ask for next and refuses anything that does not fit the target
whose length the signed metadata announced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from edge_agent.errors import BundleRejected
from edge_agent.protocol.reasons import Reason

CHUNK_SIZE = 64 * 1024


def chunk_count(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    return max(1, -(-size // chunk_size))


def chunk_bounds(index: int, size: int, chunk_size: int = CHUNK_SIZE) -> tuple[int, int]:
    start = index * chunk_size
    return start, min(start + chunk_size, size)


@dataclass
class Reassembly:
    """Keeps account of the chunks of one target of `size` bytes (the length from signed
    metadata): which arrived, which are asked for. The bytes themselves go to disk as they
    arrive (`edge_agent.update.partial`), so a device never holds a whole bundle twice."""

    target: str
    size: int
    chunk_size: int = CHUNK_SIZE
    _have: set[int] = field(default_factory=set, repr=False)
    _asked: dict[int, float] = field(default_factory=dict, repr=False)
    _cursor: int = field(default=0, repr=False)  # every index below it is had or asked for
    duplicates: int = 0  # chunks that arrived again after we had them
    reasked: int = 0  # chunks asked for again (lost, late or rejected on arrival)
    resumed: int = 0  # chunks restored from an earlier, interrupted attempt

    @property
    def fetched_twice(self) -> int:
        """Chunks the transfer paid for more than once."""
        return self.duplicates + self.reasked

    @property
    def total(self) -> int:
        return chunk_count(self.size, self.chunk_size)

    @property
    def received(self) -> int:
        return len(self._have)

    @property
    def in_flight(self) -> int:
        """Chunks asked for that have not arrived (nor gone stale or failed their check)."""
        return len(self._asked)

    @property
    def complete(self) -> bool:
        return len(self._have) == self.total

    def bitmap(self) -> bytes:
        """One bit per chunk, set when it arrived; persisted to resume after a restart."""
        bits = bytearray(-(-self.total // 8))
        for index in self._have:
            bits[index // 8] |= 1 << (index % 8)
        return bytes(bits)

    def restore(self, index: int) -> None:
        """A chunk kept from an interrupted attempt (already checked when it arrived)."""
        if 0 <= index < self.total and index not in self._have:
            self._have.add(index)
            self.resumed += 1

    def reject(self, index: int) -> None:
        """A chunk that failed its check on arrival: ask for it again at once."""
        if self._asked.pop(index, None) is not None:
            self.reasked += 1
            self._cursor = min(self._cursor, index)

    def accept(self, index: int, announced_size: int, data: bytes) -> bool:
        """Count one chunk in: True when it is new (the caller keeps its bytes), False for a
        duplicate or one of the wrong length; BundleRejected for one that cannot belong."""
        if announced_size != self.size:
            raise BundleRejected(
                Reason.OVERSIZED if announced_size > self.size else Reason.TRUNCATED,
                f"{self.target}: signed length is {self.size} bytes, "
                f"the sender announced {announced_size}",
            )
        if not 0 <= index < self.total:
            raise BundleRejected(
                Reason.OVERSIZED,
                f"{self.target}: chunk index {index} is past the last chunk {self.total - 1}",
            )
        start, end = chunk_bounds(index, self.size, self.chunk_size)
        if len(data) != end - start:
            # a chunk of the wrong length is dropped and asked for again
            self.reject(index)
            return False
        self._asked.pop(index, None)
        if index in self._have:
            self.duplicates += 1
            return False
        self._have.add(index)
        return True

    def to_request(
        self, now: float, window: int, retry_after: float, progressed: float = -math.inf
    ) -> list[int]:
        """Indices to ask for now: missing ones not in flight, and in-flight ones gone stale.

        A chunk in flight goes stale `retry_after` seconds after it was asked for and after the
        last chunk arrived (`progressed`): while chunks keep arriving, the ones still on their
        way are queued behind them (a busy hub or broker), not lost, and asking again would
        only double the load that delays them."""
        stale = [i for i, at in self._asked.items() if now - max(at, progressed) >= retry_after]
        for index in stale:
            del self._asked[index]
            self._cursor = min(self._cursor, index)
        self.reasked += len(stale)
        room = window - len(self._asked)
        wanted: list[int] = []
        if room <= 0:
            return wanted
        index = self._cursor  # not from 0: a 20 MB target has 306 chunks, asked a few at a time
        while index < self.total and len(wanted) < room:
            if index not in self._have and index not in self._asked:
                wanted.append(index)
            index += 1
        self._cursor = index
        for index in wanted:
            self._asked[index] = now
        return wanted

    def check_complete(self) -> None:
        if not self.complete:
            raise BundleRejected(
                Reason.TRUNCATED, f"{self.target}: {self.received} of {self.total} chunks arrived"
            )
