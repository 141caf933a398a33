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


def p_value(p: object) -> str:
    """A drift p-value for people: 'p 0.43', 'p 3.1e-05', 'p <1e-12'; '-' when absent."""
    if not isinstance(p, int | float) or isinstance(p, bool):
        return "-"
    if p < 1e-12:
        return "p <1e-12"
    return f"p {p:.2g}" if p >= 0.01 else f"p {p:.1e}"
