"""`edgehub runtimes {list,prepare}`: the device TFLite runtimes conversions are checked on.

A profile names the oldest TFLite runtime its devices run (`[runtime] tflite`); an older one
than the hub's own runs in a cached environment that `prepare` builds once with pip (the
conversions themselves never fetch anything: without it they ship the most conservative op set,
unchecked, and say so).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from rich.table import Table

from cloud_hub.cli.output import console, show
from edge_agent.inference.tflite import TFLITE_RUNTIMES
from firmware_configs import profile_names

AddCommand = Callable[..., argparse.ArgumentParser]
COLUMNS = ("runtime", "profiles", "where", "state")


def runtime_rows() -> list[dict[str, Any]]:
    """One row per TFLite runtime edgefleet knows: the profiles naming it, and whether a
    conversion can check a model on it here."""
    from converters.runtimes.envs import env_folder, prepared_python
    from converters.runtimes.targets import ENVS, profile_runtime

    named: dict[str, list[str]] = {name: [] for name in TFLITE_RUNTIMES}
    for profile in profile_names():
        named.setdefault(profile_runtime(profile), []).append(profile)
    rows = []
    for name, profiles in named.items():
        spec = ENVS.get(name)
        if spec is None:
            where, ready = "the hub's own Python", True
        else:
            where, ready = str(env_folder(spec)), prepared_python(spec) is not None
        rows.append(
            {
                "runtime": name,
                "profiles": profiles,
                "where": where,
                "state": "ready" if ready else "not prepared",
            }
        )
    return rows


def cmd_runtimes_list(args: argparse.Namespace) -> int:
    rows = runtime_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="TFLite runtimes conversions are checked on")
    for col in COLUMNS:
        table.add_column(col)
    for row in rows:
        table.add_row(row["runtime"], ", ".join(row["profiles"]), row["where"], row["state"])
    show(table)
    return 0


def cmd_runtimes_prepare(args: argparse.Namespace) -> int:
    from cloud_hub.runtimes.prepare import prepare
    from converters.runtimes.targets import ENVS, check_runtime

    names = [check_runtime(n) for n in args.runtime] or list(ENVS)
    done = {}
    for name in names:
        spec = ENVS.get(name)
        done[name] = "the hub's own" if spec is None else str(prepare(spec, _progress(args)))
    if args.json:
        print(json.dumps(done, indent=2))
    else:
        for name, where in done.items():
            console.print(f"{name}: ready ({where})", soft_wrap=True, markup=False)
    return 0


def _progress(args: argparse.Namespace) -> Callable[[str], None]:
    def say(text: str) -> None:
        if not args.json:
            console.print(text, soft_wrap=True, markup=False)

    return say


def register(sub: Any, add: AddCommand) -> argparse.ArgumentParser:
    """`edgehub runtimes ...` under the top-level subparsers `sub`."""
    help = "the device TFLite runtimes conversions are checked on"
    parser: argparse.ArgumentParser = sub.add_parser("runtimes", help=help, description=help)
    runtimes = parser.add_subparsers(dest="sub", required=True)
    add(runtimes, "list", cmd_runtimes_list, "the runtimes and whether each is ready", True)
    sp = add(
        runtimes,
        "prepare",
        cmd_runtimes_prepare,
        "build the cached environment of an older runtime once (pip; about a minute)",
        json_out=True,
    )
    sp.add_argument(
        "runtime",
        nargs="*",
        help=f"one of {', '.join(map(repr, TFLITE_RUNTIMES))} (default: every one that needs it)",
    )
    return parser
