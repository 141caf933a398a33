"""`edgehub broker-config`: mosquitto files that enforce the topic table for the fleet."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_hub.cli.output import say
from edge_agent.errors import ConfigError

if TYPE_CHECKING:
    from cloud_hub.broker.config import TlsFiles

AddCommand = Callable[..., argparse.ArgumentParser]


def cmd_broker_config(args: argparse.Namespace) -> int:
    from cloud_hub.broker.config import CLEAR_TEXT_WARNING, is_loopback, write_broker_config
    from cloud_hub.rollout.operations import open_repo
    from cloud_hub.store.database import Store
    from cloud_hub.store.url import store_url

    if not args.port.isdigit():
        raise ConfigError(f"--port: expected 1 to 65535, got {args.port!r}")
    tls = _tls_files(args)
    open_repo(Path(args.home))
    devices = [d["id"] for d in Store(store_url(Path(args.home))).devices()]
    files = write_broker_config(
        Path(args.out),
        devices,
        int(args.port),
        args.prefix,
        args.hub_user,
        tls,
        bind=args.bind,
        workers=args.worker or (),
        plugin=Path(args.dynsec_plugin).resolve() if args.dynsec_plugin else None,
    )
    workers = len(files.hub_users) - 1
    say(
        f"wrote {files.conf} and {files.dynsec} for {len(devices)} device(s), the hub"
        + (f" and {workers} hub worker(s) ({', '.join(files.hub_users[1:])})" if workers else "")
    )
    where = f"{args.bind}:{args.port}"
    if is_loopback(args.bind):
        say(
            f"the listener is {where}: only this machine reaches it; for devices elsewhere "
            "give --bind ADDRESS (--bind 0.0.0.0: every interface)"
        )
    else:
        say(f"the listener is {where}")
    if tls is None:
        say(f"warning: {CLEAR_TEXT_WARNING}")
    elif tls.client_certificates:
        say("TLS: each client logs in with a client certificate whose common name is its user")
    else:
        say("TLS: clients check the broker's certificate against the CA and log in with passwords")
    if files.credentials is not None:
        say(
            f"passwords in {files.credentials}: give each device its own ([broker] password_file "
            "in agent.toml) and each hub its own (EDGEHUB_BROKER_PASSWORD), then delete it"
        )
    say(
        f"the hub logs in as {files.hub_users[0]}: edgehub serve --broker-user {files.hub_users[0]}"
    )
    if workers:
        say(
            "hub workers: edgehub serve --worker NAME --share GROUP, each with its own password "
            "(EDGEHUB_BROKER_PASSWORD)"
        )
    if files.blocked is not None:
        say(
            f"warning: mosquitto started as root reads these files as user mosquitto, which "
            f"cannot enter {files.blocked}: use an --out it can reach (e.g. under /etc/mosquitto)"
        )
    say(
        f"mosquitto reads {files.dynsec.name} only when it starts: after enrolling devices, run "
        "this again and restart mosquitto (its sessions and queued messages are kept)"
    )
    say(f"run: mosquitto -c {files.conf}")
    return 0


def _tls_files(args: argparse.Namespace) -> TlsFiles | None:
    from cloud_hub.broker.config import TlsFiles

    given = {
        name: value
        for name, value in (
            ("--cafile", args.cafile),
            ("--certfile", args.certfile),
            ("--keyfile", args.keyfile),
        )
        if value
    }
    if args.tls and len(given) < 3:
        raise ConfigError("--tls: expected --cafile, --certfile and --keyfile")
    if not given:
        return None
    if len(given) < 3:
        raise ConfigError(
            f"--cafile, --certfile, --keyfile: expected all three (TLS on the listener) or "
            f"none, got only {', '.join(given)}"
        )
    ca, cert, key = (Path(p).resolve() for p in (args.cafile, args.certfile, args.keyfile))
    return TlsFiles(ca, cert, key, client_certificates=args.tls)


def register(sub: Any, add: AddCommand) -> argparse.ArgumentParser:
    sp: argparse.ArgumentParser = add(
        sub,
        "broker-config",
        cmd_broker_config,
        "write a mosquitto config, its users and ACL (dynamic security) for the enrolled fleet",
    )
    sp.add_argument("--out", required=True, help="folder for mosquitto.conf and its files")
    sp.add_argument("--port", default="8883", help="the listener's port (default 8883)")
    sp.add_argument(
        "--bind",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="the address the listener binds (default 127.0.0.1: this machine only; "
        "0.0.0.0: every interface)",
    )
    sp.add_argument("--prefix", default="edgefleet", help="topic prefix")
    sp.add_argument("--hub-user", default="edgehub", help="the hub's broker username")
    sp.add_argument(
        "--worker",
        action="append",
        metavar="NAME",
        help="a broker user HUB_USER-NAME for hub worker NAME (`edgehub serve --worker NAME`); "
        "repeat it for each worker",
    )
    sp.add_argument(
        "--tls",
        action="store_true",
        help="client certificates instead of passwords (the certificate's CN is the username)",
    )
    sp.add_argument("--cafile", help="the CA clients trust (with --tls: that signs their certs)")
    sp.add_argument("--certfile", help="the broker's certificate: TLS on the listener")
    sp.add_argument("--keyfile", help="the broker's private key")
    sp.add_argument(
        "--dynsec-plugin",
        metavar="PATH",
        help="mosquitto's dynamic security plugin (default: found next to mosquitto)",
    )
    return sp
