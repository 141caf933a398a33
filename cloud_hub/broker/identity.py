"""Who is who on the broker: the names the hub keeps for itself, and the one check that keeps a
device from taking one.

A device's id is its MQTT username (and, forced by the broker, its client id). The hub logs in as
`edgehub`, a hub worker as `edgehub-NAME` (`edgehub serve --worker NAME`), and the hub's other
clients (Home Assistant discovery, the simulator) use `edgehub-...` client ids too. A device may
take none of these names: with one, it would share the hub's broker user, its ACL role and its
session. The comparison ignores case, so `EdgeHub` cannot pass for the hub in a log or a list.
"""

from __future__ import annotations

import re

from edge_agent.errors import ConfigError
from edge_agent.protocol.topics import check_device_id

HUB_USER = "edgehub"
_WORKER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


def reserved_why(name: str, hub_user: str = HUB_USER) -> str | None:
    """Why `name` belongs to the hub (None when a device may have it)."""
    folded, hub = name.casefold(), hub_user.casefold()
    if folded in (hub, HUB_USER):
        return "it is the hub's broker user"
    if folded.startswith((f"{hub}-", f"{HUB_USER}-")):
        return f"names {hub_user}-* belong to the hub's workers and clients"
    return None


def check_device_name(device_id: object, hub_user: str = HUB_USER, where: str = "device id") -> str:
    """A device id (check_device_id) that is none of the hub's names; ConfigError otherwise."""
    name = check_device_id(device_id, where)
    why = reserved_why(name, hub_user)
    if why is not None:
        raise ConfigError(f"{where}: {name!r} is reserved ({why}); choose another device id")
    return name


def worker_user(worker: str, hub_user: str = HUB_USER, where: str = "--worker") -> str:
    """The broker user of hub worker `worker`: `edgehub-WORKER`."""
    if not _WORKER.fullmatch(worker):
        raise ConfigError(
            f"{where}: expected a worker name of 1-32 letters, digits, '.', '_' or '-' "
            f"starting with a letter or digit, got {worker!r}"
        )
    return f"{hub_user}-{worker}"
