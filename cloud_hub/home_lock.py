"""Who owns a hub home: `edgehub serve` and `edgehub simulate` each run a hub on it, and two
hubs on one home fight over its rollouts and devices. Each holds an exclusive lock (flock) on
HOME/hub.lock while it runs, the file naming its command and pid; a second one fails at once,
saying who holds the home. Commands that only read or queue (rollout status, devices list, ...)
take no lock and work beside a running hub. Hubs splitting the ingest (`serve --share GROUP`,
DESIGN.md "Scale") may share a home: they hold the lock shared, which turns away exclusive
holders only (and an exclusive holder turns them away). The kernel drops the lock when the
process ends, however it ends: a stale file is never in the way.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from edge_agent.errors import ConfigError

LOCK_FILE = "hub.lock"


def holder(home: Path) -> str:
    """What the lock file says of its holder: "edgehub serve (pid 123)", or "another process"."""
    try:
        command, _, pid = (home / LOCK_FILE).read_text(encoding="utf-8").strip().rpartition(" ")
    except (OSError, UnicodeDecodeError):
        return "another process"
    return f"{command} (pid {pid})" if command and pid.isdigit() else "another process"


@contextlib.contextmanager
def own_home(home: Path, command: str, shared: bool = False) -> Iterator[None]:
    """Hold `home` for `command` (e.g. "edgehub serve") while the block runs; ConfigError at
    once if another process holds it (with `shared`: exclusively)."""
    path = home / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open the hub's lock file ({exc.strerror})") from exc
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"hub home {home} is in use by {holder(home)}; stop it or use another --home"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{command} {os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock
