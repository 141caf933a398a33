"""The project's two error families, drawn once.

EdgefleetError
 +-- BadDataError          untrusted or malformed data: the input is wrong, retrying won't help
 |    +-- ConfigError      a config or profile file that does not validate
 |    +-- MessageError     an MQTT payload that does not match the wire contract
 |    +-- BundleRejected   a model bundle that failed verification (carries a reason code)
 |    +-- SensorLineError  a sensor line that cannot become a feature vector (carries a reason code)
 +-- TransportError        the outside world is unavailable: broker gone, port unplugged
      +-- StorageError     the device's own disk refused a write: full, read-only (a reason code)
"""

from __future__ import annotations

from edge_agent.protocol.reasons import Reason


class EdgefleetWarning(UserWarning):
    """Warnings the project itself emits (turned into errors in the test suite)."""


class EdgefleetError(Exception):
    """Base of every error the project raises on purpose."""


class BadDataError(EdgefleetError):
    """Data that is wrong or untrusted."""


class ConfigError(BadDataError):
    """A configuration that does not validate: says where, what was expected, what was found."""


class MessageError(BadDataError):
    """A payload that does not match the wire contract."""


class BundleRejected(BadDataError):
    """A model bundle that must not be installed. `reason` says why, in one code of the one
    list (edge_agent.protocol.reasons)."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SensorLineError(BadDataError):
    """A sensor line rejected by the parser. `reason` is the counter it is counted under."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TransportError(EdgefleetError):
    """Broker, serial port or disk not reachable right now; may succeed later."""


# StorageError.reason -> what a person reads
STORAGE_REASONS = {
    "disk-full": "disk full",
    "read-only": "read-only file system",
    "permission": "permission denied",
    "io-error": "disk I/O error",
    "corrupt": "corrupt database",
    "write-failed": "cannot write",
}


class StorageError(TransportError):
    """The state folder or the buffer cannot be written now (a full or read-only disk, a
    permission taken away, an I/O error); may succeed later. `reason` is a key of
    STORAGE_REASONS, `where` the file or folder, `detail` what the system said."""

    def __init__(self, reason: str, where: str, detail: str) -> None:
        super().__init__(f"{STORAGE_REASONS.get(reason, reason)}: {where}: {detail}")
        self.reason = reason
        self.where = where
        self.detail = detail
