"""The device's command gate on its own: order of the checks, and the counter it keeps across a
restart (the signature check itself runs against real TUF metadata in test_signed_commands)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.errors import BundleRejected
from edge_agent.protocol.commands import SignedCommand, command_body
from edge_agent.protocol.messages import Command
from edge_agent.protocol.reasons import Reason
from edge_agent.update.commands import CommandGate

NOW = datetime(2026, 12, 4, tzinfo=UTC)


class Signatures:
    """Stands in for the TUF-backed verifier: every signature good, every version there."""

    def __init__(self) -> None:
        self.checked = 0

    def verify_command(self, _payload: bytes, _signatures: dict[str, str]) -> None:
        self.checked += 1

    def wait_for_timestamp(self, _version: int, timeout: float) -> bool:
        return True


def command(
    counter: int, device: str = "pi-01", expires: datetime = NOW + timedelta(days=1)
) -> SignedCommand:
    cmd = Command(f"c{counter}", "rollback")
    return SignedCommand(
        command_body(cmd, device, counter, expires), cmd, device, counter, expires, {"ab": "cd"}
    )


def gate(path: Path, checks: Signatures) -> CommandGate:
    return CommandGate("pi-01", path, checks, checks, clock=lambda: NOW)  # type: ignore[arg-type]


def refused(g: CommandGate, signed: SignedCommand, resumed: bool = False) -> Reason:
    with pytest.raises(BundleRejected) as info:
        g.admit(signed, resumed)
    return info.value.reason


def test_counters_only_rise_and_a_restart_remembers_them(tmp_path: Path) -> None:
    path, checks = tmp_path / "command-counter.json", Signatures()
    g = gate(path, checks)
    g.admit(command(5))
    assert refused(g, command(5)) == Reason.REPLAYED
    assert refused(g, command(4)) == Reason.REPLAYED
    again = gate(path, checks)  # the agent restarted
    assert again.last_counter == 5
    assert refused(again, command(5)) == Reason.REPLAYED
    again.admit(command(5), resumed=True)  # its own pending deploy, from its own disk
    again.admit(command(6))


def test_device_and_expiry_are_checked_before_the_signature(tmp_path: Path) -> None:
    checks = Signatures()
    g = gate(tmp_path / "c.json", checks)
    assert refused(g, command(9, device="pi-02")) == Reason.WRONG_DEVICE
    assert refused(g, command(9, expires=NOW)) == Reason.EXPIRED
    assert checks.checked == 0
    g.admit(command(9, expires=NOW), resumed=True)  # accepted before it expired
    assert checks.checked == 1


def test_an_unreadable_counter_file_takes_only_commands_signed_from_now_on(tmp_path: Path) -> None:
    path = tmp_path / "command-counter.json"
    path.write_text("{broken")
    g = gate(path, Signatures())
    assert refused(g, command(10**9)) == Reason.REPLAYED  # signed long before now
    g.admit(command(int((datetime.now(UTC) + timedelta(seconds=5)).timestamp() * 1e6)))
