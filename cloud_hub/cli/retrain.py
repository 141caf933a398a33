"""`edgehub retrain policy add|list|remove`, `retrain check|runs|approve`, `data export`."""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloud_hub.cli.output import emit, say
from edge_agent.errors import ConfigError, MessageError

AddCommand = Callable[..., argparse.ArgumentParser]


def _hub(args: argparse.Namespace) -> Any:
    from cloud_hub.retrain.runner import Hub
    from cloud_hub.retrain.triggers import StoreLabels
    from cloud_hub.rollout.operations import open_repo
    from cloud_hub.store.database import Store
    from cloud_hub.store.url import store_url

    home = Path(args.home)
    open_repo(home)  # no hub here: say so, rather than what SQLite thinks of the path
    store = Store(store_url(home))
    return Hub(home, store, StoreLabels(store))


def cmd_policy_add(args: argparse.Namespace) -> int:
    from cloud_hub.retrain import registry as reg
    from cloud_hub.retrain.policy import Policy, parse_command, parse_timeout, parse_trigger
    from edge_agent.protocol.messages import check_model_name

    try:
        model = check_model_name(args.model, "MODEL")
    except MessageError as exc:
        raise ConfigError(str(exc)) from exc
    policy = Policy(
        id=f"p-{uuid.uuid4().hex[:6]}",
        model=model,
        triggers=tuple(parse_trigger(w) for w in args.when),
        command=parse_command(args.run),
        timeout_s=parse_timeout(args.timeout),
        approve=args.approve,
        shadow_rows=args.shadow,
    )
    reg.add_policy(_hub(args).store, policy)
    if args.json:
        print(json.dumps(policy.to_json(), indent=2))
    else:
        say(
            f"policy {policy.id} for {model}: retrain when "
            + " or ".join(str(t) for t in policy.triggers)
        )
    return 0


def cmd_policy_list(args: argparse.Namespace) -> int:
    from cloud_hub.cli.output import when
    from cloud_hub.retrain import registry as reg

    rows = []
    for stored in reg.policies(_hub(args).store):
        row = stored.policy.to_json() | {"last_fired": stored.last_fired}
        if not args.json:
            row["when"] = " or ".join(row["when"])
            row["command"] = " ".join(row["command"])
            row["last_fired"] = when(stored.last_fired)
        rows.append(row)
    columns = ["id", "model", "when", "command", "timeout_s", "approve", "last_fired"]
    emit(args, rows, "retraining policies", columns)
    return 0


def cmd_policy_remove(args: argparse.Namespace) -> int:
    from cloud_hub.retrain import registry as reg

    if not reg.remove_policy(_hub(args).store, args.id):
        raise ConfigError(f"no policy {args.id!r}; `edgehub retrain policy list` shows them")
    say(f"policy {args.id} removed")
    return 0


def _run_rows(runs: list[Any], as_json: bool) -> list[dict[str, Any]]:
    return [r.to_json() for r in runs]


RUN_COLUMNS = ["id", "policy", "trigger", "dataset", "state", "candidate", "verdict", "reason"]


def cmd_check(args: argparse.Namespace) -> int:
    from cloud_hub.retrain.runner import check_policies

    started = check_policies(_hub(args))
    if not started and not args.json:
        say("no policy fired")
        return 0
    emit(args, _run_rows(started, args.json), "retraining runs started", RUN_COLUMNS)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from cloud_hub.retrain import registry as reg

    emit(args, _run_rows(reg.runs(_hub(args).store), args.json), "retraining runs", RUN_COLUMNS)
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    from cloud_hub.retrain.runner import approve

    run = approve(_hub(args), args.run)
    say(f"run {run.id}: {run.candidate} published; rollout {run.rollout} started, shadow first")
    return 0


def cmd_data_export(args: argparse.Namespace) -> int:
    from cloud_hub.retrain.dataset import export_dataset
    from edge_agent.protocol.messages import ModelRef

    try:
        model = ModelRef.parse(args.model)
    except MessageError as exc:
        raise ConfigError(f"MODEL@VERSION: {exc}") from exc
    hub = _hub(args)
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: expected a new or empty folder, got one with files")
    data = export_dataset(hub.store, hub.cards, hub.labels, model, hub.home / "datasets", out)
    if args.json:
        print(json.dumps({"folder": str(data.folder), **data.manifest}, indent=2))
    else:
        files = ", ".join(f"{n} {f['rows']}" for n, f in data.manifest["files"].items())
        say(f"data set {data.id} of {model} in {data.folder}: {files} rows")
    return 0


def cmd_model_lineage(args: argparse.Namespace) -> int:
    from cloud_hub.drift.source import PublishedCards
    from cloud_hub.rollout.operations import open_repo
    from edge_agent.protocol.messages import ModelRef

    try:
        model: ModelRef | None = ModelRef.parse(args.model)
    except MessageError as exc:
        raise ConfigError(f"MODEL@VERSION: {exc}") from exc
    cards = PublishedCards(open_repo(Path(args.home)))
    rows: list[dict[str, Any]] = []
    seen: set[ModelRef] = set()
    while model is not None and model not in seen:
        seen.add(model)
        found, problems = cards.lookup([model])
        if model not in found:
            if not rows:
                raise ConfigError(problems[model])
            rows.append({"model": str(model), "note": problems[model]})
            break
        lineage = found[model].lineage or {}
        rows.append({"model": str(model), **lineage})
        parent = lineage.get("parent")
        model = ModelRef.parse(parent) if isinstance(parent, str) else None
    columns = ["model", "parent", "dataset", "data_rows", "data_sha256", "trigger", "conversion"]
    emit(args, rows, f"lineage of {args.model}", columns)
    return 0


def add_lineage(model: Any, add: AddCommand) -> None:
    """`edgehub model lineage MODEL@VERSION` under `edgehub model`."""
    sp = add(
        model, "lineage", cmd_model_lineage, "where a model came from, back to the first", True
    )
    sp.add_argument("model", metavar="MODEL@VERSION")


def register(sub: Any, add: AddCommand) -> None:
    """`edgehub retrain ...` and `edgehub data ...` under the top-level subparsers `sub`."""
    retrain = sub.add_parser("retrain", help="retraining policies and their runs").add_subparsers(
        dest="sub", required=True
    )
    policy = retrain.add_parser("policy", help="when to retrain a model").add_subparsers(
        dest="policy_sub", required=True
    )
    sp = add(policy, "add", cmd_policy_add, "retrain MODEL when a trigger holds", True)
    sp.add_argument("model", metavar="MODEL", help="the model name, e.g. tumor")
    sp.add_argument(
        "--when",
        action="append",
        required=True,
        metavar="TRIGGER",
        help="'drift alert on 20%% of devices for 1h', 'accuracy < 0.9' or '5000 new labels' "
        "(repeat: any one fires)",
    )
    sp.add_argument(
        "--run",
        required=True,
        metavar="COMMAND",
        help="the training command, run without a shell: {data} is the data set's folder "
        "(read its *.csv), {model} the joblib file to write",
    )
    sp.add_argument("--timeout", default="30m", help="time limit of the command (default 30m)")
    sp.add_argument(
        "--approve",
        action="store_true",
        help="wait for `edgehub retrain approve RUN` before publishing a validated model",
    )
    sp.add_argument(
        "--shadow",
        type=int,
        default=200,
        metavar="ROWS",
        help="rows each device runs the candidate in shadow before it serves (default 200)",
    )
    add(policy, "list", cmd_policy_list, "list the retraining policies", True)
    sp = add(policy, "remove", cmd_policy_remove, "remove a retraining policy")
    sp.add_argument("id", metavar="POLICY")
    add(retrain, "check", cmd_check, "evaluate every policy once; run those that fire", True)
    add(retrain, "runs", cmd_runs, "every retraining run, failed and refused ones too", True)
    sp = add(retrain, "approve", cmd_approve, "publish and roll out a run awaiting approval")
    sp.add_argument("run", metavar="RUN")

    data = sub.add_parser("data", help="training data sets").add_subparsers(
        dest="sub", required=True
    )
    sp = add(data, "export", cmd_data_export, "export a model version's data set", True)
    sp.add_argument("model", metavar="MODEL@VERSION")
    sp.add_argument("--out", metavar="DIR", help="write it here (default HOME/datasets/MODEL/ID)")
