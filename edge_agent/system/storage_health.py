"""Whether the agent can keep what it produces (pure: the caller passes the time, no I/O).

The agent writes a few places in its state folder: the boot counter, the buffer of records,
status.json, a pending command. A disk that fills or goes read-only makes them refuse writes;
the agent goes on inferring, and this class keeps the account:

- `failed(place, error, now)` and `succeeded(place, now)` return the one log line to write when
  the condition changed (the set of reasons failing: a disk that became full, also read-only,
  or writable again), else None: a full disk is said once, not once per record or per file;
- `may_try(place, now)` paces the attempts while a place fails (one per `retry_s`), so a fault
  costs next to nothing and recovery is noticed within a second or so;
- `unkept(kind)` counts a record that could not be kept;
- `condition()` is what the status and the telemetry records say (protocol StorageCondition).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

from edge_agent.errors import StorageError
from edge_agent.protocol.messages import StorageCondition


@dataclass
class _Fault:
    reason: str
    error: str
    since: float
    retry_at: float


class StorageHealth:
    def __init__(self, retry_s: float = 1.0) -> None:
        self.retry_s = retry_s
        self._faults: dict[str, _Fault] = {}
        self._unkept: Counter[str] = Counter()
        self._began: float | None = None  # when the present trouble began (some place failing)
        self._lock = threading.Lock()

    def failed(self, place: str, error: StorageError, now: float) -> str | None:
        with self._lock:
            before = self._reasons()
            old = self._faults.get(place)
            since = old.since if old else now
            self._faults[place] = _Fault(error.reason, str(error), since, now + self.retry_s)
            if self._began is None:
                self._began = now
            if self._reasons() == before:  # the same trouble seen from another place or again
                return None
        return (
            f"storage: cannot write the {place} ({error}); the agent goes on inferring, and its "
            "status says this and how many records it could not keep (stats.storage)"
        )

    def succeeded(self, place: str, now: float) -> str | None:
        with self._lock:
            before = self._reasons()
            if self._faults.pop(place, None) is None:
                return None
            began = self._began if self._began is not None else now
            if not self._faults:
                self._began = None
            if self._reasons() == before:
                return None
            still = "; ".join(f.error for f in self._faults.values())
            unkept = sum(self._unkept.values())
        if still:
            return f"storage: the {place} is writable again; still failing: {still}"
        return (
            f"storage: writable again after {max(0.0, now - began):.0f} s "
            f"({unkept} records could not be kept since the agent started)"
        )

    def _reasons(self) -> set[str]:
        """What the condition is, as the log tells it: the reasons failing now."""
        return {f.reason for f in self._faults.values()}

    def may_try(self, place: str, now: float) -> bool:
        """True when `place` works, or fails and its next attempt is due (then the one after is
        pushed back, so threads that ask at once do not all try). A clock that went back
        counts as due."""
        with self._lock:
            fault = self._faults.get(place)
            if fault is None:
                return True
            if now < fault.retry_at and fault.retry_at - now <= self.retry_s:
                return False
            fault.retry_at = now + self.retry_s
            return True

    def failing(self, place: str) -> bool:
        with self._lock:
            return place in self._faults

    def unkept(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self._unkept[kind] += n

    @property
    def clean(self) -> bool:
        """Nothing failing and nothing lost: telemetry records need not say anything."""
        with self._lock:
            return not self._faults and not self._unkept

    def condition(self) -> StorageCondition:
        with self._lock:
            faults = sorted(self._faults.values(), key=lambda f: f.since)
            unkept = dict(self._unkept)
            began = self._began
        if not faults:
            return StorageCondition(True, None, None, unkept)
        reasons = tuple(dict.fromkeys(f.reason for f in faults))  # oldest first, each once
        return StorageCondition(False, "; ".join(f.error for f in faults), began, unkept, reasons)
