"""mosquitto configuration that enforces DESIGN.md's topic table, for `edgehub broker-config`.

Every client is known by its MQTT username: a device's id, the hub's user (`edgehub`) or a hub
worker's (`edgehub-NAME`, cloud_hub.broker.identity). mosquitto's dynamic security plugin holds
the users and their ACL (cloud_hub.broker.dynsec: why that plugin and what it allows); a user logs
in with its password, or, with `--tls`, with a TLS client certificate whose common name is its
username (`use_identity_as_username`). The client id is forced to equal the username
(`use_username_as_clientid`), so a device can neither pose as another nor take over another's
persistent session, and two hub workers, each with its own user, never close each other's
connection.

The one listener binds a named address (loopback unless told otherwise). Given a certificate and
its key it speaks TLS, passwords included; without them the conf says that passwords cross the
network in clear.

The plugin reads its file only when mosquitto starts (not on SIGHUP): after devices are enrolled
and the files written again, mosquitto must be restarted; its persistence keeps the sessions and
their queued messages across that restart.

Text in, text out, apart from `write_broker_config`, which writes the files, and
`find_dynsec_plugin`, which looks for the plugin next to mosquitto.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import re
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path

from cloud_hub.broker.dynsec import dynsec_config
from cloud_hub.broker.identity import HUB_USER, reserved_why, worker_user
from cloud_hub.broker.local import MAX_INFLIGHT, find_mosquitto
from edge_agent.errors import ConfigError
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.topics import Topics, check_device_id
from edge_agent.system.fsutil import atomic_write

DEFAULT_BIND = "127.0.0.1"  # this machine only: `--bind` opens the listener to a network
PLUGIN_NAME = "mosquitto_dynamic_security.so"
_HOST_NAME = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$"
)


@frozen
class TlsFiles:
    """The broker's TLS files: the CA (that signs client certificates, and that clients trust),
    its own certificate and key. `client_certificates` (`--tls`): each client logs in with a
    certificate the CA signed, whose common name is its username, instead of a password."""

    cafile: Path
    certfile: Path
    keyfile: Path
    client_certificates: bool = False

    def paths(self) -> tuple[Path, Path, Path]:
        return self.cafile, self.certfile, self.keyfile


def check_bind(address: str) -> str:
    """An IP address (0.0.0.0 or :: for every interface) or a host name to listen on."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        if not _HOST_NAME.fullmatch(address) or len(address) > 253:
            raise ConfigError(
                f"--bind: expected an IP address of this machine (0.0.0.0 for every interface) "
                f"or a host name, got {address!r}"
            ) from None
    return address


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


# The broker's own limits (DESIGN.md: the hub generates them, and the broker runs as written).
MAX_PACKET_BYTES = 8 * 1024 * 1024  # a 64 KiB chunk is ~90 KB on the wire; a batch stays far below
MAX_QUEUED_MESSAGES = 100_000  # per offline client with a persistent session (a restarting hub)
MAX_QUEUED_BYTES = 512 * 1024 * 1024
AUTOSAVE_S = 60  # mosquitto's stock is 30 minutes: a power cut then costs that much of its state
SESSION_EXPIRY = "30d"  # a device's queued commands wait this long for it

CLEAR_TEXT_WARNING = (
    "no TLS: passwords cross the network in clear; use this listener on loopback or a trusted "
    "network only, or give --cafile, --certfile and --keyfile"
)


def conf_text(
    port: int,
    plugin: Path,
    dynsec_file: Path,
    bind: str = DEFAULT_BIND,
    tls: TlsFiles | None = None,
    data_dir: Path | None = None,
) -> str:
    """mosquitto.conf: the dynamic security plugin, no anonymous clients, one listener on
    `bind`, client id = username, the broker's limits set; state saved in `data_dir`
    (mosquitto's default place when None)."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port: expected 1 to 65535, got {port}")
    check_bind(bind)
    for path in [plugin, dynsec_file, data_dir, *(tls.paths() if tls else ())]:
        if path is not None and any(ch.isspace() for ch in str(path)):
            raise ConfigError(
                f"{path}: expected a path without whitespace (mosquitto.conf cannot quote it)"
            )
    lines = [
        "# Written by `edgehub broker-config`. Devices and the hub log in with their own",
        "# username; the client id is forced to equal it. Users and ACL: the dynamic security",
        "# plugin's file, read when mosquitto starts (restart it after writing the files again).",
        "per_listener_settings false",
        "allow_anonymous false",
        f"plugin {plugin}",
        f"plugin_opt_config_file {dynsec_file}",
        "persistence true",
        "# chunk requests and acknowledgements are small packets: send them at once (Nagle's",
        "# algorithm with delayed ACKs costs a chunked transfer up to 40 ms a round trip)",
        "set_tcp_nodelay true",
        "",
        "# Limits. Records survive whatever the broker drops (devices keep them until the hub",
        "# confirms them), but a sized queue spares them a resend while the hub restarts.",
        f"max_packet_size {MAX_PACKET_BYTES}",
        "# the hub acknowledges a device message once it committed it: up to this many",
        "# (mosquitto's stock 20) make one transaction",
        f"max_inflight_messages {MAX_INFLIGHT}",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_queued_bytes {MAX_QUEUED_BYTES}",
        f"autosave_interval {AUTOSAVE_S}",
        f"persistent_client_expiration {SESSION_EXPIRY}",
        *([f"persistence_location {data_dir}/"] if data_dir is not None else []),
        "",
    ]
    if tls is None:
        lines += [
            "# WARNING: no TLS: passwords cross the network in clear. Use this listener on",
            "# loopback or a trusted network only, or give broker-config --cafile, --certfile",
            "# and --keyfile.",
        ]
    lines += [f"listener {port} {bind}", "use_username_as_clientid true"]
    if tls is not None:
        lines += [f"cafile {tls.cafile}", f"certfile {tls.certfile}", f"keyfile {tls.keyfile}"]
        if tls.client_certificates:
            lines += ["require_certificate true", "use_identity_as_username true"]
        else:
            lines += ["require_certificate false"]
    return "\n".join(lines) + "\n"


@frozen
class BrokerFiles:
    conf: Path
    dynsec: Path  # users, passwords (hashed) and roles: the plugin's file
    hub_users: tuple[str, ...]  # the hub's user, then each worker's
    credentials: Path | None = None  # user -> password, for provisioning; keep it secret
    blocked: Path | None = None  # a folder above them mosquitto's own user cannot enter


def write_broker_config(
    out: Path,
    devices: Sequence[str],
    port: int = 8883,
    prefix: str = "edgefleet",
    hub_user: str = HUB_USER,
    tls: TlsFiles | None = None,
    *,
    bind: str = DEFAULT_BIND,
    workers: Sequence[str] = (),
    plugin: Path | None = None,
) -> BrokerFiles:
    """Write mosquitto.conf and the plugin's dynamic-security.json into `out`; with passwords
    (no client certificates) also credentials.json, keeping the passwords of users it already
    holds. `workers`: a broker user `HUB_USER-NAME` for each hub worker, next to the hub's."""
    topics = Topics(prefix)
    check_device_id(hub_user, "--hub-user")
    for device in devices:
        check_device_id(device)
        why = reserved_why(device, hub_user)
        if why is not None:  # enrolled before enrollment refused it, or a new --hub-user
            raise ConfigError(
                f"enrolled device {device!r} is reserved ({why}): remove it (edgehub devices "
                f"remove {device}) and enroll it under another id, or choose another --hub-user"
            )
    hub_users = (hub_user, *dict.fromkeys(worker_user(w, hub_user) for w in workers))
    check_bind(bind)
    if tls is not None:
        missing = [p for p in tls.paths() if not p.is_file()]
        if missing:
            raise ConfigError(f"--cafile/--certfile/--keyfile: no such file {missing[0]}")
    plugin = plugin if plugin is not None else find_dynsec_plugin()
    if not plugin.is_file():
        raise ConfigError(f"--dynsec-plugin: no such file {plugin}")
    out = out.resolve()
    owner = _broker_owner()
    try:
        out.mkdir(parents=True, exist_ok=True)
        data = out / "data"
        data.mkdir(exist_ok=True)
        credentials = None
        passwords = None
        if tls is None or not tls.client_certificates:
            credentials = out / "credentials.json"
            known = _read_credentials(credentials)
            users = [*hub_users, *devices]
            passwords = {u: known.get(u) or secrets.token_urlsafe(24) for u in users}
        dynsec = out / "dynamic-security.json"
        body = dynsec_config(topics, devices, hub_users, passwords)
        atomic_write(dynsec, json.dumps(body, indent=2).encode(), mode=0o600)
        _give(owner, data, dynsec)  # mosquitto reads it as its own user, and may rewrite it
        if credentials is not None and passwords is not None:
            secret = json.dumps(passwords, indent=2, sort_keys=True).encode()
            atomic_write(credentials, secret, mode=0o600)
        conf = out / "mosquitto.conf"
        atomic_write(conf, conf_text(port, plugin, dynsec, bind, tls, data).encode())
    except OSError as exc:
        raise ConfigError(f"{out}: cannot write the broker configuration ({exc.strerror})") from exc
    return BrokerFiles(conf, dynsec, hub_users, credentials, _blocked(owner, out))


def find_dynsec_plugin() -> Path:
    """mosquitto's dynamic security plugin, looked for in the lib folders next to the
    mosquitto binary's (Debian: /usr/sbin/mosquitto, /usr/lib/<arch>/...)."""
    binary = find_mosquitto()
    if binary is None:
        raise ConfigError(
            "broker-config: expected mosquitto 2.0 or newer installed (its dynamic security "
            "plugin), found no mosquitto; install it or give --dynsec-plugin PATH"
        )
    root = Path(os.path.realpath(binary)).parent.parent
    for lib in ("lib", "lib64", "lib/*", "lib/mosquitto"):
        for found in sorted(root.glob(f"{lib}/{PLUGIN_NAME}")):
            return found
    raise ConfigError(
        f"broker-config: expected mosquitto's dynamic security plugin ({PLUGIN_NAME}, mosquitto "
        f"2.0 or newer) under {root}/lib, found none; give its path with --dynsec-plugin PATH"
    )


def _broker_owner() -> tuple[int, int] | None:
    """(uid, gid) that mosquitto reads its files as: started as root, it drops to the user
    `mosquitto` before it loads its plugins, and saves its state as that user. None when we are
    not root (mosquitto then runs as whoever starts it) or there is no such user."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("mosquitto")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _give(owner: tuple[int, int] | None, *paths: Path) -> None:
    if owner is not None:
        for path in paths:
            os.chown(path, *owner)


def _blocked(owner: tuple[int, int] | None, folder: Path) -> Path | None:
    """The first of `folder` and its parents that user `owner` may not enter, if any."""
    if owner is None:
        return None
    uid, gid = owner
    for path in (folder, *folder.parents):
        st = path.stat()
        bit = (
            stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
        )
        if not st.st_mode & bit:
            return path
    return None


def _read_credentials(path: Path) -> dict[str, str]:
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path}: expected the credentials JSON an earlier run wrote, got {exc}"
        ) from exc
    if not isinstance(body, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in body.items()
    ):
        raise ConfigError(f"{path}: expected an object of user -> password strings")
    return body
