"""mosquitto configuration that enforces DESIGN.md's topic table, for `edgehub broker-config`.

Every client is known by its MQTT username: a device's id, or the hub's user. The username comes
from a password file (hashed as mosquitto 2 hashes: PBKDF2-SHA512, `$7$`) or from the common
name of a TLS client certificate (`use_identity_as_username`), and the client id is forced to
equal it (`use_username_as_clientid`), so a device can neither pose as another nor take over
another's persistent session. The ACL lets device %u write only its own
dev/%u/{status,telemetry,drift,events,xfer/req} and read only its own dev/%u/{cmd,xfer/chunk}
and fleet/tuf/#; the hub reads what devices send and writes commands, chunks and TUF metadata.

Text in, text out, apart from `write_broker_config`, which writes the files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from edge_agent.errors import ConfigError
from edge_agent.protocol.topics import DEVICE_DOWN, DEVICE_UP, Topics, check_device_id
from edge_agent.system.fsutil import atomic_write

PBKDF2_ITERATIONS = 101  # what mosquitto_passwd writes for $7$ (mosquitto 2.0)
SALT_BYTES = 12
HUB_USER = "edgehub"


@dataclass(frozen=True)
class TlsFiles:
    """The broker's side of mutual TLS: the CA that signs client certificates, its own pair."""

    cafile: Path
    certfile: Path
    keyfile: Path


def password_line(user: str, password: str, salt: bytes | None = None) -> str:
    """One mosquitto password-file line, `user:$7$101$salt$hash` (base64)."""
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    b64 = base64.b64encode
    return f"{user}:$7${PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def acl_text(prefix: str = "edgefleet", hub_user: str = HUB_USER) -> str:
    topics = Topics(prefix)
    check_device_id(hub_user, "hub user")
    dev = f"{topics.prefix}/dev"
    lines = [
        "# Written by `edgehub broker-config`: DESIGN.md's topic table.",
        "# Each device (%u is its username, which is also its client id) writes and reads",
        "# only its own topics and reads the TUF metadata.",
        *(f"pattern write {dev}/%u/{kind}" for kind in DEVICE_UP),
        *(f"pattern read {dev}/%u/{kind}" for kind in DEVICE_DOWN),
        f"pattern read {topics.tuf_all}",
        "",
        "# The hub reads what every device sends and writes commands, chunks and TUF metadata.",
        f"user {hub_user}",
        *(f"topic read {dev}/+/{kind}" for kind in DEVICE_UP),
        *(f"topic write {dev}/+/{kind}" for kind in DEVICE_DOWN),
        f"topic readwrite {topics.tuf_all}",
    ]
    return "\n".join(lines) + "\n"


# The broker's own limits (DESIGN.md: the hub generates them, and the broker runs as written).
MAX_PACKET_BYTES = 8 * 1024 * 1024  # a 64 KiB chunk is ~90 KB on the wire; a batch stays far below
MAX_QUEUED_MESSAGES = 100_000  # per offline client with a persistent session (a restarting hub)
MAX_QUEUED_BYTES = 512 * 1024 * 1024
AUTOSAVE_S = 60  # mosquitto's stock is 30 minutes: a power cut then costs that much of its state
SESSION_EXPIRY = "30d"  # a device's queued commands wait this long for it


def conf_text(
    port: int,
    acl_file: Path,
    password_file: Path | None = None,
    tls: TlsFiles | None = None,
    data_dir: Path | None = None,
) -> str:
    """mosquitto.conf: one listener, no anonymous clients, client id = username, the broker's
    limits set; state saved in `data_dir` (mosquitto's default place when None)."""
    if (password_file is None) == (tls is None):
        raise ConfigError("broker-config: expected a password file or TLS files, not both")
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port: expected 1 to 65535, got {port}")
    paths = [acl_file, password_file, data_dir, *(tls.__dict__.values() if tls else ())]
    for path in paths:
        if path is not None and any(ch.isspace() for ch in str(path)):
            raise ConfigError(
                f"{path}: expected a path without whitespace (mosquitto.conf cannot quote it)"
            )
    lines = [
        "# Written by `edgehub broker-config`. Devices and the hub log in with their own",
        "# username; the client id is forced to equal it.",
        "per_listener_settings false",
        "allow_anonymous false",
        "persistence true",
        "# chunk requests and acknowledgements are small packets: send them at once (Nagle's",
        "# algorithm with delayed ACKs costs a chunked transfer up to 40 ms a round trip)",
        "set_tcp_nodelay true",
        f"acl_file {acl_file}",
        "",
        "# Limits. Records survive whatever the broker drops (devices keep them until the hub",
        "# confirms them), but a sized queue spares them a resend while the hub restarts.",
        f"max_packet_size {MAX_PACKET_BYTES}",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_queued_bytes {MAX_QUEUED_BYTES}",
        f"autosave_interval {AUTOSAVE_S}",
        f"persistent_client_expiration {SESSION_EXPIRY}",
        *([f"persistence_location {data_dir}/"] if data_dir is not None else []),
        "",
        f"listener {port}",
        "use_username_as_clientid true",
    ]
    if password_file is not None:
        lines.append(f"password_file {password_file}")
    if tls is not None:
        lines += [
            f"cafile {tls.cafile}",
            f"certfile {tls.certfile}",
            f"keyfile {tls.keyfile}",
            "require_certificate true",
            "use_identity_as_username true",
        ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class BrokerFiles:
    conf: Path
    acl: Path
    passwd: Path | None = None
    credentials: Path | None = None  # user -> password, for provisioning; keep it secret
    blocked: Path | None = None  # a folder above them mosquitto's own user cannot enter


def write_broker_config(
    out: Path,
    devices: list[str],
    port: int = 8883,
    prefix: str = "edgefleet",
    hub_user: str = HUB_USER,
    tls: TlsFiles | None = None,
) -> BrokerFiles:
    """Write mosquitto.conf and acl into `out`; with passwords (no `tls`) also passwd and
    credentials.json, keeping the passwords of users it already holds."""
    for device in devices:
        check_device_id(device)
        if device == hub_user:
            raise ConfigError(f"device {device!r}: that name is the hub's broker user")
    out = out.resolve()
    owner = _broker_owner()
    try:
        out.mkdir(parents=True, exist_ok=True)
        data = out / "data"
        data.mkdir(exist_ok=True)
        acl = out / "acl"
        atomic_write(acl, acl_text(prefix, hub_user).encode())
        _give(owner, data, acl)
        if tls is not None:
            missing = [p for p in tls.__dict__.values() if not Path(p).is_file()]
            if missing:
                raise ConfigError(f"--tls: no such file {missing[0]}")
            conf = out / "mosquitto.conf"
            atomic_write(conf, conf_text(port, acl, tls=tls, data_dir=data).encode())
            return BrokerFiles(conf, acl, blocked=_blocked(owner, out))
        credentials = out / "credentials.json"
        known = _read_credentials(credentials)
        users = {u: known.get(u) or secrets.token_urlsafe(24) for u in [hub_user, *devices]}
        passwd = out / "passwd"
        lines = [password_line(user, password) for user, password in sorted(users.items())]
        atomic_write(passwd, ("\n".join(lines) + "\n").encode(), mode=0o600)
        _give(owner, passwd)
        secret = json.dumps(users, indent=2, sort_keys=True).encode()
        atomic_write(credentials, secret, mode=0o600)
        conf = out / "mosquitto.conf"
        atomic_write(conf, conf_text(port, acl, password_file=passwd, data_dir=data).encode())
    except OSError as exc:
        raise ConfigError(f"{out}: cannot write the broker configuration ({exc.strerror})") from exc
    return BrokerFiles(conf, acl, passwd, credentials, _blocked(owner, out))


def _broker_owner() -> tuple[int, int] | None:
    """(uid, gid) that mosquitto reads its files as: started as root, it drops to the user
    `mosquitto` before it opens the password file and the ACL, and saves its state as that user.
    None when we are not root (mosquitto then runs as whoever starts it) or there is no such
    user."""
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
