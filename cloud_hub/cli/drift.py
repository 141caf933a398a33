"""`edgehub drift`: drift reports per model version and device, and the inputs captured on alerts.

edgehub drift [--model NAME[@VERSION]] [--device ID] [--json]
edgehub drift --fleet [--since 24h] [--model ...] [--group NAME] [--tag NAME] [--json]
edgehub drift captures --csv FILE [--model ...] [--device ...]   (categories as their texts)

`--fleet` adds up the devices' window counts per model version and cohort (the fleet, each
group, each tag) over the time range and tests them against the card (cloud_hub.drift.fleet).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from cloud_hub.cli.args import duration, span
from cloud_hub.cli.output import accuracy_text, anomalies_text, console, p_text, say, show
from edge_agent.errors import ConfigError

if TYPE_CHECKING:
    from cloud_hub.drift.source import PublishedCards

AddCommand = Callable[..., argparse.ArgumentParser]
MOVED_SHOWN = 4  # features named per row in the table (all of them in --json)


def _store(args: argparse.Namespace) -> Any:
    from cloud_hub.store.url import existing_store

    return existing_store(Path(args.home))


def cmd_drift(args: argparse.Namespace) -> int:
    from cloud_hub.drift.source import model_filter
    from cloud_hub.store.database import drift_summary

    if args.fleet:
        return cmd_drift_fleet(args)
    if args.since is not None or args.group or args.tag:
        raise ConfigError("--since, --group and --tag go with --fleet (drift merged per cohort)")
    if args.model:
        model_filter(args.model)  # a wrong one says so, rather than matching nothing
    rows = drift_summary(_store(args), args.model, args.device)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="drift per model version and device")
    columns = ("model", "device", "windows", "warn/alert", "status", "p/min p", "accuracy")
    scored = any(r["anomalies"] for r in rows)  # an anomaly model among them
    texts = any(r["unknown"] for r in rows)  # a model with categorical features among them
    extra = [*(["anomalies"] if scored else []), *(["unknown texts"] if texts else [])]
    for col in (*columns, *extra, "moved"):
        table.add_column(col)
    for r in rows:
        moved = [f"{name} ({n})" for name, n in list(r["moved"].items())[:MOVED_SHOWN]]
        more = len(r["moved"]) - MOVED_SHOWN
        table.add_row(
            f"{r['model']}@{r['version']}",
            r["device"],
            str(r["windows"]),
            f"{r['warn']}/{r['alert']}",
            r["status"],
            f"{p_text(r['p'])}/{p_text(r['min_p'])}",
            accuracy_text(r["accuracy"]),
            *([anomalies_text(r["anomalies"])] if scored else []),
            *([unknown_text(r["unknown"])] if texts else []),
            ", ".join(moved) + (f" +{more} more" if more > 0 else "") or "-",
        )
    show(table)
    if not rows:
        console.print("no drift reports yet", markup=False)
    elif texts:
        say("unknown texts: rows per feature whose text the card does not list, all windows")
    return 0


def unknown_text(unknown: dict[str, int]) -> str:
    """Per categorical feature, the rows whose text the card does not list: "cellar 20"."""
    return ", ".join(f"{name} {n}" for name, n in unknown.items()) or "-"


def cmd_drift_fleet(args: argparse.Namespace) -> int:
    from cloud_hub.drift.source import (
        FleetQuery,
        PublishedCards,
        check_model_known,
        cohort_names,
        read_fleet_drift,
    )
    from cloud_hub.signing.tuf_repo import TufRepository

    if args.device:
        raise ConfigError("--device: --fleet merges every device; leave --device out")
    store = _store(args)
    cards = PublishedCards(TufRepository(Path(args.home)))
    wanted = cohort_names(args.group or [], args.tag or []) if args.group or args.tag else None
    since = 24 * 3600.0 if args.since is None else args.since
    result = read_fleet_drift(store, cards, FleetQuery(since, args.model, wanted))
    rows = result["rows"]
    if args.model and not rows:
        check_model_known(cards, store, args.model)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    last = span(since)
    table = Table(title=f"drift merged per model version and cohort, last {last}")
    columns = ("model", "cohort", "devices", "windows", "rows", "p", "status", "accuracy")
    scored = any(r["anomalies"] for r in rows)  # an anomaly model among them
    for col in (*columns, *(["anomalies"] if scored else []), "worst"):
        table.add_column(col, no_wrap=col in ("model", "cohort", "p", "status"))
    for r in rows:
        table.add_row(
            f"{r['model']}@{r['version']}",
            r["cohort"],
            str(r["devices"]),
            str(r["windows"]),
            str(r["rows"]),
            p_text(r["p"]),
            r["status"],
            accuracy_text(r["accuracy"]),
            *([anomalies_text(r["anomalies"])] if scored else []),
            ", ".join(r["worst"]) or "-",
        )
    show(table)
    for r in rows:
        if r["cohort"] != "fleet":
            continue
        skipped = [f"{n} windows skipped ({why})" for why, n in r["skipped"].items()]
        reference = [f"reference of {r['reference_rows']} rows"] if r["reference_rows"] else []
        say(
            f"{r['model']}@{r['version']}: "
            + "; ".join([r["note"]] if r["note"] else reference + skipped)
        )
    if not rows:
        say(f"no drift reports{f' of {args.model}' if args.model else ''} in the last {last}")
    elif any(r["rows"] > r["reference_rows"] > 0 for r in rows):
        say(
            "merged rows beyond the card's reference rows add little power: the reference "
            "size bounds the smallest shift the fleet can find"
        )
    return 0


def cmd_drift_captures(args: argparse.Namespace) -> int:
    from cloud_hub.drift.source import PublishedCards
    from cloud_hub.signing.tuf_repo import TufRepository
    from cloud_hub.store.database import drift_captures

    rows = drift_captures(_store(args), args.model, args.device)
    notes = captured_texts(rows, PublishedCards(TufRepository(Path(args.home))))
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
    for note in notes:
        say(f"note: {note}")
    return 0


def captured_texts(rows: list[dict[str, Any]], cards: PublishedCards) -> list[str]:
    """Each captured row's categorical values (codes, as the device sent them) as their texts,
    in place, by its model version's card (a text the card does not list is an empty cell,
    as in the hub's data sets). What cannot be read so (no card) stays as sent: the notes say
    which versions."""
    from edge_agent.protocol.input_spec import category_text
    from edge_agent.protocol.messages import ModelRef

    versions = {(r["model"], r["version"]) for r in rows if r["model"] != "?"}
    found, problems = cards.lookup(ModelRef(name, version) for name, version in sorted(versions))
    for row in rows:
        card = found.get(ModelRef(row["model"], row["version"])) if row["model"] != "?" else None
        cats = card.input.categories if card is not None and card.input.kind == "row" else {}
        for name, texts in cats.items():
            if name in row:
                row[name] = category_text(texts, row[name])
    return [f"{why}: its rows are written as the devices sent them" for why in problems.values()]


def _filters(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--model", help="only this model (NAME or NAME@VERSION)")
    sp.add_argument("--device", help="only this device id")


def register(sub: Any, add: AddCommand) -> argparse.ArgumentParser:
    """`edgehub drift ...` under the top-level subparsers `sub`, with cli.build_parser's `add`."""
    drift = add(sub, "drift", cmd_drift, "drift reports per model version and device", True)
    _filters(drift)
    drift.add_argument(
        "--fleet",
        action="store_true",
        help="merge the devices' windows per model version and cohort (fleet, groups, tags) "
        "and test them against the card: finds a shift too small for any one window",
    )
    drift.add_argument(
        "--since",
        type=duration,
        metavar="DURATION",
        help="with --fleet: reports received in the last 30m, 1h, 24h (default), 168h ...",
    )
    drift.add_argument(
        "--group", action="append", metavar="NAME", help="with --fleet: show this group"
    )
    drift.add_argument("--tag", action="append", metavar="NAME", help="with --fleet: show this tag")
    inner = drift.add_subparsers(dest="sub", required=False)
    sp = add(inner, "captures", cmd_drift_captures, "export the inputs captured on drift alerts")
    sp.add_argument("--csv", required=True, help="write the captured rows to this CSV file")
    _filters(sp)
    return drift
