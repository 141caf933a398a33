"""C versions of the agent's hottest loops, each giving the same results as its Python original.

- `csv_rows` (csvrows.c) parses a micro-batch of plain numeric CSV lines into float32 rows in
  one call; edge_agent.sources.line_parser hands every line it does not take to its own Python
  path, which says what is wrong with it.
- `count_slots` (slots.c) adds a batch of rows to a drift window's counts, per grid slot
  (edge_agent.drift.layout).

They are optional (setup.py): without a C compiler at install time each is None and its caller
runs the Python original. `missing()` names those that are, for the agent's log at start.
"""

from __future__ import annotations

from collections.abc import Callable

from numpy.typing import NDArray

CsvRows = Callable[[list[bytes], NDArray, NDArray, NDArray, int], list[int] | None]
CountSlots = Callable[[NDArray, NDArray, NDArray, NDArray], bool]

csv_rows: CsvRows | None
count_slots: CountSlots | None
try:
    from edge_agent.native._csvrows import csv_rows
except ImportError:  # not built: the Python path
    csv_rows = None
try:
    from edge_agent.native._slots import count_slots
except ImportError:
    count_slots = None


def missing() -> list[str]:
    """The C loops this install runs in Python (not built)."""
    return [name for name, f in (("csv_rows", csv_rows), ("count_slots", count_slots)) if f is None]


__all__ = ["count_slots", "csv_rows", "missing"]
