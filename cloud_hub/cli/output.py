"""How `edgehub` commands print: a rich table for people, JSON on request.

Every command prints through `console` here. On a terminal rich fits the output to its width;
piped (to a file, `less`, `grep`) nothing is cut at 80 columns: tables take their full width
unless $COLUMNS says otherwise, and consecutive tables are set apart by a blank line.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from typing import Any

from rich.console import Console, RenderableType
from rich.table import Table

PIPE_WIDTH = 10_000  # piped output without $COLUMNS: wide enough that no cell is ever cut


def output_width(environ: dict[str, str] | os._Environ[str], is_terminal: bool) -> int | None:
    """The width to print at: None lets rich decide (the terminal's, or $COLUMNS)."""
    if environ.get("COLUMNS", "").isdigit() or is_terminal:
        return None
    return PIPE_WIDTH


console = Console(width=output_width(os.environ, sys.stdout.isatty()))
_shown = [0]  # tables printed so far by this command


def new_command() -> None:
    """A command begins: its first table needs no blank line before it."""
    _shown[0] = 0


def show(renderable: RenderableType) -> None:
    """Print a table (or a group of them), a blank line before it if one came before."""
    if _shown[0]:
        console.print()
    console.print(renderable)
    _shown[0] += 1


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
    show(table)


def hub_command(args: argparse.Namespace) -> str:
    """`edgehub` with the global options this run was given, for a follow-up command to paste:
    `edgehub --home 'my hub'`."""
    return f"edgehub --home {shlex.quote(str(args.home))}"


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


def anomalies_text(anomalies: object) -> str:
    """An anomaly model's anomaly rate for people: "3.1% of 400 (reference 1.0%)"; "-" when
    there is none."""
    if not isinstance(anomalies, dict) or not isinstance(anomalies.get("rows"), int):
        return "-"
    return (
        f"{anomalies['rate']:.1%} of {anomalies['rows']} (reference {anomalies['reference']:.1%})"
    )
