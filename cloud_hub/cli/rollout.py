"""`edgehub rollout start|status|list|pause|resume|abort|rollback`: staged rollouts.

The commands only read and write the hub's store; a running `edgehub serve` steps the rollouts,
sends the commands and applies the gates.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.table import Table

from cloud_hub.cli.args import add_target
from cloud_hub.cli.output import console, emit, hub_command, say, show
from edge_agent.errors import ConfigError

AddCommand = Callable[..., argparse.ArgumentParser]
WATCH_S = 1.0


def _number(text: str | None, flag: str, top: float = math.inf) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= top:  # also refuses nan and inf
        limit = "a number of 0 or more" if top == math.inf else f"a number from 0 to {top:g}"
        raise ConfigError(f"{flag}: expected {limit}, got {text!r}")
    return value


def _rows(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or not 1 <= int(text) <= 1_000_000:
        raise ConfigError(f"--shadow: expected a number of rows from 1 to 1000000, got {text!r}")
    return int(text)


def gates_from(args: argparse.Namespace) -> Any:
    from cloud_hub.rollout.gates import Gates, Threshold, parse_duration

    return Gates(
        max_failure=Threshold.parse(args.max_failure, "--max-failure"),
        min_success=Threshold.parse(args.min_success, "--min-success"),
        soak_s=parse_duration(args.soak, "--soak"),
        max_p95_ms=_number(args.max_p95_ms, "--max-p95-ms"),
        max_error_rate=_number(args.max_error_rate, "--max-error-rate", 1.0),
        max_psi=_number(args.max_psi, "--max-psi"),
        max_accuracy_drop=_number(args.max_accuracy_drop, "--max-accuracy-drop", 1.0),
        min_agreement=_number(args.min_agreement, "--min-agreement", 1.0),
        on_fail=args.on_fail,
    )


def cmd_rollout_start(args: argparse.Namespace) -> int:
    from cloud_hub.rollout.operations import start_rollout
    from edge_agent.protocol.messages import ModelRef

    r = start_rollout(
        Path(args.home),
        ModelRef.parse(args.model),
        args.canary,
        target=args.target,
        waves=args.waves,
        gates=gates_from(args),
        shadow_rows=_rows(args.shadow),
        encrypt=args.encrypt,
    )
    if args.json:
        print(json.dumps(r.to_json(), indent=2))
    else:
        waves = " then ".join(str(len(w)) for w in r.waves)
        say(f"rollout {r.id} of {r.model} to {r.plan.select} started: waves of {waves} device(s)")
        hub = hub_command(args)
        say(f"`{hub} rollout status {r.id}` follows it; `{hub} serve` must be running")
    return 0


def _summary(r: Any) -> dict[str, Any]:
    from cloud_hub.rollout import engine as ro

    p = ro.progress(r)
    return {
        "id": r.id,
        "model": str(r.model),
        "target": r.plan.select,
        "state": r.state,
        "wave": f"{min(r.wave + 1, len(r.waves))}/{len(r.waves)}",
        "healthy": p[ro.HEALTHY],
        "failed": p[ro.FAILED],
        "pending": sum(p[s] for s in (ro.WAITING, ro.SHADOW, ro.SHADOWED, ro.SENT, ro.INSTALLED)),
        "rolled_back": p["rolled_back"],
        "reason": r.halt_reason,
    }


def _stored(args: argparse.Namespace) -> list[Any]:
    from cloud_hub.rollout import engine as ro
    from cloud_hub.rollout.operations import open_repo, rollout_rows

    open_repo(Path(args.home))  # no hub here: say so, rather than what SQLite thinks of the path
    return [ro.Rollout.from_json(body) for body in rollout_rows(Path(args.home))]


def cmd_rollout_list(args: argparse.Namespace) -> int:
    rows = [r.to_json() if args.json else _summary(r) for r in _stored(args)]
    columns = ["id", "model", "target", "state", "wave", "healthy", "failed", "pending", "reason"]
    emit(args, rows, "rollouts", columns)
    return 0


def _view(r: Any, now: float) -> Group:
    from cloud_hub.rollout import engine as ro

    s = _summary(r)
    head = Table(title=f"rollout {r.id}: {r.model} to {r.plan.select}", show_header=False)
    head.add_row("state", r.state + (f": {r.halt_reason}" if r.halt_reason else ""))
    g = r.plan.gates
    limits = [
        f"failures <= {g.max_failure}",
        f"healthy >= {g.min_success}",
        f"soak {g.soak_s:g} s",
        *(f"{name} {limit}" for name, limit in _limits(g)),
        f"on fail: {g.on_fail}",
    ]
    head.add_row("gates", ", ".join(limits))
    head.add_row(
        "devices",
        f"{s['healthy']} healthy, {s['failed']} failed, {s['pending']} pending, "
        f"{s['rolled_back']} rolled back",
    )
    waves = Table(title="waves")
    for col in ("wave", "size", "phase", "healthy", "failed", "pending", "gate"):
        waves.add_column(col)
    for row in ro.wave_rows(r, now):
        pending = sum(row[k] for k in (ro.WAITING, ro.SHADOW, ro.SHADOWED, ro.SENT, ro.INSTALLED))
        waves.add_row(
            row["name"],
            str(row["size"]),
            row["phase"],
            str(row[ro.HEALTHY]),
            str(row[ro.FAILED]),
            str(pending),
            "; ".join(_gate_text(gate) for gate in (row["shadow_gate"], row["gate"]) if gate),
        )
    return Group(head, waves)


def _limits(g: Any) -> list[tuple[str, str]]:
    pairs = [
        ("p95 <=", g.max_p95_ms, " ms"),
        ("error rate <=", g.max_error_rate, ""),
        ("psi <=", g.max_psi, ""),
        ("accuracy drop <=", g.max_accuracy_drop, ""),
        ("agreement >=", g.min_agreement, ""),
    ]
    return [(name, f"{value:g}{unit}") for name, value, unit in pairs if value is not None]


def _gate_text(gate: dict[str, Any]) -> str:
    checks = ", ".join(
        f"{c['name']} {'-' if c['value'] is None else format(c['value'], '.4g')}"
        f"{'' if c['ok'] else ' (!)'}"
        for c in gate["checks"]
    )
    override = " (resumed by hand)" if gate.get("overridden") else ""
    return f"{gate['outcome']}{override}: {checks}"


def cmd_rollout_status(args: argparse.Namespace) -> int:
    from cloud_hub.rollout import engine as ro

    if args.id is None:
        return cmd_rollout_list(args)

    def find() -> Any:
        for r in _stored(args):
            if r.id == args.id:
                return r
        raise ConfigError(f"no rollout with id {args.id!r}; `edgehub rollout list` shows them")

    r = find()
    if args.json:
        print(json.dumps([{**r.to_json(), "waves_view": ro.wave_rows(r, time.time())}], indent=2))
        return 0
    if not args.watch:
        show(_view(r, time.time()))
        return 0
    if not console.is_terminal:  # a log, a pipe: a plain line whenever something changed
        said = ""
        while True:
            line = progress_line(r)
            if line != said:
                say(line)
                console.file.flush()
                said = line
            if r.state not in (ro.RUNNING, ro.PAUSED):
                break
            time.sleep(WATCH_S)  # polling the store; nothing to synchronise with
            r = find()
        show(_view(r, time.time()))
        return 0
    with Live(_view(r, time.time()), console=console, refresh_per_second=4) as live:
        while r.state in (ro.RUNNING, ro.PAUSED):
            time.sleep(WATCH_S)  # a person is watching; nothing to synchronise with
            r = find()
            live.update(_view(r, time.time()))
    return 0


def progress_line(r: Any) -> str:
    """One line of a watched rollout, for a log: its state, wave and device counts."""
    s = _summary(r)
    reason = f" ({s['reason']})" if s["reason"] else ""
    return (
        f"rollout {s['id']} {s['state']}{reason}: wave {s['wave']}, {s['healthy']} healthy, "
        f"{s['failed']} failed, {s['pending']} pending"
    )


def _manual(action: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from cloud_hub.rollout import engine as ro
        from cloud_hub.rollout.operations import change_rollout

        r = change_rollout(Path(args.home), args.id, ro.MANUAL[action])
        say(f"rollout {r.id}: {r.state}" + (f" ({r.halt_reason})" if r.halt_reason else ""))
        return 0

    return run


def register(sub: Any, add: AddCommand) -> argparse.ArgumentParser:
    """`edgehub rollout ...` under the top-level subparsers `sub`, with cli.build_parser's `add`."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "rollout", help="staged rollouts", description="staged rollouts"
    )
    rollout = parser.add_subparsers(dest="sub", required=True)
    sp = add(rollout, "start", cmd_rollout_start, "start a staged rollout", json_out=True)
    sp.add_argument("model", help="NAME@VERSION")
    add_target(sp)
    sp.add_argument("--canary", default="1", help="devices in the first wave: a count or a percent")
    sp.add_argument(
        "--waves",
        default="100%",
        help="then waves reaching these shares of the fleet, e.g. 10%%,50%%,100%% (default 100%%)",
    )
    sp.add_argument(
        "--max-failure", default="0", help="failed installs a wave may have: count or percent"
    )
    sp.add_argument(
        "--min-success",
        default="0",
        help="healthy devices a wave needs, of those that answered: count or percent",
    )
    sp.add_argument(
        "--soak", default="0", help="watch each wave this long before the next: 30s, 5m"
    )
    sp.add_argument("--max-p95-ms", help="p95 inference latency budget on the devices")
    sp.add_argument("--max-error-rate", help="inference errors per inference, 0 to 1")
    sp.add_argument("--max-psi", help="drift: highest PSI against the model card's reference")
    sp.add_argument(
        "--max-accuracy-drop",
        help="largest drop, 0 to 1, of a device's expected accuracy (estimated without labels "
        "from the model's calibrated confidence) below the model card's",
    )
    sp.add_argument("--min-agreement", help="with the serving model in shadow mode, 0 to 1")
    sp.add_argument("--shadow", metavar="ROWS", help="shadow each wave for ROWS rows first")
    sp.add_argument(
        "--on-fail",
        default="abort",
        help="when a gate fails: abort (roll back, the default) or pause",
    )
    sp.add_argument(
        "--encrypt",
        action="store_true",
        help="seal the bundle for each device's enrolled X25519 key (HPKE)",
    )
    sp = add(
        rollout,
        "status",
        cmd_rollout_status,
        "one rollout's waves and gates, or all",
        json_out=True,
    )
    sp.add_argument("id", nargs="?")
    sp.add_argument("--watch", action="store_true", help="keep the view live until it stops")
    add(rollout, "list", cmd_rollout_list, "list rollouts", json_out=True)
    helps = {
        "pause": "hold the next waves (devices keep what they got)",
        "resume": "continue a paused rollout (a wave its gate paused proceeds)",
        "abort": "stop sending (devices keep what they got)",
        "rollback": "stop, and roll back every device that installed the model",
    }
    for action, text in helps.items():
        sp = add(rollout, action, _manual(action), text)
        sp.add_argument("id")
    return parser
