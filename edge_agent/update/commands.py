"""The device's check of a signed command before anything acts on it.

In this order: it names this device (`wrong-device`), it has not expired (`expired`), the TUF
metadata it was signed with has arrived (`metadata-unavailable`), its signature is the hub's
command key as the freshly verified targets metadata delegates it (`bad-signature`), and its
counter is above the last one this device accepted (`replayed`). The accepted counter is kept
in the state folder, so a restart does not reopen old commands to replay. A deploy that was
accepted and then interrupted by a restart is resumed from the device's own disk: its counter
is the one accepted last and its expiry is not asked again.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from edge_agent.errors import BundleRejected
from edge_agent.protocol.commands import TIME_FORMAT, SignedCommand
from edge_agent.protocol.reasons import Reason
from edge_agent.system.fsutil import atomic_write, storage_error
from edge_agent.update.mirror import TufMirror
from edge_agent.update.verify import Verifier

log = logging.getLogger(__name__)

METADATA_WAIT_S = 30.0


class CommandGate:
    def __init__(
        self,
        device: str,
        counter_path: Path,
        verifier: Verifier,
        mirror: TufMirror,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.device = device
        self.counter_path = counter_path
        self.verifier = verifier
        self.mirror = mirror
        self.clock = clock
        self._lock = threading.Lock()
        self._last = self._read_counter()

    @property
    def last_counter(self) -> int:
        return self._last

    def admit(self, signed: SignedCommand, resumed: bool = False) -> None:
        """Raises BundleRejected with the reason when the command must not be acted on;
        otherwise records its counter as accepted."""
        cmd = signed.command
        if signed.device != self.device:
            raise BundleRejected(
                Reason.WRONG_DEVICE, f"command {cmd.id} is for {signed.device}, not {self.device}"
            )
        if not resumed and signed.expires <= self.clock():
            raise BundleRejected(
                Reason.EXPIRED,
                f"command {cmd.id} expired at {signed.expires.strftime(TIME_FORMAT)}",
            )
        if not self.mirror.wait_for_timestamp(cmd.tuf_version, timeout=METADATA_WAIT_S):
            raise BundleRejected(
                Reason.METADATA_UNAVAILABLE,
                f"TUF timestamp version {cmd.tuf_version} (command {cmd.id}) did not arrive",
            )
        self.verifier.verify_command(signed.payload(), signed.signatures)
        with self._lock:
            fresh = signed.counter > self._last or (resumed and signed.counter == self._last)
            if not fresh:
                raise BundleRejected(
                    Reason.REPLAYED,
                    f"command {cmd.id} has counter {signed.counter}; this device already "
                    f"accepted {self._last}",
                )
            self._last = signed.counter
            self._write_counter()

    def _read_counter(self) -> int:
        try:
            value = json.loads(self.counter_path.read_bytes())["counter"]
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # unreadable: nothing can be trusted to be new, until the hub's counter passes now
            log.warning(
                "%s: unreadable (%s); taking commands from now on only", self.counter_path, exc
            )
            return _now_counter()
        return int(value) if isinstance(value, int) and value >= 0 else _now_counter()

    def _write_counter(self) -> None:
        try:
            atomic_write(self.counter_path, json.dumps({"counter": self._last}).encode())
        except OSError as exc:  # kept in memory; a restart would take it from the hub's floor
            log.warning("command counter: %s", storage_error(exc, self.counter_path))


def _now_counter() -> int:
    """The hub's counters are at least the microseconds of the time it signs (see
    cloud_hub/signing/commands.py): a device that lost its counter takes only commands signed
    from now on."""
    return int(datetime.now(UTC).timestamp() * 1_000_000)
