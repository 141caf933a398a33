"""The ACL of DESIGN.md's topic table as mosquitto's dynamic security plugin reads it.

Why this plugin and not an `acl_file`: mosquitto 2.0's acl_file does not check SUBSCRIBE at all,
only each message at delivery. A device could then join the hubs' shared-subscription group
(`$share/GROUP/edgefleet/dev/+/telemetry`): the broker handed it a share of every device's
records, refused to deliver them to it, and they were lost to the hub. The plugin checks the
subscription itself, with the `$share/GROUP/` part, so that one is refused at SUBSCRIBE.

What it allows, and nothing else (every default is deny, but unsubscribing):

- device ID: publish `dev/ID/{status,telemetry,drift,events,labels,xfer/req}`; subscribe to and
  receive exactly `dev/ID/{cmd,ack,xfer/chunk}`, and `fleet/tuf/#` (or a filter below it).
  The plugin has no `%u` in its topics, so each device has a role of its own.
- the hub and each hub worker: subscribe to `dev/+/KIND` for each device-to-hub KIND, plain or
  in any `$share/GROUP/`, and receive those; publish `dev/+/{cmd,ack,xfer/chunk}` and
  `fleet/tuf/#`.

Passwords are stored as the plugin stores them: PBKDF2-SHA512 of the password with a 12-byte
salt (`SALT_LEN` in mosquitto 2.0's password_mosq.h) and 101 iterations, both base64. A client
without a password is fine: it logs in with a TLS client certificate whose common name is its
username (`use_identity_as_username`), and the plugin still finds its roles by that name.

Values in, a JSON-ready dict out; nothing here touches the disk.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from edge_agent.protocol.topics import DEVICE_DOWN, DEVICE_UP, Topics

PBKDF2_ITERATIONS = 101  # mosquitto 2.0's PW_DEFAULT_ITERATIONS
SALT_BYTES = 12  # mosquitto 2.0's SALT_LEN: the plugin ignores a client whose salt differs
HUB_ROLE = "edgefleet-hub"

Acl = dict[str, Any]


def device_role(device: str) -> str:
    return f"edgefleet-device-{device}"


def _acl(kind: str, topic: str) -> Acl:
    return {"acltype": kind, "topic": topic, "allow": True}


def device_acls(topics: Topics, device: str) -> list[Acl]:
    own = [topics.device(device, kind) for kind in DEVICE_DOWN]
    return [
        *(_acl("publishClientSend", topics.device(device, kind)) for kind in DEVICE_UP),
        *(_acl("publishClientReceive", topic) for topic in own),
        *(_acl("subscribeLiteral", topic) for topic in own),
        _acl("publishClientReceive", topics.tuf_all),
        _acl("subscribePattern", topics.tuf_all),
    ]


def hub_acls(topics: Topics) -> list[Acl]:
    ups = [topics.any_device(kind) for kind in DEVICE_UP]
    return [
        *(_acl("publishClientReceive", topic) for topic in ups),
        *(_acl("subscribePattern", topic) for topic in ups),
        *(_acl("subscribePattern", f"$share/+/{topic}") for topic in ups),
        *(_acl("publishClientSend", topics.any_device(kind)) for kind in DEVICE_DOWN),
        _acl("publishClientSend", topics.tuf_all),
    ]


def password_fields(password: str, salt: bytes) -> dict[str, Any]:
    """The plugin's `password`, `salt` and `iterations` of one client."""
    if len(salt) != SALT_BYTES:
        raise ValueError(f"salt: expected {SALT_BYTES} bytes, got {len(salt)}")
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": PBKDF2_ITERATIONS,
    }


def _client(
    user: str, role: str, passwords: Mapping[str, str] | None, salt: Callable[[], bytes]
) -> dict[str, Any]:
    entry: dict[str, Any] = {"username": user, "roles": [{"rolename": role}]}
    if passwords is not None:
        entry.update(password_fields(passwords[user], salt()))
    return entry


def dynsec_config(
    topics: Topics,
    devices: Sequence[str],
    hub_users: Sequence[str],
    passwords: Mapping[str, str] | None,
    salt: Callable[[], bytes] = lambda: os.urandom(SALT_BYTES),
) -> dict[str, Any]:
    """The plugin's whole file: one role per device, one for the hub's users; `passwords`
    (user -> password) for every user, or None where TLS client certificates name them."""
    roles = [
        {"rolename": HUB_ROLE, "acls": hub_acls(topics)},
        *({"rolename": device_role(d), "acls": device_acls(topics, d)} for d in devices),
    ]
    clients = [
        *(_client(user, HUB_ROLE, passwords, salt) for user in hub_users),
        *(_client(d, device_role(d), passwords, salt) for d in devices),
    ]
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": clients,
        "groups": [],
        "roles": roles,
    }
