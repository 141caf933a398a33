"""Why a device refuses a model bundle: the one list of reason codes.

A refusal is a `rejected` event on the device's `events` topic whose reason starts with one of
these codes (`"tampered: card.json does not match the signed card digest"`); `BundleRejected`
carries it. The README's section "Keys, enrollment and what a device accepts" names each of them
(tests/test_records.py checks that it names exactly these).
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """A refusal's code; `describe` says in one line what it means."""

    TAMPERED = "tampered"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad-signature"
    REPLAYED = "replayed"
    EXPIRED = "expired"
    DOWNGRADE = "downgrade"
    TRUNCATED = "truncated"
    OVERSIZED = "oversized"
    WRONG_DEVICE = "wrong-device"
    UNKNOWN_TARGET = "unknown-target"
    MISMATCH = "mismatch"
    UNTRUSTED_METADATA = "untrusted-metadata"
    METADATA_UNAVAILABLE = "metadata-unavailable"
    NOT_ENROLLED = "not-enrolled"
    BAD_CHUNK = "bad-chunk"
    BAD_BUNDLE = "bad-bundle"
    BAD_CARD = "bad-card"
    BAD_MODEL = "bad-model"
    RUNTIME_MISSING = "runtime-missing"
    BAD_MESSAGE = "bad-message"
    UNHEALTHY = "unhealthy"

    @property
    def describe(self) -> str:
        return DESCRIPTIONS[self]


DESCRIPTIONS: dict[Reason, str] = {
    Reason.TAMPERED: "the bytes or the card do not match the signed hashes",
    Reason.UNSIGNED: "a command that carries no signature",
    Reason.BAD_SIGNATURE: "TUF metadata or a command not signed by enough of the keys for it",
    Reason.REPLAYED: "TUF metadata older than what the device trusts, or a command it already had",
    Reason.EXPIRED: "TUF metadata or a command past its expiry date",
    Reason.DOWNGRADE: "an older version of the model the device runs, not signed as a rollback",
    Reason.TRUNCATED: "fewer bytes arrived than the signed length",
    Reason.OVERSIZED: "more bytes than the signed length, or than the device accepts",
    Reason.WRONG_DEVICE: "a command or an encrypted transfer meant for another device",
    Reason.UNKNOWN_TARGET: "the command names a target the signed metadata does not hold",
    Reason.MISMATCH: "the command, the signed target and the card name different models",
    Reason.UNTRUSTED_METADATA: "TUF metadata the device cannot trust for another reason",
    Reason.METADATA_UNAVAILABLE: "the TUF metadata the command needs did not arrive",
    Reason.NOT_ENROLLED: "an encrypted transfer for a device without an identity",
    Reason.BAD_CHUNK: "a sealed chunk that does not authenticate",
    Reason.BAD_BUNDLE: "not a bundle: a zip without card.json and the model file",
    Reason.BAD_CARD: "a model card that does not validate",
    Reason.BAD_MODEL: "a model file the runtime cannot load or run",
    Reason.RUNTIME_MISSING: "the card's runtime is not installed on the device",
    Reason.BAD_MESSAGE: "a command or metadata message that does not match the wire contract",
    Reason.UNHEALTHY: "a shadow candidate that failed the health gate",
}
