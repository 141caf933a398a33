"""What one device may cost the hub: a message rate, a storage quota and a transfer rate (pure:
the hub passes the time and a way to count what a device holds).

A device past its rate has its messages refused before they are decoded; past its quota its
records are not stored. Either way the hub confirms nothing of them, so the device keeps them
and sends them again later (its own buffer cap decides what it can hold), and nothing is ever
taken from another device to make room. Chunks a device asks for past its transfer rate are not
sent now (it asks again when they do not arrive), so a few small requests cannot make the hub
publish hundreds of megabytes. Every refusal is counted per device and reason.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from edge_agent.errors import ConfigError
from edge_agent.protocol.frozen import frozen
from edge_agent.uplink.buffer import TokenBucket

RATE, QUOTA = "rate", "quota"  # why a device's message or records were refused
MALFORMED = "malformed"  # a record whose body does not decode or cannot be stored (cloud_hub.hub)
UNCOMMANDED = "uncommanded"  # a chunk request for a target the device was not told to install
TRANSFER = "transfer"  # chunks asked for past the device's transfer rate (not sent now)


@frozen
class Limits:
    """Per device: `rate` messages a second on average, `burst` at once (0: no rate limit), at
    most `quota` records stored (0: no quota), and `transfer_rate` bytes of chunks a second
    (`transfer_burst` at once; 0: no limit)."""

    rate: float = 100.0
    burst: float = 1000.0
    quota: int = 5_000_000
    transfer_rate: float = 4 * 1024 * 1024
    transfer_burst: float = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if not (0 <= self.rate < float("inf") and 0 <= self.burst < float("inf")):
            raise ConfigError(
                f"device rate: expected messages a second >= 0 (0: unlimited), got {self.rate}"
            )
        if not (0 <= self.transfer_rate < float("inf") and 0 <= self.transfer_burst < float("inf")):
            raise ConfigError(
                f"transfer rate: expected bytes a second >= 0 (0: unlimited), got "
                f"{self.transfer_rate}"
            )
        if self.quota < 0:
            raise ConfigError(f"device quota: expected records >= 0 (0: none), got {self.quota}")


class DeviceGuard:
    """Admits messages and records per device under `Limits`; counts what it refuses.
    `admit` runs on the MQTT thread, the rest on the hub's loop: one lock between them."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._buckets: dict[str, TokenBucket] = {}
        self._transfers: dict[str, TokenBucket] = {}  # bytes of chunks, per device
        self._held: dict[str, int] = {}  # records stored per device, as far as this hub knows
        self._refused: dict[str, Counter[str]] = {}  # not yet handed to `take_refused`
        self._lock = threading.Lock()

    def admit(self, device: str, now: float) -> bool:
        """One message from `device` now: within its rate?"""
        if self.limits.rate <= 0:
            return True
        with self._lock:
            bucket = self._buckets.get(device)
            if bucket is None:
                bucket = self._buckets[device] = TokenBucket(
                    self.limits.rate, max(self.limits.burst, 1.0), now
                )
            if bucket.take(1, now):
                return True
            self._refuse(device, RATE, 1)
            return False

    def room(self, device: str, incoming: int, count: Callable[[str], int]) -> bool:
        """May `incoming` more records of `device` be stored? `count(device)` tells what the
        store holds; it is asked the first time and whenever the estimate says no."""
        quota = self.limits.quota
        if quota <= 0:
            return True
        with self._lock:
            held = self._held.get(device)
        if held is None or held + incoming > quota:
            held = count(device)  # exact: a repeat or a prune since may have left room
        with self._lock:
            self._held[device] = held
            if held + incoming <= quota:
                self._held[device] = held + incoming  # an upper bound until the next count
                return True
            self._refuse(device, QUOTA, incoming)
            return False

    def chunks(self, device: str, sizes: list[int], now: float) -> int:
        """How many of the chunks `device` asks for (of these sizes, in order) may be sent
        now; the rest are refused (counted) and the device asks for them again."""
        if self.limits.transfer_rate <= 0:
            return len(sizes)
        with self._lock:
            bucket = self._transfers.get(device)
            if bucket is None:
                burst = max(self.limits.transfer_burst, max(sizes, default=1))
                bucket = self._transfers[device] = TokenBucket(
                    self.limits.transfer_rate, burst, now
                )
            budget = bucket.take(sum(sizes), now)
            allowed = spent = 0
            for size in sizes:
                if spent + size > budget:
                    break
                spent += size
                allowed += 1
            bucket.refund(budget - spent)  # part of a chunk is no chunk: kept for the next ask
            if allowed < len(sizes):
                self._refuse(device, TRANSFER, len(sizes) - allowed)
            return allowed

    def refuse(self, device: str, reason: str) -> None:
        """Count one refusal the hub decided itself (such as an uncommanded transfer)."""
        with self._lock:
            self._refuse(device, reason, 1)

    def recount(self) -> None:
        """Records were removed (retention): count again when next asked."""
        with self._lock:
            self._held.clear()

    def _refuse(self, device: str, reason: str, n: int) -> None:
        self._refused.setdefault(device, Counter())[reason] += n

    def take_refused(self) -> dict[str, Counter[str]]:
        """What was refused since the last call, per device and reason."""
        with self._lock:
            refused, self._refused = self._refused, {}
        return refused


def refusal_line(reason: str, device: str, limits: Limits) -> str:
    """One line for the log on what `device` is refused for `reason`."""
    if reason == RATE:
        return (
            f"{device} is over its {limits.rate:g} messages a second: refusing what exceeds it "
            "(the device keeps it and sends it again)"
        )
    if reason == QUOTA:
        return (
            f"{device} is over its {limits.quota} stored records: refusing what exceeds it "
            "(the device keeps it and sends it again)"
        )
    if reason == TRANSFER:
        return (
            f"{device} asks for chunks faster than its {limits.transfer_rate / 2**20:g} MiB a "
            "second: the rest go out when it asks again"
        )
    if reason == UNCOMMANDED:
        return (
            f"{device} asked for chunks of a target it was not commanded to install (or for "
            "plain chunks of an encrypted transfer): refused"
        )
    return f"{device}: {reason} refused"
