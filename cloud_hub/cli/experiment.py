"""`edgehub experiment start|list|show|stop|promote`: two models compared across the fleet.

The commands only read and write the hub's store; a running `edgehub serve` deploys the
cohorts' models, steps the experiments and decides them. Each option's value is checked here,
so a wrong one gets one line saying what was expected and what arrived.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table

from cloud_hub.cli.args import add_target
from cloud_hub.cli.output import emit, hub_command, say, show, when
from edge_agent.errors import ConfigError, MessageError
from edge_agent.protocol.messages import ModelRef

AddCommand = Callable[..., argparse.ArgumentParser]
LIST_COLUMNS = ["id", "models", "metric", "target", "state", "samples", "decision"]


def _model(text: str | None, flag: str, example: str) -> ModelRef:
    if text is None:
        raise ConfigError(
            f"{flag}: expected a published model, NAME@VERSION like {example}; none given"
        )
    try:
        return ModelRef.parse(text)
    except MessageError as exc:
        raise ConfigError(f"{flag}: {exc}") from exc


def _number(text: str | None, flag: str, expected: str, low: float, high: float) -> float | None:
    """A number strictly between low and high (None when not given)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not low < value < high:  # also refuses nan and inf
        raise ConfigError(f"{flag}: expected {expected}, got {text!r}")
    return value


def _split(text: str) -> float:
    try:
        percent = float(text.removesuffix("%")) if text.endswith("%") else math.nan
    except ValueError:
        percent = math.nan
    if not 0 < percent < 100:  # also refuses nan and inf
        raise ConfigError(
            f"--split: expected the candidate's share like 50% (above 0% and below 100%), "
            f"got {text!r}"
        )
    return percent / 100


def design_from(args: argparse.Namespace) -> Any:
    from cloud_hub.experiments import design
    from cloud_hub.experiments.engine import Design
    from cloud_hub.rollout.gates import parse_duration

    if args.metric is None:
        raise ConfigError(f"--metric: expected one of {', '.join(design.METRICS)}; none given")
    m = design.metric(args.metric)
    effect = _number(args.effect, "--effect", f"{m.unit}, above 0", 0, math.inf)
    alpha = _number(args.alpha, "--alpha", "a number above 0 and below 0.5 like 0.05", 0, 0.5)
    power = _number(args.power, "--power", "a number above 0.5 and below 1 like 0.8", 0.5, 1)
    deadline = parse_duration(args.deadline, "--deadline")
    if deadline <= 0:
        raise ConfigError(
            f"--deadline: expected a duration above 0 like 24h, got {args.deadline!r}"
        )
    return Design(
        m.name,
        m.default_effect if effect is None else effect,
        0.05 if alpha is None else alpha,
        0.8 if power is None else power,
        _split(args.split),
        deadline,
    )


def cmd_experiment_start(args: argparse.Namespace) -> int:
    from cloud_hub.experiments import engine as en
    from cloud_hub.experiments.operations import start_experiment

    a = _model(args.model, "the candidate", "tumor@2")
    b = _model(args.against, "--against", "tumor@1")
    plan = design_from(args)
    e = start_experiment(Path(args.home), a, b, args.target, plan)
    if args.json:
        print(json.dumps(en.view(e), indent=2))
        return 0
    unit = "windows" if plan.metric == "p95" else "rows"
    sizes = " vs ".join(f"{e.models[c]} on {len(e.members(c))} device(s)" for c in ("a", "b"))
    say(
        f"experiment {e.id} on {plan.metric} started: {sizes}; it decides at {e.needed} {unit} "
        f"per cohort, or at the deadline ({args.deadline})"
    )
    hub = hub_command(args)
    say(f"`{hub} experiment show {e.id}` follows it; `{hub} serve` must be running")
    return 0


def _samples(view: dict[str, Any]) -> str:
    return ", ".join(f"{c['cohort']} {c['n']}" for c in view["cohorts"]) + f" of {view['needed']}"


def _views(args: argparse.Namespace) -> list[dict[str, Any]]:
    from cloud_hub.experiments.operations import experiment_views

    return experiment_views(Path(args.home))


def cmd_experiment_list(args: argparse.Namespace) -> int:
    views = _views(args)
    if args.json:
        print(json.dumps(views, indent=2))
        return 0
    rows = [
        {**v, "samples": _samples(v), "decision": v["decision"] or v["reason"] or "-"}
        for v in views
    ]
    emit(args, rows, "experiments", LIST_COLUMNS)
    return 0


def _value(x: object, metric: str) -> str:
    if not isinstance(x, int | float):
        return "-"
    return f"{x:.4g} ms" if metric == "p95" else f"{x:.4f}"


def cmd_experiment_show(args: argparse.Namespace) -> int:
    found = [v for v in _views(args) if v["id"] == args.id]
    if not found:
        raise ConfigError(
            f"no experiment with id {args.id!r}; `edgehub experiment list` shows them"
        )
    v = found[0]
    if args.json:
        print(json.dumps(v, indent=2))
        return 0
    head = Table(title=f"experiment {v['id']}: {v['models']}", show_header=False)
    head.add_row("state", v["state"] + (f": {v['reason']}" if v["reason"] else ""))
    head.add_row("target", f"{v['target']}, {100 * v['split']:g}% to A")
    head.add_row(
        "metric",
        f"{v['metric']} ({v['better']} is better), effect {v['effect']:g}, alpha {v['alpha']:g}, "
        f"power {v['power']:g}",
    )
    head.add_row("needed", f"{v['needed']} per cohort, deadline {when(v['deadline'])}")
    head.add_row("test", v["test"] or "made once both cohorts hold the samples needed")
    head.add_row("decision", v["decision"] or "-")
    if v["promoted"]:
        head.add_row("promoted", f"rollout {v['promoted']}")
    cohorts = Table(title="cohorts")
    for col in ("cohort", "model", "rollout", "devices", "samples", v["metric"], "interval"):
        cohorts.add_column(col)
    for c in v["cohorts"]:
        interval = (
            f"{_value(c['low'], v['metric'])} to {_value(c['high'], v['metric'])}"
            if c["low"] is not None
            else "-"
        )
        cohorts.add_row(
            c["cohort"],
            c["model"],
            c["rollout"] or "-",
            ", ".join(c["devices"]),
            f"{c['n']} of {v['needed']}",
            _value(c["value"], v["metric"]),
            interval,
        )
    show(head)
    show(cohorts)
    return 0


def cmd_experiment_stop(args: argparse.Namespace) -> int:
    from cloud_hub.experiments.operations import stop_experiment

    e = stop_experiment(Path(args.home), args.id)
    say(f"experiment {e.id}: {e.state}; its rollouts stop sending (devices keep their model)")
    return 0


def cmd_experiment_promote(args: argparse.Namespace) -> int:
    from cloud_hub.experiments.operations import promote_experiment

    r = promote_experiment(Path(args.home), args.id, args.canary, args.waves)
    if args.json:
        print(json.dumps(r.to_json(), indent=2))
        return 0
    waves = " then ".join(str(len(w)) for w in r.waves)
    say(f"rollout {r.id} of {r.model} to {r.plan.select} started: waves of {waves} device(s)")
    return 0


def register(sub: Any, add: AddCommand) -> argparse.ArgumentParser:
    """`edgehub experiment ...` under the top-level subparsers `sub`, with cli.build_parser's
    `add`."""
    help = "compare two models on cohorts of the fleet with a stated test"
    parser: argparse.ArgumentParser = sub.add_parser("experiment", help=help, description=help)
    experiment = parser.add_subparsers(dest="sub", required=True)
    sp = add(experiment, "start", cmd_experiment_start, "start an experiment", json_out=True)
    sp.add_argument("model", help="the candidate (cohort A), NAME@VERSION")
    sp.add_argument("--against", help="the model it is compared with (cohort B), NAME@VERSION")
    add_target(sp)
    sp.add_argument("--split", default="50%", help="the candidate's share of the devices (50%%)")
    sp.add_argument(
        "--metric", help="accuracy, agreement (with the serving model), p95 or error-rate"
    )
    sp.add_argument(
        "--effect",
        help="the smallest difference worth finding: for rates a difference in the rate "
        "(default 0.05); for p95 in standard deviations of the windows' p95 (default 0.5)",
    )
    sp.add_argument(
        "--alpha", help="the test's level: the chance to name a winner between equals (0.05)"
    )
    sp.add_argument("--power", help="the chance to find a true difference of --effect (0.8)")
    sp.add_argument("--deadline", default="24h", help="decide by then at the latest: 30m, 24h")
    add(experiment, "list", cmd_experiment_list, "list experiments", json_out=True)
    sp = add(
        experiment,
        "show",
        cmd_experiment_show,
        "one experiment's cohorts and decision",
        json_out=True,
    )
    sp.add_argument("id")
    sp = add(
        experiment,
        "stop",
        cmd_experiment_stop,
        "stop without a decision (devices keep their model)",
    )
    sp.add_argument("id")
    sp = add(
        experiment,
        "promote",
        cmd_experiment_promote,
        "roll the winner out over the target",
        json_out=True,
    )
    sp.add_argument("id")
    sp.add_argument("--canary", default="1", help="devices in the first wave (default 1)")
    sp.add_argument("--waves", default="50%,100%", help="then these shares (default 50%%,100%%)")
    return parser
