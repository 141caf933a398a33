"""Hub -> device commands as they travel on dev/{id}/cmd: signed, numbered, dated.

    {"v": 1,
     "signed": {<the Command's fields>, "device": ID, "counter": N, "expires": "...Z"},
     "signatures": [{"keyid": HEX, "sig": HEX}]}

The signatures cover the canonical bytes of "signed" as it arrived (`canonical`: keys sorted, no
spaces, UTF-8; the body holds only strings, integers, booleans and null, so these bytes are
unique), fields this agent does not know included. The
key is the hub's command key, which the TUF targets metadata delegates the role `commands` to
(cloud_hub/signing/tuf_repo.py), so the device trusts it through its TUF root and a rotation
reaches it like any metadata change. The device checks the signature, that the command names
it, the expiry, and that the counter is above the last one it accepted
(edge_agent/update/commands.py). A broker credential alone can therefore neither forge nor
replay a command.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from edge_agent.errors import BundleRejected, MessageError
from edge_agent.protocol.fields import field_of, matching, type_name
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.messages import Command, command_from_json, dump_json, load_json
from edge_agent.protocol.reasons import Reason

COMMAND_ROLE = "commands"  # the TUF role (delegated by targets) whose key signs commands
MAX_SIGNATURES = 8
_HEX = re.compile(r"[0-9a-f]{1,256}")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def canonical(obj: dict[str, Any]) -> bytes:
    """The bytes a signature covers."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def command_body(cmd: Command, device: str, counter: int, expires: datetime) -> dict[str, Any]:
    """What the hub signs: the command, for one device, numbered and dated."""
    return {
        **cmd.to_json(),
        "device": device,
        "counter": counter,
        "expires": expires.strftime(TIME_FORMAT),
    }


@frozen
class SignedCommand:
    body: dict[str, Any]  # "signed", exactly as signed
    command: Command
    device: str  # the one device it is for
    counter: int  # above every counter the hub gave this device before
    expires: datetime  # UTC, whole seconds
    signatures: dict[str, str]  # keyid -> signature, hex

    def payload(self) -> bytes:
        """What the signatures sign."""
        return canonical(self.body)

    def to_bytes(self) -> bytes:
        sigs = [{"keyid": k, "sig": s} for k, s in sorted(self.signatures.items())]
        return dump_json({"signed": self.body, "signatures": sigs})


def decode_signed_command(payload: bytes) -> SignedCommand:
    """A signed command's envelope, read (not yet verified: edge_agent/update/commands.py).
    A command without signatures is refused as `unsigned`; one that does not parse as
    `bad-message` (MessageError)."""
    where = "command"
    obj = load_json(payload, where)
    if "signed" not in obj or "signatures" not in obj:
        raise BundleRejected(
            Reason.UNSIGNED,
            f'{where}: expected {{"signed": ..., "signatures": [...]}} from the hub, '
            f"got an object with {', '.join(sorted(obj)) or 'no fields'}",
        )
    body = field_of(obj, "signed", dict, where)
    raw_sigs = field_of(obj, "signatures", list, where)
    if not raw_sigs:
        raise BundleRejected(Reason.UNSIGNED, f"{where}.signatures: expected a signature, got none")
    if len(raw_sigs) > MAX_SIGNATURES:
        raise MessageError(
            f"{where}.signatures: expected at most {MAX_SIGNATURES}, got {len(raw_sigs)}"
        )
    signatures: dict[str, str] = {}
    for i, sig in enumerate(raw_sigs):
        at = f"{where}.signatures[{i}]"
        if not isinstance(sig, dict):
            raise MessageError(f"{at}: expected an object, got {type_name(sig)}")
        keyid = matching(field_of(sig, "keyid", str, at), _HEX, f"{at}.keyid", "hex")
        signatures[keyid] = matching(field_of(sig, "sig", str, at), _HEX, f"{at}.sig", "hex")
    at = f"{where}.signed"
    counter = field_of(body, "counter", int, at)
    if counter < 1:
        raise MessageError(f"{at}.counter: expected an integer >= 1, got {counter}")
    expires = field_of(body, "expires", str, at)
    try:
        when = datetime.strptime(expires, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError as exc:
        raise MessageError(
            f"{at}.expires: expected a UTC time like 2026-12-31T23:59:59Z, got {expires!r:.40}"
        ) from exc
    return SignedCommand(
        body=body,
        command=command_from_json(body, at),
        device=field_of(body, "device", str, at),
        counter=counter,
        expires=when,
        signatures=signatures,
    )
