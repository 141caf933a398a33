"""`edgehub devices enroll|list|show|tag|untag|group|remove`: the device registry.

The registry is fed by what devices say (their retained status at birth and every heartbeat,
the broker's last will when they vanish) and by what people set: tags and one group per device,
which rollouts target (`--target tag:cam`, `--target group:lab`).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table

from cloud_hub.cli.output import emit, say, show, when
from edge_agent.errors import STORAGE_REASONS, ConfigError

AddCommand = Callable[..., argparse.ArgumentParser]
COLUMNS = [
    "device",
    "online",
    "model",
    "profile",
    "group",
    "tags",
    "inferences",
    "refused",
    "storage",
    "input",
    "last_seen",
]
# left out of the table (never out of --json) while every listed device is fine there ("-", "ok")
QUIET_COLUMNS = ("refused", "storage", "input")
FINE = ("-", "ok")


def _store(args: argparse.Namespace) -> Any:
    from cloud_hub.rollout.operations import open_repo
    from cloud_hub.store.database import Store
    from cloud_hub.store.url import store_url

    open_repo(Path(args.home))  # no hub here: say so, rather than what SQLite thinks of the path
    return Store(store_url(Path(args.home)))


def _row(d: dict[str, Any]) -> dict[str, Any]:
    from cloud_hub.store.database import stats_of  # the store's stack, when read
    from cloud_hub.web.views import device_storage, input_view

    stats = stats_of(d)
    return {
        "device": d["id"],
        "online": d["online"],
        "model": f"{d['model']}@{d['version']}" if d["model"] else "-",
        "profile": d["profile"],
        "group": d["group"],
        "tags": ",".join(d["tags"] or []),
        "inferences": stats.inferences,
        "refused": refused_text(d.get("refused") or {}),
        "storage": device_storage(stats),
        **input_view(d),  # "input": the phrase; "inputs": each source, in --json
        "last_seen": when(d["last_seen"]),
    }


def refused_text(refused: dict[str, int]) -> str:
    """What the hub refused of a device: `rate 120, quota 3` (messages past its rate, records
    past its quota), or `-`."""
    return ", ".join(f"{reason} {n}" for reason, n in sorted(refused.items()) if n) or "-"


def storage_text(storage: dict[str, Any] | None, detail: bool = False) -> str:
    """The storage cell: "ok", or what is wrong, and how many records were not kept; with
    `detail`, since when and what the device said."""
    if storage is None:
        return "-"  # an agent that does not report it
    unkept = sum(storage["unkept"].values())
    lost = f", {unkept} unkept" if unkept else ""
    if storage["ok"]:
        return f"ok{lost}"
    why = ", ".join(STORAGE_REASONS.get(r, r) for r in storage["reasons"]) or "failing"
    if not detail:
        return f"{why}{lost}"
    return f"{why} since {when(storage['since'] or 0)}{lost} ({storage['error']})"


def _for_table(row: dict[str, Any], detail: bool = False) -> dict[str, Any]:
    return {**row, "storage": storage_text(row["storage"], detail)}


def _known(store: Any, device: str) -> dict[str, Any]:
    found: dict[str, Any] | None = store.device(device)
    if found is None:
        raise ConfigError(
            f"no device {device!r} in the registry; `edgehub devices list` shows them, "
            "`edgehub devices enroll` adds one"
        )
    return found


def _labels(values: list[str]) -> list[str]:
    from cloud_hub.rollout.engine import check_label

    return [check_label(v, "tag") for v in values]


def cmd_devices_enroll(args: argparse.Namespace) -> int:
    from cloud_hub.rollout.operations import enroll_device

    public = enroll_device(
        Path(args.home),
        args.device_id,
        Path(args.state_dir),
        Path(args.public) if args.public else None,
    )
    say(f"{args.device_id}: trusted root written to {args.state_dir}/tuf/root.json")
    if public is not None:
        say(f"{args.device_id}: public key registered; encrypted rollouts can reach it")
    return 0


def cmd_devices_list(args: argparse.Namespace) -> int:
    from cloud_hub.rollout.engine import check_label

    if args.group:
        check_label(args.group, "--group")
    wanted_tags = _labels(args.tag or [])
    model = args.model
    rows = []
    for d in _store(args).devices():
        if (args.online and not d["online"]) or (args.offline and d["online"]):
            continue
        if args.group and d["group"] != args.group:
            continue
        if not set(wanted_tags) <= set(d["tags"] or []):
            continue
        running = f"{d['model']}@{d['version']}" if d["model"] else ""
        if model and model not in (d["model"], running):
            continue
        rows.append(_row(d))
    if args.json:
        emit(args, rows, "devices", COLUMNS)
        return 0
    cells = [_for_table(r) for r in rows]
    shown = [c for c in COLUMNS if c not in QUIET_COLUMNS or any(r[c] not in FINE for r in cells)]
    emit(args, cells, "devices", shown)
    return 0


def cmd_devices_show(args: argparse.Namespace) -> int:
    from cloud_hub.store.database import stats_of

    store = _store(args)
    d = _known(store, args.device_id)
    if not args.events.isdigit() or int(args.events) > 1000:
        raise ConfigError(f"--events: expected a count from 0 to 1000, got {args.events!r}")
    recent = (
        store.records("events", args.device_id)[-int(args.events) :] if args.events != "0" else []
    )
    events = [{"ts": r.ts, **r.body} for r in recent]
    if args.json:
        body = {k: v for k, v in d.items() if k != "public_key"}
        body["encrypted_transfers"] = d["public_key"] is not None
        print(json.dumps({**body, "events": events}, indent=2, default=str))
        return 0
    table = Table(title=f"device {d['id']}", show_header=False)
    since = f" (since {when(d['online_since'])})" if d["online"] else ""
    ago = f", {time.time() - d['last_seen']:.0f} s ago" if d["last_seen"] else ""
    fields: dict[str, str] = {}
    for key, value in _for_table(_row(d), detail=True).items():
        if key == "inputs":  # one line per source, after the phrase
            states = stats_of(d).inputs
            fields.update({f"input {state.name}": state.detail() for state in states})
        elif key != "device":
            fields[key] = str(value)
    fields |= {
        "online": f"{'yes' if d['online'] else 'no'}{since}",
        "last_seen": f"{when(d['last_seen'])}{ago}",
        "boot": str(d["boot"]),
        "agent": d["agent_version"],
        "encrypted transfers": "yes" if d["public_key"] else "no (no public key enrolled)",
        "stats": json.dumps(d["stats"] or {}),
    }
    for key, value in fields.items():
        table.add_row(key, value)
    show(table)
    if events:
        history = Table(title="recent events")
        for col in ("when", "event", "model", "rollout", "reason"):
            history.add_column(col)
        for e in events:
            m = e.get("model") or {}
            history.add_row(
                when(e["ts"]),
                str(e.get("event")),
                f"{m.get('name')}@{m.get('version')}" if m else "-",
                str(e.get("rollout") or "-"),
                str(e.get("reason") or ""),
            )
        show(history)
    return 0


def cmd_devices_tag(args: argparse.Namespace) -> int:
    store = _store(args)
    _known(store, args.device_id)
    tags = _labels(args.tags)
    change = {"remove": tags} if args.remove else {"add": tags}
    d = store.label_device(args.device_id, **change)
    say(f"{args.device_id}: tags {','.join(d['tags']) or '(none)'}")
    return 0


def cmd_devices_group(args: argparse.Namespace) -> int:
    store = _store(args)
    _known(store, args.device_id)
    if args.group is None and not args.none:
        raise ConfigError("devices group: expected a GROUP name or --none")
    if args.group is not None and args.none:
        raise ConfigError(f"devices group: expected a GROUP or --none, got both ({args.group!r})")
    group = "" if args.none else _labels([args.group])[0]
    store.label_device(args.device_id, group=group)
    say(f"{args.device_id}: group {group or '(none)'}")
    return 0


def cmd_devices_remove(args: argparse.Namespace) -> int:
    store = _store(args)
    ids = list(dict.fromkeys(args.device_ids))
    unknown = [d for d in ids if store.device(d) is None]
    if unknown:  # all or nothing: a typo removes no device
        raise ConfigError(
            f"devices remove: no device {', '.join(map(repr, unknown))} in the registry "
            "(nothing removed); `edgehub devices list` shows them"
        )
    store.remove_devices(ids)
    say(f"removed {', '.join(ids)} from the registry (their stored records stay)")
    return 0


REMOVE_HELP = (
    "forget devices: their registration, tags, group, public key, unsent commands and refusal "
    "counts. Their stored records (telemetry, drift, events) stay until --retention-days "
    "removes them. A device that is still running registers again at its next status"
)


def register(sub: Any, add: AddCommand) -> argparse.ArgumentParser:
    """`edgehub devices ...` under the top-level subparsers `sub`, with cli.build_parser's `add`."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "devices", help="the fleet: registry, tags and groups", description="the fleet"
    )
    devices = parser.add_subparsers(dest="sub", required=True)
    sp = add(devices, "enroll", cmd_devices_enroll, "give a device the hub's trusted root")
    sp.add_argument("device_id")
    sp.add_argument("--state-dir", required=True, help="the device's state folder")
    sp.add_argument(
        "--public",
        help="the device's device.pub.json from `edge-agent enroll` "
        "(default: the one in the state folder, if there)",
    )
    sp = add(devices, "list", cmd_devices_list, "list devices", json_out=True)
    state = sp.add_mutually_exclusive_group()
    state.add_argument("--online", action="store_true", help="only devices online now")
    state.add_argument("--offline", action="store_true", help="only devices offline now")
    sp.add_argument("--group", help="only devices in this group")
    sp.add_argument("--tag", action="append", help="only devices with this tag (repeatable)")
    sp.add_argument("--model", help="only devices running this model (NAME or NAME@VERSION)")
    sp = add(devices, "show", cmd_devices_show, "one device and its recent events", json_out=True)
    sp.add_argument("device_id")
    sp.add_argument("--events", default="10", help="how many recent events (default 10)")
    sp = add(devices, "tag", cmd_devices_tag, "add tags to a device (or --remove them)")
    sp.add_argument("device_id")
    sp.add_argument("tags", nargs="+", metavar="TAG")
    sp.add_argument("--remove", action="store_true", help="remove these tags instead")
    sp = add(devices, "group", cmd_devices_group, "put a device in a group (one at a time)")
    sp.add_argument("device_id")
    sp.add_argument("group", nargs="?", metavar="GROUP")
    sp.add_argument("--none", action="store_true", help="take the device out of its group")
    sp = add(devices, "remove", cmd_devices_remove, "forget devices (their records stay)")
    sp.description = REMOVE_HELP
    sp.add_argument("device_ids", nargs="+", metavar="ID")
    return parser
