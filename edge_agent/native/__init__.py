"""C versions of the agent's hottest loops, each giving the same results as its Python original.

- `csv_rows` (csvrows.c) parses a micro-batch of plain numeric CSV lines into float32 rows in
  one call; edge_agent.sources.line_parser hands every line it does not take to its own Python
  path, which says what is wrong with it.
- `count_slots` (drift.c) adds a batch of rows to a drift window's counts, per grid slot
  (edge_agent.drift.layout), and `ks_gaps` (drift.c) computes a report's KS statistics
  (edge_agent.drift.monitor).

They are optional (setup.py): without a C compiler at install time each is None and its caller
runs the Python original. `missing()` names those that are, for the agent's log at start.
"""

from __future__ import annotations

from collections.abc import Callable

from numpy.typing import NDArray

CsvRows = Callable[[list[bytes], NDArray, NDArray, NDArray, int], list[int] | None]
CountSlots = Callable[[NDArray, NDArray, NDArray, NDArray], bool]
KsGaps = Callable[[NDArray, NDArray, NDArray, NDArray, NDArray, NDArray, NDArray], None]

csv_rows: CsvRows | None
count_slots: CountSlots | None
ks_gaps: KsGaps | None
try:
    from edge_agent.native._csvrows import csv_rows
except ImportError:  # not built: the Python path
    csv_rows = None
try:
    from edge_agent.native._drift import count_slots, ks_gaps
except ImportError:
    count_slots = ks_gaps = None


def missing() -> list[str]:
    """The C loops this install runs in Python (not built)."""
    loops = {"csv_rows": csv_rows, "count_slots": count_slots, "ks_gaps": ks_gaps}
    return [name for name, loop in loops.items() if loop is None]


__all__ = ["count_slots", "csv_rows", "ks_gaps", "missing"]
