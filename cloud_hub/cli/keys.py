"""`edgehub keys {init,rotate ROLE,show}`: the hub's TUF signing keys.

Encrypted keys open with EDGEHUB_KEY_PASSPHRASE; when it is unset and the command runs in a
terminal, the passphrase is asked for (once per command).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table

from cloud_hub.cli.output import console, show
from cloud_hub.signing.keys import KEY_ROLES, PASSPHRASE_ENV, PassphrasePrompt, passphrase_in_use
from edge_agent.errors import ConfigError, EdgefleetError

AddCommand = Callable[..., argparse.ArgumentParser]


def _say(text: str) -> None:
    """One message line: paths are neither folded at 80 columns nor read as rich markup."""
    console.print(text, soft_wrap=True, markup=False, highlight=False)


def _terminal_prompt() -> PassphrasePrompt | None:
    """getpass when a person can answer; None in scripts, pipes and services."""
    if not sys.stdin.isatty():
        return None
    return lambda path: getpass.getpass(f"passphrase of the hub keys ({path.name}): ")


def _new_passphrase() -> str:
    first = getpass.getpass("passphrase for the new keys: ")
    if not first:
        raise ConfigError("an empty passphrase would leave the keys unencrypted")
    if getpass.getpass("the same passphrase again: ") != first:
        raise ConfigError("the two passphrases differ; no keys were created")
    return first


def cmd_keys_init(args: argparse.Namespace) -> int:
    """Create the hub: keys, TUF repository and store; with --passphrase-prompt the keys are
    encrypted with a passphrase asked twice."""
    from cloud_hub.rollout.operations import init_hub

    home = Path(args.home)
    secret = _new_passphrase() if args.passphrase_prompt else None
    try:
        if secret is not None:
            with passphrase_in_use(secret):
                repo = init_hub(home)
        else:
            repo = init_hub(home)
    except OSError as exc:  # home is a file, or a folder we may not write to
        raise EdgefleetError(
            f"{args.home}: cannot create the hub here ({exc.strerror}: {exc.filename})"
        ) from exc
    protection = (
        f"encrypted (keep the passphrase: set {PASSPHRASE_ENV} for `edgehub serve`)"
        if any(row["encrypted"] for row in repo.key_info())
        else "not encrypted"
    )
    _say(f"hub initialised in {args.home}: TUF keys and metadata created, keys {protection}")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from cloud_hub.rollout.operations import open_repo

    repo = open_repo(Path(args.home))
    repo.passphrase_prompt = _terminal_prompt()
    done = repo.rotate_key(args.role)
    if getattr(args, "json", False):
        body = {
            "role": done.role,
            "old_keyid": done.old_keyid,
            "new_keyid": done.new_keyid,
            "root_version": done.root_version,
            "resigned": done.resigned,
            "retired": str(done.retired) if done.retired else None,
            "encrypted": done.encrypted,
        }
        print(json.dumps(body, indent=2))
        return 0
    _say(
        f"{done.role} key rotated: {done.old_keyid[:16]} -> {done.new_keyid[:16]}"
        f"{' (encrypted)' if done.encrypted else ''}"
    )
    resigned = ", ".join(f"{role} v{version}" for role, version in done.resigned.items())
    _say(f"root is now version {done.root_version}; re-signed {resigned}")
    if done.retired is not None:
        _say(f"old key kept in {done.retired}")
    else:
        _say("the old key file was already gone; nothing to keep")
    return 0


def cmd_keys_show(args: argparse.Namespace) -> int:
    from cloud_hub.rollout.operations import open_repo

    rows = open_repo(Path(args.home)).key_info()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"TUF keys of {args.home}")
    for col in ("role", "keyid", "encrypted", "version", "expires"):
        table.add_column(col)
    for row in rows:
        keyid = row["keyid"][:16] + ("" if row["present"] else " (key file missing)")
        table.add_row(
            row["role"],
            keyid,
            "yes" if row["encrypted"] else "no",
            str(row["version"]),
            row["expires"],
        )
    show(table)
    return 0


def register(sub: Any, add: AddCommand) -> argparse.ArgumentParser:
    """`edgehub keys ...` under the top-level subparsers `sub`, with cli.build_parser's `add`."""
    keys_parser: argparse.ArgumentParser = sub.add_parser(
        "keys", help="the TUF signing keys", description="the TUF signing keys"
    )
    keys = keys_parser.add_subparsers(dest="sub", required=True)
    sp = add(keys, "init", cmd_keys_init, "create the hub's keys and TUF repository")
    sp.add_argument(
        "--passphrase-prompt",
        action="store_true",
        help=f"encrypt the keys with a passphrase asked twice (else {PASSPHRASE_ENV}, if set)",
    )
    sp = add(
        keys,
        "rotate",
        cmd_keys_rotate,
        "replace a role's key; root gets a new version, the old key is kept in keys/retired",
        json_out=True,
    )
    sp.add_argument("role", choices=KEY_ROLES, help="the role whose key is replaced")
    add(
        keys,
        "show",
        cmd_keys_show,
        "list the keys, their metadata versions and expiry",
        json_out=True,
    )
    return keys_parser
