"""Commands signed as the hub signs them, for tests that put one on the broker themselves."""

from __future__ import annotations

import time
from pathlib import Path

from cloud_hub.signing.commands import counter_floor, sign_command
from cloud_hub.signing.tuf_repo import TufRepository
from edge_agent.protocol.messages import Command


def signed(
    home: Path, device: str, cmd: Command, counter: int | None = None, now: float | None = None
) -> bytes:
    """`cmd` for `device`, signed with the command key of the hub at `home` (signed at `now`;
    the counter of that moment unless given)."""
    at = time.time() if now is None else now
    key = TufRepository(home).command_signer()
    number = counter_floor(at) if counter is None else counter
    return sign_command(key, cmd, device, number, at).to_bytes()
