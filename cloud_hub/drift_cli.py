"""`edgehub drift`: drift reports per model version and device, and the inputs captured on alerts.

edgehub drift [--model NAME[@VERSION]] [--device ID] [--json]
edgehub drift captures --csv FILE [--model ...] [--device ...]
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edge_agent.errors import ConfigError

console = Console()

AddCommand = Callable[..., argparse.ArgumentParser]
MOVED_SHOWN = 4  # features named per row in the table (all of them in --json)


def _store(args: argparse.Namespace) -> Any:
    from cloud_hub.storage import Store, default_url

    home = Path(args.home)
    if not (home / "hub.sqlite").exists():
        raise ConfigError(f"--home {home}: expected a hub folder (edgehub keys init), found none")
    return Store(default_url(home))


def cmd_drift(args: argparse.Namespace) -> int:
    from cloud_hub.storage import drift_summary

    rows = drift_summary(_store(args), args.model, args.device)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="drift per model version and device")
    for col in ("model", "device", "windows", "warn", "alert", "status", "max psi", "moved"):
        table.add_column(col)
    for r in rows:
        moved = [f"{name} ({n})" for name, n in list(r["moved"].items())[:MOVED_SHOWN]]
        more = len(r["moved"]) - MOVED_SHOWN
        table.add_row(
            f"{r['model']}@{r['version']}",
            r["device"],
            str(r["windows"]),
            str(r["warn"]),
            str(r["alert"]),
            r["status"],
            f"{r['max_psi']:.3f}",
            ", ".join(moved) + (f" +{more} more" if more > 0 else "") or "-",
        )
    console.print(table)
    if not rows:
        console.print("no drift reports yet", markup=False)
    return 0


def cmd_drift_captures(args: argparse.Namespace) -> int:
    from cloud_hub.storage import drift_captures

    rows = drift_captures(_store(args), args.model, args.device)
    out = Path(args.csv)
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    try:
        with out.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    except OSError as exc:
        raise ConfigError(
            f"--csv {out}: expected a file the hub can write ({exc.strerror})"
        ) from exc
    console.print(f"{len(rows)} captured rows written to {out}", markup=False, soft_wrap=True)
    return 0


def _filters(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--model", help="only this model (NAME or NAME@VERSION)")
    sp.add_argument("--device", help="only this device id")


def register(sub: Any, add: AddCommand) -> argparse.ArgumentParser:
    """`edgehub drift ...` under the top-level subparsers `sub`, with cli.build_parser's `add`."""
    drift = add(sub, "drift", cmd_drift, "drift reports per model version and device", True)
    _filters(drift)
    inner = drift.add_subparsers(dest="sub", required=False)
    sp = add(inner, "captures", cmd_drift_captures, "export the inputs captured on drift alerts")
    sp.add_argument("--csv", required=True, help="write the captured rows to this CSV file")
    _filters(sp)
    return drift
