"""Which database the hub uses: one URL for every `edgehub` command (no SQLAlchemy here, so
the CLI can read it before it imports the store)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.errors import ConfigError

if TYPE_CHECKING:
    from cloud_hub.store.database import Store

STORE_FILE = "hub.sqlite"  # the default store, in the hub's home
STORE_ENV = "EDGEHUB_STORE"  # the store's URL for every edgehub command (`--store` sets it)


def store_url(home: Path) -> str:
    """Where the hub keeps its registry, records and coordination: the URL in EDGEHUB_STORE
    (`edgehub --store URL` sets it for the command and whatever it starts), else the SQLite
    file in the hub's home."""
    return os.environ.get(STORE_ENV) or f"sqlite:///{home / STORE_FILE}"


def has_hub(home: Path) -> bool:
    """Whether `home` holds a hub (its SQLite file, or with a store elsewhere, its folder), for a
    reading command that should say so rather than create an empty store."""
    return (home / STORE_FILE).exists() if STORE_ENV not in os.environ else home.is_dir()


def existing_store(home: Path) -> Store:
    """The store of the hub in `home`, for a command that reads it; ConfigError where there is
    no hub (rather than an empty store made on the spot)."""
    from cloud_hub.store.database import Store

    if not has_hub(home):
        raise ConfigError(f"--home {home}: expected a hub folder (edgehub keys init), found none")
    return Store(store_url(home))
