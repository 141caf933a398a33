"""`edgehub labels import` and `edgehub metrics`: ground truth in, model quality out.

edgehub labels import FILE.csv        # columns prediction,label; bad lines named, the rest kept
edgehub metrics [--model NAME[@VERSION]] [--since 24h] [--by version|device|cohort]
                [--bucket 1h] [--accuracy-floor [MODEL=]SHARE] [--json]

The joining is the store's (cloud_hub.quality.ledger), the numbers cloud_hub.quality.metrics'.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.table import Table

from cloud_hub.cli.args import duration, span
from cloud_hub.cli.output import say, show
from edge_agent.errors import ConfigError, MessageError

AddCommand = Callable[..., argparse.ArgumentParser]
COLUMNS = ("prediction", "label")
IMPORT_CHUNK = 10_000  # labels stored in one transaction
SHOWN_ERRORS = 50  # bad lines named one by one; past it only counted


def _store(args: argparse.Namespace) -> Any:
    from cloud_hub.store.database import Store, default_url

    home = Path(args.home)
    if not (home / "hub.sqlite").exists():
        raise ConfigError(f"--home {home}: expected a hub folder (edgehub keys init), found none")
    return Store(default_url(home))


# ---- labels import ------------------------------------------------------------------------------
def read_labels(path: Path) -> Iterator[tuple[int, tuple[str, Any], str | None]]:
    """(line number, (prediction id, label), what is wrong or None) for each line of a CSV of
    prediction,label rows; a bad line's pair is what the store counts as malformed. ConfigError
    when the file cannot be read or its header is not prediction,label."""
    from cloud_hub.quality.labels import label_from_text
    from edge_agent.protocol.ids import parse_prediction_id

    try:
        fh = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"labels import {path}: expected a file of prediction,label rows, got {exc.strerror}"
        ) from exc
    with fh:
        try:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise ConfigError(
                    f"{path}: expected a header line prediction,label, got an empty file"
                )
            names = [h.strip().lower() for h in header]
            if sorted(names) != sorted(COLUMNS):
                raise ConfigError(
                    f"{path}:1: expected columns prediction,label, got {','.join(header)[:80]}"
                )
            at_id, at_label = names.index("prediction"), names.index("label")
            for fields in reader:
                line = reader.line_num
                if not fields:
                    continue
                if len(fields) != 2:
                    error = f"expected 2 fields (prediction,label), got {len(fields)}"
                    yield line, (",".join(fields), None), error
                    continue
                text = fields[at_id].strip()
                label = label_from_text(fields[at_label])
                try:
                    parse_prediction_id(text, "prediction")
                except MessageError as exc:
                    yield line, (text, label), str(exc)
                    continue
                if label is None:
                    error = (
                        "label: expected a class label or a finite number, "
                        f"got {fields[at_label]!r:.40}"
                    )
                    yield line, (text, None), error
                    continue
                yield line, (text, label), None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: expected UTF-8 text, got undecodable bytes") from exc
        except csv.Error as exc:
            raise ConfigError(f"{path}:{reader.line_num}: not CSV ({exc})") from exc


def cmd_labels_import(args: argparse.Namespace) -> int:
    """Every line goes to the store (a bad one is counted there as malformed); bad lines are
    also named here, one line each, and make the exit status 1."""
    import sys

    from cloud_hub.quality.labels import FROM_CSV

    store = _store(args)
    path = Path(args.file)
    outcomes: Counter[str] = Counter()
    pending: list[tuple[str, Any]] = []
    bad = 0
    for line, pair, error in read_labels(path):
        if error is not None:
            bad += 1
            if bad <= SHOWN_ERRORS:
                print(f"{path}:{line}: {error}", file=sys.stderr)
        pending.append(pair)
        if len(pending) >= IMPORT_CHUNK:
            outcomes.update(store.add_labels(pending, FROM_CSV, time.time()))
            pending = []
    if pending:
        outcomes.update(store.add_labels(pending, FROM_CSV, time.time()))
    if bad > SHOWN_ERRORS:
        print(f"{path}: {bad - SHOWN_ERRORS} more bad lines", file=sys.stderr)
    if args.json:
        print(json.dumps({"outcomes": dict(outcomes), "bad_lines": bad}, indent=2))
    else:
        kept = sum(outcomes[k] for k in ("joined", "late", "partial"))
        say(f"{path}: {kept} labels kept ({outcome_text(outcomes) or 'none'})")
    return 1 if bad else 0


def outcome_text(counts: dict[str, int] | Counter[str]) -> str:
    from cloud_hub.quality.labels import OUTCOMES

    return ", ".join(f"{counts[k]} {k}" for k in OUTCOMES if counts.get(k))


# ---- metrics ----------------------------------------------------------------------------------
def interval_text(interval: dict[str, Any] | None) -> str:
    """`0.973 [0.933, 0.990]`; "-" for none."""
    if not interval:
        return "-"
    low, high = interval["low"], interval["high"]
    if low is None or high is None:
        return f"{interval['value']:.3f}"
    return f"{interval['value']:.3f} [{low:.3f}, {high:.3f}]"


def cmd_metrics(args: argparse.Namespace) -> int:
    from cloud_hub.drift.source import PublishedCards
    from cloud_hub.quality.metrics import Floors
    from cloud_hub.quality.report import MetricsQuery, quality_report, stored_floors
    from cloud_hub.signing.tuf_repo import TufRepository

    store = _store(args)
    query = MetricsQuery(args.since, args.model, args.by, args.bucket)
    floors = Floors.parse(args.accuracy_floor) if args.accuracy_floor else stored_floors(store)
    report = quality_report(store, PublishedCards(TufRepository(Path(args.home))), query, floors)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    rows = report["rows"]
    regression = any(r["task"] == "regression" for r in rows)
    # an anomaly model's flags get a classifier's columns (precision, recall, F1 of the anomalies)
    classification = any(r["task"] in ("classification", "anomaly") for r in rows) or not rows
    last = span(args.since)
    table = Table(title=f"model quality from labels of the last {last}, by {args.by} (95% CI)")
    columns = ["model", args.by if args.by != "version" else "fleet"]
    columns += ["bucket"] if args.bucket else []
    columns += ["labels"]
    if classification:
        columns += ["accuracy", "precision", "recall", "f1", "floor", "alert"]
    if regression:
        columns += ["rmse", "mae"]
    for i, col in enumerate(columns):
        table.add_column(col, no_wrap=i < 2)
    for r in rows:
        cells = [f"{r['model']}@{r['version']}", r["group"]]
        if args.bucket:
            cells.append(time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["bucket"])))
        cells.append(str(r["labels"]))
        if classification:
            cells += [interval_text(r[m]) for m in ("accuracy", "precision", "recall", "f1")]
            floor = "-" if r["floor"] is None else f"{r['floor']:g}"
            cells += [floor, "ALERT" if r["alert"] else ""]
        if regression:
            cells += [interval_text(r[m]) for m in ("rmse", "mae")]
        table.add_row(*cells)
    show(table)
    if not rows:
        say(f"no labels joined to predictions in the last {last}")
    for model in report["alerts"]:
        say(
            f"ALERT {model}: the accuracy is below its floor (the upper end of its 99% "
            "interval is under it)"
        )
    counts = report["labels"]["counts"]
    for source in sorted(counts):
        say(f"labels from {source}: {outcome_text(counts[source])}")
    states = report["labels"]["states"]
    if states.get("pending"):
        say(f"{states['pending']} labels wait for their prediction's window (late)")
    return 0


def floor_option(sp: argparse.ArgumentParser, what: str) -> None:
    sp.add_argument(
        "--accuracy-floor",
        action="append",
        metavar="[MODEL=]SHARE",
        help=f"{what}: a classifier whose accuracy is surely below SHARE (the upper end of its "
        "99%% interval under it) alerts; MODEL or MODEL@VERSION= for one model (repeatable)",
    )


def register(sub: Any, add: AddCommand) -> None:
    """`edgehub labels ...` and `edgehub metrics` under the top-level subparsers `sub`."""
    labels = sub.add_parser("labels", help="ground truth for predictions").add_subparsers(
        dest="sub", required=True
    )
    sp = add(
        labels,
        "import",
        cmd_labels_import,
        "import labels from a CSV file with columns prediction,label (prediction: the "
        "prediction id DEVICE/BOOT/ROW)",
        json_out=True,
    )
    sp.add_argument("file", metavar="FILE.csv")
    sp = add(
        sub,
        "metrics",
        cmd_metrics,
        "model quality from labels: accuracy, precision, recall, F1 or RMSE, MAE with "
        "confidence intervals, per model version, device or cohort",
        json_out=True,
    )
    sp.add_argument("--model", help="only this model (NAME or NAME@VERSION)")
    sp.add_argument(
        "--since",
        type=duration,
        default=24 * 3600.0,
        metavar="DURATION",
        help="labels received in the last 30m, 1h, 24h (default), 168h ...",
    )
    sp.add_argument(
        "--by",
        choices=["version", "device", "cohort"],
        default="version",
        help="one row per model version (the fleet), per device, or per cohort (fleet, "
        "each group, each tag)",
    )
    sp.add_argument(
        "--bucket",
        type=duration,
        metavar="DURATION",
        help="also one row per bucket of this length of prediction time (e.g. 1h)",
    )
    floor_option(sp, "instead of the running hub's floors (edgehub serve --accuracy-floor)")
