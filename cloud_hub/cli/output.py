"""How `edgehub` commands print: a rich table for people, JSON on request."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def emit(
    args: argparse.Namespace, rows: list[dict[str, Any]], title: str, columns: list[str]
) -> None:
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, no_wrap=i == 0)  # the first column names the row: keep it whole
    for row in rows:
        table.add_row(*[str(row.get(c, "")) for c in columns])
    console.print(table)


def say(text: str) -> None:
    """One message line: neither folded at 80 columns nor read as rich markup."""
    console.print(text, soft_wrap=True, markup=False, highlight=False)


def when(epoch: float) -> str:
    """A stored timestamp for people: UTC, to the second; 0 means the hub never saw it."""
    if not epoch:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))


def p_text(p: object) -> str:
    """A p-value for people: 0.42, 0.0031, 2.1e-09; "-" when there is none."""
    if not isinstance(p, int | float) or isinstance(p, bool):
        return "-"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def accuracy_text(accuracy: object) -> str:
    """An accuracy estimated without labels for people: "0.912 (-0.031)" against the card's
    value; "-" when there is none."""
    if not isinstance(accuracy, dict) or not isinstance(accuracy.get("expected"), float):
        return "-"
    return f"{accuracy['expected']:.3f} ({accuracy['change']:+.3f})"
