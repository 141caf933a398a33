"""Signing hub -> device commands with the hub's command key (the TUF role `commands`).

Each command names its device, carries a counter above every one the hub gave that device
before (from the store, so it holds across restarts and between hub workers) and expires when
the broker would have dropped it from an offline device's queue anyway. The wire form is
edge_agent/protocol/commands.py's.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from securesystemslib.signer import Signer

from edge_agent.protocol.commands import SignedCommand, canonical, command_body
from edge_agent.protocol.messages import Command

COMMAND_TTL = timedelta(days=30)  # as long as the broker keeps an offline device's queue


def counter_floor(now: float) -> int:
    """The lowest counter a command signed at `now` (Unix seconds) gets: microseconds, so the
    counters go on rising even for a hub whose store started afresh."""
    return int(now * 1_000_000)


def sign_command(
    signer: Signer, cmd: Command, device: str, counter: int, now: float
) -> SignedCommand:
    expires = datetime.fromtimestamp(now, UTC).replace(microsecond=0) + COMMAND_TTL
    body = command_body(cmd, device, counter, expires)
    signature = signer.sign(canonical(body))
    sigs = {signature.keyid: signature.signature}
    return SignedCommand(body, cmd, device, counter, expires, sigs)
