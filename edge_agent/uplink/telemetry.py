"""Per-window telemetry aggregates and the agent's running statistics (pure logic)."""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.records import Scalar, TelemetryWindow, WindowRows


def percentiles(values: Any, qs: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {f"p{q}": 0.0 for q in qs}
    return {f"p{q}": round(float(v), 4) for q, v in zip(qs, percentile(arr, qs), strict=True)}


def percentile(values: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """np.percentile(values, qs) of a non-empty 1-d float64 array without NaN, bit for bit (its
    default, linear method, with its interpolation), but without importing numpy.ma: numpy 2's
    np.percentile does (through np.unique), which costs the agent about 1 MB of resident
    memory."""
    s = np.sort(values)
    n = s.size
    virtual = (n - 1) * np.true_divide(np.asarray(qs, dtype=np.float64), 100)
    lo = np.floor(virtual).astype(np.intp)
    hi = lo + 1
    last = virtual >= n - 1
    lo[last] = hi[last] = n - 1
    gamma = virtual - lo
    a, b = s[lo], s[hi]
    diff = b - a
    out = a + diff * gamma
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5)
    return out


@dataclass
class Window:
    """What one telemetry record says about one window of inference.

    With a `boot`, its rows are numbered: `add` is given the number of its batch's first row
    (rows of one window are consecutive: the pipeline numbers every inferred row in order),
    and the record names them (`WindowRows`), with each row's prediction when `keep`. For an
    anomaly model, `add` is given each row's flag too, and `anomalies` counts the flagged rows."""

    started: float
    boot: int | None = None  # the agent's boot its rows are numbered under; None: no ids
    keep: bool = False  # whether the record carries each row's prediction
    count: int = 0
    # Every row of a batch has the batch's latency: kept once per batch, with the batch's size.
    latencies_ms: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    predictions: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    first_row: int | None = None
    row_predictions: list[Scalar] = field(default_factory=list)
    anomalies: int | None = None  # rows flagged anomalous (anomaly models only)
    lines: int | None = None  # sensor lines a window model's framer took (window models only)

    def add(
        self,
        latency_ms: float,
        predictions: np.ndarray,
        first_row: int | None = None,
        flags: np.ndarray | None = None,
    ) -> None:
        n = len(predictions)
        if first_row is None:
            pass
        elif self.first_row is None:
            self.first_row = first_row
        elif first_row != self.first_row + self.count:
            raise ValueError(
                f"window rows: expected row {self.first_row + self.count} next, got {first_row}"
            )
        self.count += n
        self.latencies_ms.append(latency_ms)
        self.batch_sizes.append(n)
        labels = predictions.tolist()  # numpy scalars -> int, float, str, bool
        if n == 1:  # the common batch of one: Counter.update's Python-level checks cost more
            self.predictions[str(labels[0])] += 1
        else:
            self.predictions.update(map(str, labels))  # Counter's C loop
        if self.keep:
            self.row_predictions.extend(labels)
        if flags is not None:
            self.anomalies = (self.anomalies or 0) + int(np.count_nonzero(flags))

    def reject(self, reason: str, n: int = 1) -> None:
        self.errors[reason] += n

    def took(self, lines: int) -> None:
        """A window model's framer took `lines` sensor lines (refused ones are errors)."""
        self.lines = (self.lines or 0) + lines

    @property
    def empty(self) -> bool:
        return self.count == 0 and not self.errors and not self.lines

    def to_record(self, ended: float, model: ModelRef | None) -> TelemetryWindow:
        return TelemetryWindow(
            window_s=round(ended - self.started, 3),
            model=model,
            count=self.count,
            latency_ms=percentiles(np.repeat(self.latencies_ms, self.batch_sizes)),
            errors=dict(self.errors),
            predictions=dict(self.predictions),
            rows=self._rows(),
            anomalies=self.anomalies,
            lines=self.lines,
        )

    def _rows(self) -> WindowRows | None:
        if self.boot is None or self.first_row is None:
            return None
        kept = tuple(self.row_predictions) if self.keep else None
        return WindowRows(self.boot, self.first_row, kept)


RECENT_ROWS = 20_000  # the rows whose latencies RunningStats keeps for its percentiles


class RunningStats:
    """Since boot: inferences, rejects by reason, and the latencies of the last `keep` rows (a
    ring of float64: 8 bytes a row, where a deque of float objects took about 32, 640 kB of a
    small device's memory at 20,000 rows)."""

    def __init__(self, keep: int = RECENT_ROWS) -> None:
        if keep < 1:
            raise ValueError(f"keep: expected at least 1 row, got {keep}")
        self.inferences = 0
        self.rejected: Counter[str] = Counter()
        self._ring = array("d", bytes(8 * keep))
        self._keep = keep
        self._at = 0  # where the next row's latency goes

    def add(self, latency_ms: float, n: int) -> None:
        # the latencies first, the count after: `latencies` on another thread reads as many
        # slots as the count says, never one not written yet
        at = self._at
        if n == 1:  # the common batch of one
            self._ring[at] = latency_ms
            self._at = at + 1 if at + 1 < self._keep else 0
        else:
            for _ in range(min(n, self._keep)):  # a batch: each of its rows has its latency
                self._ring[at] = latency_ms
                at = at + 1 if at + 1 < self._keep else 0
            self._at = at
        self.inferences += n

    def recent_ms(self) -> np.ndarray:
        """The latencies kept, oldest first."""
        ring = np.frombuffer(self._ring, dtype=np.float64)
        if self.inferences < self._keep:
            return ring[: self._at].copy()
        return np.concatenate([ring[self._at :], ring[: self._at]])

    def latencies(self) -> dict[str, float]:
        """p50 and p99 of the recent rows' latencies."""
        kept = min(self.inferences, self._keep)
        return percentiles(np.frombuffer(self._ring, dtype=np.float64)[:kept], (50, 99))

    def snapshot(self) -> dict[str, Any]:
        return {
            "inferences": self.inferences,
            "rejected": dict(self.rejected),
            "latency_ms": self.latencies(),
        }
