"""`edgehub shadow {start,stop,report}`: run a candidate model beside the serving one."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table

from cloud_hub.cli.args import number
from cloud_hub.cli.output import console, hub_command, show
from edge_agent.protocol.messages import SHADOW_ROWS, ModelRef

AddCommand = Callable[..., argparse.ArgumentParser]
COLUMNS = ("device", "current", "candidate", "rows", "agreement", "errors")


_rows = number(int, "1 to 1000000 rows", 1, 1_000_000)


def cmd_shadow_start(args: argparse.Namespace) -> int:
    from cloud_hub.rollout.shadow import start_shadow  # the store: only when a command runs

    model = ModelRef.parse(args.model)
    commands = start_shadow(Path(args.home), model, args.device, args.rows)
    if args.json:
        print(json.dumps([c.to_json() for c in commands], indent=2))
    else:
        console.print(
            f"shadow run of {model} queued for {', '.join(args.device)}: a report every "
            f"{args.rows} rows (`{hub_command(args)} shadow report`); the hub sends it while "
            "it serves",
            soft_wrap=True,
        )
    return 0


def cmd_shadow_stop(args: argparse.Namespace) -> int:
    from cloud_hub.rollout.shadow import stop_shadow

    stop_shadow(Path(args.home), args.device)
    if not args.json:
        console.print(f"shadow stop queued for {', '.join(args.device)}")
    return 0


def cmd_shadow_report(args: argparse.Namespace) -> int:
    from cloud_hub.rollout.shadow import shadow_reports

    rows = shadow_reports(Path(args.home), args.device)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="shadow runs (latest report per device and candidate)")
    for col in (*COLUMNS, "p95 ms current/candidate"):
        table.add_column(col)
    for row in rows:
        agreement = row["agreement"]
        shown = f"{agreement:.3f}" if isinstance(agreement, int | float) else "?"
        p95 = f"{row['current_p95_ms']} / {row['candidate_p95_ms']}"
        table.add_row(*[str(row[c]) for c in COLUMNS[:4]], shown, str(row["errors"]), p95)
    show(table)
    if not rows:
        console.print("no shadow report yet: start one with `edgehub shadow start`")
    return 0


def register(sub: Any, add: AddCommand) -> argparse.ArgumentParser:
    """`edgehub shadow ...` under the top-level subparsers `sub`, with cli.build_parser's `add`."""
    help = "run a candidate model beside the serving one, without acting on its outputs"
    parser: argparse.ArgumentParser = sub.add_parser("shadow", help=help, description=help)
    shadow = parser.add_subparsers(dest="sub", required=True)
    sp = add(shadow, "start", cmd_shadow_start, "start a shadow run on devices", json_out=True)
    sp.add_argument("model", help="a published model, NAME@VERSION")
    sp.add_argument("--device", action="append", required=True, help="a device id (repeat)")
    sp.add_argument(
        "--rows",
        type=_rows,
        default=SHADOW_ROWS,
        help=f"live rows compared per report (default {SHADOW_ROWS})",
    )
    sp = add(shadow, "stop", cmd_shadow_stop, "stop the shadow run on devices", json_out=True)
    sp.add_argument("--device", action="append", required=True, help="a device id (repeat)")
    sp = add(shadow, "report", cmd_shadow_report, "the latest shadow reports", json_out=True)
    sp.add_argument("--device", help="only this device")
    return parser
