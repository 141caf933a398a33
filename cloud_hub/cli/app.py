"""`edgehub`: the hub's command line. Tables by default, `--json` on request, one line per error."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cloud_hub.cli.args import name_list, number
from cloud_hub.cluster import LEADER_TIMEOUT_S, MIN_LEADER_TIMEOUT_S
from cloud_hub.store.url import STORE_ENV
from edge_agent import __version__
from edge_agent.cli_tools import accept_everywhere, add_completion, add_verbose
from edge_agent.errors import ConfigError, EdgefleetError
from edge_agent.protocol.messages import ModelRef

# what only the hub extra (`pip install 'edgefleet[hub]'`) brings; the base install is the agent
HUB_ONLY = (
    "rich",
    "sqlalchemy",
    "sklearn",
    "skl2onnx",
    "onnx",
    "amqtt",
    "fastapi",
    "uvicorn",
    "prometheus_client",
)


def _hub_only(exc: ModuleNotFoundError) -> str | None:
    """The hub-only package `exc` says is missing, or None."""
    root = (exc.name or "").split(".")[0]
    return root if root in HUB_ONLY else None


def missing_extra(module: str) -> str:
    install = "pip install 'edgefleet[hub]'"
    return f"edgehub: the hub needs the hub extra: {install} (missing module: {module})"


try:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn
    from rich.table import Table

    from cloud_hub.cli import broker as broker_cli
    from cloud_hub.cli import drift as drift_cli
    from cloud_hub.cli import experiment as experiment_cli
    from cloud_hub.cli import fleet as fleet_cli
    from cloud_hub.cli import keys as keys_cli
    from cloud_hub.cli import quality as quality_cli
    from cloud_hub.cli import retrain as retrain_cli
    from cloud_hub.cli import rollout as rollout_cli
    from cloud_hub.cli import runtimes as runtimes_cli
    from cloud_hub.cli import shadow as shadow_cli
    from cloud_hub.cli import simulate as simulate_cli
    from cloud_hub.cli import store as store_cli
    from cloud_hub.cli.output import console, new_command, say, show
    from cloud_hub.cli.output import emit as _emit
    from cloud_hub.rollout.model_report import (
        card_rows,
        category_note,
        feature_rows,
        report_rows,
        verdict,
    )
    from converters.source import DEFAULT_CONTAMINATION, MAX_CONTAMINATION, QUANTIZE_MODES, TASKS
    from firmware_configs import DEFAULT_PROFILE
except ModuleNotFoundError as exc:  # the base install: `edgehub` says what to install, once
    MISSING: str | None = _hub_only(exc)
    if MISSING is None:
        raise
else:
    MISSING = None


def _home(args: argparse.Namespace) -> Path:
    return Path(args.home)


_fraction = number(float, "a number from 0 to 1", 0.0, 1.0)  # a threshold argument


# ---- commands -------------------------------------------------------------------------------
def cmd_model_convert(args: argparse.Namespace) -> int:
    from converters.categorical import TextsRefused
    from converters.images import image_items, image_spec
    from converters.inputs import data_like_header, load_model, load_table
    from converters.pipeline import STEPS, build_bundle
    from converters.runtimes.targets import profile_runtime
    from converters.windows import window_items, window_spec
    from edge_agent.protocol.input_spec import row_spec

    model = ModelRef.parse(f"{args.name}@{args.version}")
    target = profile_runtime(args.profile)  # said now, not after loading the model
    if Path(args.output).is_dir():
        raise ConfigError(
            f"-o {args.output}: expected a bundle file path "
            f"(e.g. {Path(args.output) / 'model.zip'}), got a directory"
        )
    blocked = next((p for p in Path(args.output).parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:  # said now, not after the conversion
        raise ConfigError(
            f"-o {args.output}: expected a bundle file path in a folder, but {blocked} is a file"
        )
    spec = None
    window_args = (args.channels, args.stride, args.rate, args.signal)
    if args.window is not None:
        if args.image is not None:
            raise ConfigError("--window and --image: expected one input kind, got both")
        if None in window_args[:3]:
            raise ConfigError(
                "--window: expected --channels, --stride and --rate with it "
                "(e.g. --channels ax,ay,az --window 128 --stride 64 --rate 50)"
            )
        spec = window_spec(args.channels, args.window, args.stride, args.rate, args.signal or ())
        if Path(args.sample).suffix != ".npy":
            raise ConfigError(
                f"{args.sample}: --window expects the training windows as a .npy array of "
                "shape (n, samples, channels)"
            )
    elif window_args != (None, None, None, None):
        raise ConfigError(
            "--channels, --stride, --rate and --signal describe a --window input; give --window"
        )
    if args.image is not None:
        spec = image_spec(args.image, args.scale, args.offset, args.resize)
        if Path(args.sample).suffix != ".npy":
            raise ConfigError(
                f"{args.sample}: --image expects the training images as a .npy array of "
                "pixels 0..255, shape (n, H, W) or (n, H, W, C)"
            )
    elif (args.scale, args.offset, args.resize) != (None, None, None):
        raise ConfigError("--scale, --offset and --resize describe an --image input; give --image")
    x, y, names, categories, first_texts = load_table(
        Path(args.sample), args.label, Path(args.labels) if args.labels else None
    )
    if spec is not None:
        try:
            x = window_items(x, spec) if spec.kind == "window" else image_items(x, spec)
        except EdgefleetError as exc:
            raise EdgefleetError(f"{args.sample}: {exc}") from exc
    elif categories and names is not None:  # text columns: a row of numbers and categories
        spec = row_spec(names, categories)
    if names is None and Path(args.sample).suffix == ".csv":
        print(
            f"edgehub: note: {args.sample} has no header row (its first row is all numbers): "
            f"read as data, the features named f0..f{x.shape[1] - 1}",
            file=sys.stderr,
        )
    # a text column makes a file without a header read its first row as one: say so
    hint = data_like_header(names)
    hinted = f" (hint: {hint})" if hint else ""
    err = Console(stderr=True)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,  # progress is for people watching, not for logs
    ) as bar:
        task = bar.add_task(f"loading {args.model}", total=len(STEPS) + 1)
        source = load_model(Path(args.model), args.task, target)

        def step(name: str) -> None:
            bar.update(task, advance=1, description=f"{model}: {name}")

        try:
            built = build_bundle(
                source,
                x,
                y,
                name=model.name,
                version=model.version,
                out=Path(args.output),
                quantize=args.quantize,
                feature_names=names,
                max_accuracy_drop=args.max_accuracy_drop,
                max_rmse_rel=args.max_rmse_rise,
                force=args.force,
                progress=step,
                contamination=args.contamination,
                threshold=args.threshold,
                input_spec=spec,
            )
        except TextsRefused as exc:  # a column of numbers with a text in it, most likely
            name, (line, text) = next(iter(first_texts.items()))
            raise EdgefleetError(
                f"{args.sample}:{line}, column {name!r}: expected a number, got {text!r} ({exc})"
                + hinted
            ) from exc
        except EdgefleetError as exc:
            raise EdgefleetError(f"{args.model} with {args.sample}: {exc}{hinted}") from exc
        bar.update(task, completed=len(STEPS) + 1)
    if hint:  # converted all the same: its features are named by the first row's values
        print(f"edgehub: note: {args.sample}: {hint}", file=sys.stderr)
    if categories:
        print(f"edgehub: note: {category_note(categories, built.card)}", file=sys.stderr)
    if args.json:
        print(json.dumps({"bundle": str(built.path), "report": built.report}, indent=2))
        return 0
    table = Table(title=f"{model} -> {built.path}")
    for col in ("check", "before", "after"):
        table.add_column(col)
    for row in report_rows(built.report):
        table.add_row(*row)
    show(table)
    console.print(verdict(built.report))
    return 0


def cmd_model_inspect(args: argparse.Namespace) -> int:
    from cloud_hub.rollout.operations import read_bundle_file

    card = read_bundle_file(Path(args.bundle)).card.raw
    if args.json:
        print(json.dumps(card, indent=2))
        return 0
    table = Table(title=f"model card of {args.bundle}", show_header=False)
    for row in card_rows(card):
        table.add_row(*row)
    show(table)
    features = Table(title="input features (drift reference)")
    for col in ("feature", "min", "max", "mean", "std", "missing"):
        features.add_column(col)
    for frow in feature_rows(card):
        features.add_row(*frow)
    show(features)
    report = card.get("validation", {})
    checks = Table(title="validation")
    for col in ("check", "before", "after"):
        checks.add_column(col)
    for rrow in report_rows(report):
        checks.add_row(*rrow)
    show(checks)
    if "parity" in report:
        console.print(verdict(report))
    return 0


def cmd_model_publish(args: argparse.Namespace) -> int:
    from cloud_hub.rollout.operations import publish_bundle

    model, path = publish_bundle(_home(args), Path(args.bundle))
    console.print(f"published {model} as signed target {path}")
    return 0


def cmd_model_list(args: argparse.Namespace) -> int:
    from cloud_hub.rollout.operations import open_repo

    rows = [
        {
            "target": path,
            "model": info.get("model"),
            "version": info.get("model_version"),
            "task": info.get("task", "-"),  # "-": published before targets named it
            "bytes": info["length"],
            "sha256": info["sha256"][:16],
        }
        for path, info in open_repo(_home(args)).targets().items()
        if "model" in info  # not the deltas between versions
    ]
    _emit(args, rows, "signed models", ["model", "version", "task", "bytes", "sha256", "target"])
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from cloud_hub.home_lock import own_home
    from cloud_hub.rollout.operations import open_repo

    identity = _broker_identity(args)
    open_repo(_home(args))  # no hub here: say so, rather than what SQLite thinks of the path
    # one hub per home, a second one fails now; hubs of one --share group may share it
    command = f"edgehub serve --share {args.share}" if args.share else "edgehub serve"
    with own_home(_home(args), command, shared=bool(args.share)):
        return _serve(args, *identity)


def _serve(args: argparse.Namespace, user: str | None, client_id: str) -> int:
    from cloud_hub.drift.source import PublishedCards
    from cloud_hub.ha_discovery import HaDiscovery
    from cloud_hub.hub import Hub
    from cloud_hub.ingest_limits import Limits
    from cloud_hub.quality.metrics import Floors
    from cloud_hub.web.api import WebAuth, create_app
    from cloud_hub.web.server import WebServer, load_token, parse_listen
    from edge_agent.mqtt.session import BrokerAddress

    listen = parse_listen(args.http) if args.http != "off" else None
    token, generated = load_token(os.environ, Path(args.token_file) if args.token_file else None)
    password = os.environ.get("EDGEHUB_BROKER_PASSWORD") if user else None
    broker = BrokerAddress(args.broker_host, args.broker_port, user, password)
    hub = Hub(
        _home(args),
        broker,
        args.prefix,
        client_id=client_id,
        share=args.share,
        retention_days=args.retention_days,
        limits=Limits(args.device_rate, 10 * args.device_rate, args.device_quota),
        accuracy_floors=Floors.parse(args.accuracy_floor or []),
        lead=not args.ingest_only,
        leader_timeout_s=args.leader_timeout,
    )
    ha = HaDiscovery(broker, hub.topics, args.ha_prefix) if args.ha_discovery else None
    web = None
    if listen is not None:
        app = create_app(hub.store, WebAuth(token, args.open_reads), PublishedCards(hub.repo))
        web = WebServer(app, *listen)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    where = f"{args.broker_host}:{args.broker_port}"
    say(f"hub {args.home}: connecting to broker {where}" + (f" as {user}" if user else ""))
    if web is not None:
        web.start()
        # a token the hub made up is shown once, in the link (a fragment: never sent to a server)
        link = f"{web.url}#token={token}" if generated else web.url
        console.print(f"dashboard on {link}", soft_wrap=True)
    if ha is not None:
        ha.start()
    console.file.flush()
    threading.Thread(  # after the lines above: it prints too
        target=_say_connected, args=(hub, stop, where, args.home), name="connected", daemon=True
    ).start()
    try:
        hub.run(stop)
    finally:
        for part in (ha, web):
            if part is not None:
                part.stop()
    return 0


def _broker_identity(args: argparse.Namespace) -> tuple[str | None, str]:
    """(broker username, client id) of this hub: `--worker NAME` logs in as `edgehub-NAME`
    with that client id, unless `--broker-user` / `--client-id` say otherwise."""
    from cloud_hub.broker.identity import HUB_USER, worker_user

    user = args.broker_user or (worker_user(args.worker) if args.worker is not None else None)
    client_id = args.client_id if args.client_id is not None else user or HUB_USER
    if not client_id or not client_id.isprintable() or any(c.isspace() for c in client_id):
        raise ConfigError(
            f"--client-id: expected a name without spaces or control characters, got {client_id!r}"
        )
    return user, client_id


def _say_connected(hub: Any, stop: threading.Event, where: str, home: str) -> None:
    """Say "serving" once the hub's broker connection is up (not before: a broker that is not
    there is said by the session itself, with the error, while it retries)."""
    while not stop.is_set():
        if hub.session.connected.wait(0.5):
            say(f"hub {home}: connected to broker {where}; serving")
            console.file.flush()
            return


def cmd_demo(args: argparse.Namespace) -> int:
    from cloud_hub.harness.demo import DemoOptions, run_demo

    opts = DemoOptions(seconds=args.seconds, broker=args.broker, keep=args.keep, http=args.http)
    if os.environ.pop(STORE_ENV, None) is not None:  # for its processes too: they inherit it
        say(f"demo: its hub keeps its own SQLite store in its folder, not {STORE_ENV}'s")
    if args.loop:
        from cloud_hub.harness.loop import run_loop

        return run_loop(opts)
    return run_demo(opts)


_positive_days = number(
    float, "a positive number of days", 0, above=True, finite="a positive number of days"
)


# ---- parser ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgehub", description="edgefleet hub: sign and roll out models"
    )
    p.add_argument("--version", action="version", version=f"edgehub {__version__}")
    _global_options(p, False)
    sub = p.add_subparsers(dest="command", required=True)

    def add(
        parent: Any,
        name: str,
        fn: Callable[[argparse.Namespace], int],
        help: str,
        json_out: bool = False,
    ) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        if json_out:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp

    keys_cli.register(sub, add)
    shadow_cli.register(sub, add)
    drift_cli.register(sub, add)
    quality_cli.register(sub, add)
    simulate_cli.register(sub, add)
    runtimes_cli.register(sub, add)
    store_cli.register(sub, add)

    model = sub.add_parser("model", help="signed model bundles").add_subparsers(
        dest="sub", required=True
    )
    sp = add(
        model,
        "convert",
        cmd_model_convert,
        "trained model -> quantized, validated bundle",
        json_out=True,
    )
    sp.add_argument(
        "model",
        help="a scikit-learn estimator (.joblib, .pkl), a Keras model (.keras), .onnx or .tflite",
    )
    sp.add_argument(
        "--sample",
        required=True,
        help=".csv (a first row of numbers only is data: no header, features f0, f1, ...) or .npy",
    )
    sp.add_argument(
        "--label",
        help="the CSV column holding the labels or targets: its name, or its index from 0 "
        "when the CSV has no header",
    )
    sp.add_argument("--labels", help="a .npy file of labels, for .npy samples")
    sp.add_argument("--name", required=True, help="model name, e.g. tumor")
    sp.add_argument("--version", required=True, help="model version, an integer >= 1")
    sp.add_argument(
        "--quantize",
        choices=QUANTIZE_MODES,
        default="dynamic",
        help="int8 weights (dynamic), int8 calibrated on the sample (static), float16 "
        "(Keras only) or none",
    )
    sp.add_argument(
        "--task",
        choices=list(TASKS),
        help="for .onnx/.tflite/.keras files whose outputs do not say (anomaly: the one output "
        "is a score, higher = more anomalous)",
    )
    cut = sp.add_mutually_exclusive_group()
    cut.add_argument(
        "--contamination",
        type=number(
            float,
            f"a share above 0 and at most {MAX_CONTAMINATION}",
            0,
            MAX_CONTAMINATION,
            above=True,
        ),
        help="anomaly models: flag this share of the sample's rows (the threshold is that "
        "quantile of their scores; default: an outlier detector's own threshold, else "
        f"{DEFAULT_CONTAMINATION})",
    )
    cut.add_argument(
        "--threshold",
        type=number(float, "a number", finite="a finite number"),
        help="anomaly models: a score above this is an anomaly",
    )
    sp.add_argument(
        "--max-accuracy-drop",
        type=_fraction,
        default=0.01,
        help="fail when accuracy drops by more (0.01 = 1 point)",
    )
    sp.add_argument(
        "--max-rmse-rise",
        type=_fraction,
        default=0.01,
        help="fail when RMSE rises by more, relative (0.01 = 1%%)",
    )
    sp.add_argument("--force", action="store_true", help="write the bundle even if parity fails")
    sp.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        help="the device profile (firmware_configs/) the bundle is for: a TFLite model is "
        "validated on the TFLite runtime it names ([runtime] tflite), in an op set that "
        f"runtime loads (default: {DEFAULT_PROFILE})",
    )
    sp.add_argument(
        "--image",
        metavar="HxWxC",
        help="an image model: it takes H x W images of C channels (1 gray, 3 RGB), e.g. 8x8x1; "
        "--sample is then a .npy of pixels 0..255, shape (n, H, W) or (n, H, W, C), resized "
        "and scaled as the device will",
    )
    sp.add_argument(
        "--scale",
        type=float,
        help="with --image: the model takes pixel * SCALE + OFFSET (default 1/255)",
    )
    sp.add_argument("--offset", type=float, help="with --image: see --scale (default 0)")
    sp.add_argument(
        "--resize",
        choices=["bilinear", "nearest"],
        help="with --image: how a device resizes other sizes to H x W (default bilinear)",
    )
    sp.add_argument(
        "--window",
        type=number(int, "a whole number from 1", 1),
        metavar="SIZE",
        help="a window model: it takes SIZE samples of --channels (one sensor line each); "
        "--sample is then a .npy of raw windows, shape (n, SIZE, channels)",
    )
    sp.add_argument(
        "--stride",
        type=number(int, "a whole number from 1", 1),
        help="with --window: a device frames a window every STRIDE samples",
    )
    sp.add_argument(
        "--rate",
        type=number(float, "a positive number", 0, above=True, finite="a finite number"),
        metavar="HZ",
        help="with --window: the sample rate the model was trained at",
    )
    sp.add_argument(
        "--channels",
        type=name_list,
        metavar="NAMES",
        help="with --window: the channels of a sample line, e.g. ax,ay,az (JSON lines' keys)",
    )
    sp.add_argument(
        "--signal",
        type=name_list,
        metavar="NAMES",
        help="with --window: the model takes these signal features of each channel, computed "
        "from the windows by edge_agent.signal, e.g. mean,rms,band_power:0-5 (mean, std, rms, "
        "min, max, ptp, band_power:LO-HI in Hz); without it, the windows themselves",
    )
    sp.add_argument("-o", "--output", required=True, help="the bundle to write (.zip)")
    sp = add(model, "publish", cmd_model_publish, "sign a bundle into the TUF repository")
    sp.add_argument("bundle")
    add(model, "list", cmd_model_list, "list signed models", json_out=True)
    sp = add(model, "inspect", cmd_model_inspect, "show a bundle's card and report", json_out=True)
    sp.add_argument("bundle")
    retrain_cli.add_lineage(model, add)

    fleet_cli.register(sub, add)

    sp = add(
        sub,
        "serve",
        cmd_serve,
        "run the hub: ingest, TUF publication, transfers, rollouts, dashboard",
    )
    sp.add_argument("--broker-host", default="127.0.0.1")
    sp.add_argument("--broker-port", type=int, default=1883)
    sp.add_argument("--prefix", default="edgefleet", help="topic prefix")
    sp.add_argument(
        "--share",
        metavar="GROUP",
        help="subscribe to device topics as MQTT shared-subscription group GROUP, so several "
        "hubs split the ingest",
    )
    sp.add_argument(
        "--retention-days",
        type=_positive_days,
        help="remove device records older than this many days (default: keep everything)",
    )
    sp.add_argument(
        "--device-rate",
        type=number(float, "a number of 0 or more", 0, finite="a number of 0 or more"),
        default=100.0,
        metavar="MSGS",
        help="messages a second one device may send on average, ten times that at once; "
        "past it they are refused, counted and sent again by the device (0: no limit; "
        "default 100)",
    )
    sp.add_argument(
        "--device-quota",
        type=number(int, "a whole number of 0 or more", 0),
        default=5_000_000,
        metavar="RECORDS",
        help="records the hub stores of one device; past it new ones are refused and counted, "
        "never another device's removed (0: no quota; default 5000000; see --retention-days)",
    )
    sp.add_argument(
        "--http",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="serve the dashboard, JSON API and /metrics here (port 0: any free port; off: none)",
    )
    sp.add_argument(
        "--token-file",
        help="a file holding the dashboard's bearer token (default: $EDGEHUB_TOKEN, else a "
        "new one shown in the printed link)",
    )
    sp.add_argument(
        "--open-reads",
        action="store_true",
        help="let anyone who can reach --http read the dashboard, API and metrics; writes "
        "(pause, abort, rollback) still need the token",
    )
    sp.add_argument(
        "--ha-discovery",
        action="store_true",
        help="announce each device's sensors to Home Assistant (MQTT discovery)",
    )
    sp.add_argument("--ha-prefix", default="homeassistant", help="Home Assistant's topic prefix")
    quality_cli.floor_option(sp, "log once when a model version falls below it")
    sp.add_argument(
        "--broker-user",
        help="the hub's username from `edgehub broker-config` (password: env "
        "EDGEHUB_BROKER_PASSWORD)",
    )
    sp.add_argument(
        "--ingest-only",
        action="store_true",
        help="never lead: ingest, serve transfers and the dashboard only (needs no signing "
        "key); without it a worker competes for the lead (rollouts, experiments, retraining, "
        "commands, TUF publication), one at a time",
    )
    sp.add_argument(
        "--leader-timeout",
        type=number(
            float,
            f"a number of seconds of {MIN_LEADER_TIMEOUT_S:g} or more",
            MIN_LEADER_TIMEOUT_S,
            finite="a number of seconds",
        ),
        default=LEADER_TIMEOUT_S,
        metavar="S",
        help="on PostgreSQL: a leading worker silent this long (hung, stopped) has its "
        f"database session ended by a worker that asks for the lead (default {LEADER_TIMEOUT_S:g})",
    )
    sp.add_argument(
        "--worker",
        metavar="NAME",
        help="run as hub worker NAME: broker user and client id edgehub-NAME (from "
        "`edgehub broker-config --worker NAME`); with --share GROUP, workers split the ingest",
    )
    sp.add_argument(
        "--client-id",
        metavar="ID",
        help="the MQTT client id (default: the broker user, else edgehub); a broker written by "
        "`edgehub broker-config` sets it to the username whatever is asked",
    )

    rollout_cli.register(sub, add)
    experiment_cli.register(sub, add)
    retrain_cli.register(sub, add)
    broker_cli.register(sub, add)

    sp = add(
        sub,
        "demo",
        cmd_demo,
        "the whole loop on this machine: train, sign, roll out, drift, tamper",
    )
    sp.add_argument(
        "--seconds", type=float, default=6.0, help="how long each phase feeds sensor data"
    )
    sp.add_argument("--broker", choices=["auto", "mosquitto", "amqtt"], default="auto")
    sp.add_argument("--keep", action="store_true", help="keep the demo's working folder")
    sp.add_argument(
        "--loop",
        action="store_true",
        help="the closed loop instead: accuracy falls on labels, a policy retrains, the new "
        "model is validated, shadowed, rolled out and recovers",
    )
    sp.add_argument(
        "--http",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="where the demo serves the dashboard (another free port if this one is taken)",
    )
    add_completion(sub, "edgehub", build_parser)
    accept_everywhere(p, _global_options)
    return p


def _global_options(p: argparse.ArgumentParser, below: bool) -> None:
    """--home and -v, before the subcommand or after it (`below`: defaults left to the top)."""
    p.add_argument(
        "--home",
        default=argparse.SUPPRESS if below else os.environ.get("EDGEHUB_HOME", "edgehub-home"),
        help="hub folder: keys, TUF repository, database (env EDGEHUB_HOME)",
    )
    p.add_argument(
        "--store",
        metavar="URL",
        default=argparse.SUPPRESS if below else os.environ.get("EDGEHUB_STORE"),
        help="the hub's database, e.g. postgresql+psycopg://user@host/edgehub "
        "(env EDGEHUB_STORE; default: hub.sqlite in the home)",
    )
    add_verbose(p, below, "the hub")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if MISSING is not None:  # the base install
        if argv == ["--version"]:
            print(f"edgehub {__version__}")
            return 0
        print(missing_extra(MISSING), file=sys.stderr)
        return 1
    args = build_parser().parse_args(argv)
    if args.store:  # one way for every command to reach it, and whatever it starts
        os.environ[STORE_ENV] = args.store
    new_command()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        code = int(args.fn(args))
        sys.stdout.flush()  # here, where a reader gone away is heard, not at exit
        return code
    except BrokenPipeError:  # the reader closed the pipe (`| head`, `| grep -q`): it has enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except EdgefleetError as exc:
        print(f"edgehub: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgehub: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:  # a command's own import of a hub-only module
        missing = _hub_only(exc)
        if missing is None:
            raise
        print(missing_extra(missing), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
