"""`edgehub broker-config`: mosquitto files that enforce the topic table for the fleet."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloud_hub.cli.output import say
from edge_agent.errors import ConfigError

AddCommand = Callable[..., argparse.ArgumentParser]


def cmd_broker_config(args: argparse.Namespace) -> int:
    from cloud_hub.broker.config import TlsFiles, write_broker_config
    from cloud_hub.rollout.operations import open_repo
    from cloud_hub.store.database import Store, default_url

    if not args.port.isdigit():
        raise ConfigError(f"--port: expected 1 to 65535, got {args.port!r}")
    tls_args = (args.cafile, args.certfile, args.keyfile)
    if args.tls and not all(tls_args):
        raise ConfigError("--tls: expected --cafile, --certfile and --keyfile")
    if not args.tls and any(tls_args):
        raise ConfigError("--cafile/--certfile/--keyfile: expected --tls with them")
    tls = TlsFiles(*(Path(p).resolve() for p in tls_args)) if args.tls else None
    open_repo(Path(args.home))
    devices = [d["id"] for d in Store(default_url(Path(args.home))).devices()]
    files = write_broker_config(
        Path(args.out), devices, int(args.port), args.prefix, args.hub_user, tls
    )
    say(f"wrote {files.conf} and {files.acl} for {len(devices)} device(s) and the hub")
    if files.credentials is not None:
        say(
            f"passwords (hashed) in {files.passwd}; the plain ones in {files.credentials}: give "
            "each device its own ([broker] username/password in agent.toml), then delete it"
        )
    else:
        say("each device logs in with a client certificate whose common name is its id")
    if files.blocked is not None:
        say(
            f"warning: mosquitto started as root reads these files as user mosquitto, which "
            f"cannot enter {files.blocked}: use an --out it can reach (e.g. under /etc/mosquitto)"
        )
    say(f"run: mosquitto -c {files.conf}")
    return 0


def register(sub: Any, add: AddCommand) -> argparse.ArgumentParser:
    sp: argparse.ArgumentParser = add(
        sub,
        "broker-config",
        cmd_broker_config,
        "write a mosquitto config, ACL and passwords (or TLS settings) for the enrolled fleet",
    )
    sp.add_argument("--out", required=True, help="folder for mosquitto.conf, acl, passwd")
    sp.add_argument("--port", default="8883", help="the listener's port (default 8883)")
    sp.add_argument("--prefix", default="edgefleet", help="topic prefix")
    sp.add_argument("--hub-user", default="edgehub", help="the hub's broker username")
    sp.add_argument(
        "--tls",
        action="store_true",
        help="client certificates instead of passwords (the certificate's CN is the username)",
    )
    sp.add_argument("--cafile", help="with --tls: the CA that signs client certificates")
    sp.add_argument("--certfile", help="with --tls: the broker's certificate")
    sp.add_argument("--keyfile", help="with --tls: the broker's private key")
    return sp
