"""The TUF check, in a process of its own for one update cycle (`python -m
edge_agent.update.tuf_check TUF_DIR`), so the agent never loads python-tuf.

python-tuf with securesystemslib and cryptography is about 19 MB resident, which an imported
module keeps for the life of the daemon: a device that took one update would carry it ever
after. `edge_agent.update.verify.Verifier` starts this process when a cycle needs the metadata
and ends it with the cycle; every trust decision is still ngclient's, made here.

Requests and replies are JSON lines on stdin and stdout, one reply per request:

- {"op": "refresh", "files": {name: base64}}: an ngclient Updater over these files (what the
  agent's TufMirror holds), refreshed; ngclient keeps what it verified in TUF_DIR.
- {"op": "target", "path": p}: the refreshed metadata's entry for `p`, as {"length", "hashes",
  "custom"}, or null when it lists none.
- {"op": "command", "payload": base64, "signatures": {keyid: hex}}: the signatures must sign
  the payload with the key the verified targets metadata delegates `commands` to.

A reply is {"ok": true, ...} or {"reason": <protocol.reasons.Reason>, "detail": "..."}, with
the request's "id". The replies have the process's stdout to themselves: from `main` on, what
anything else prints goes to stderr (a line printed before, at the interpreter's start, carries
no id, and the agent skips it).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, Signature, Targets
from tuf.ngclient import Updater, UpdaterConfig

from edge_agent.protocol.commands import COMMAND_ROLE
from edge_agent.protocol.reasons import Reason
from edge_agent.update.fetcher import METADATA_URL, MqttFetcher
from edge_agent.update.mirror import TufMirror


class Refused(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def reason_of(exc: Exception) -> Reason:
    if isinstance(exc, tuf_exc.ExpiredMetadataError):
        return Reason.EXPIRED
    if isinstance(exc, tuf_exc.BadVersionNumberError):
        return Reason.REPLAYED
    if isinstance(exc, tuf_exc.UnsignedMetadataError):
        return Reason.BAD_SIGNATURE
    if isinstance(exc, tuf_exc.LengthOrHashMismatchError):
        return Reason.TAMPERED
    if isinstance(exc, tuf_exc.DownloadError):
        return Reason.METADATA_UNAVAILABLE
    return Reason.UNTRUSTED_METADATA


class Check:
    """One cycle's ngclient Updater over the metadata the agent sent."""

    def __init__(self, tuf_dir: Path) -> None:
        self.tuf_dir = tuf_dir
        self.updater: Updater | None = None

    def refresh(self, files: dict[str, str]) -> dict[str, Any]:
        self.updater = None  # a refresh that fails leaves nothing to use
        mirror = TufMirror()
        for name, data in files.items():
            mirror.put(name, base64.b64decode(data))
        updater = Updater(
            metadata_dir=str(self.tuf_dir),
            metadata_base_url=METADATA_URL,
            fetcher=MqttFetcher(mirror),
            config=UpdaterConfig(prefix_targets_with_hash=False),
            bootstrap=None,
        )
        try:
            updater.refresh()
        except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as exc:
            raise Refused(reason_of(exc), f"TUF metadata: {exc}") from exc
        self.updater = updater
        return {}

    def _refreshed(self) -> Updater:
        if self.updater is None:
            raise Refused(Reason.UNTRUSTED_METADATA, "TUF metadata: not refreshed")
        return self.updater

    def target(self, path: str) -> dict[str, Any]:
        try:
            info = self._refreshed().get_targetinfo(path)
        except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as exc:
            raise Refused(reason_of(exc), f"TUF metadata: {exc}") from exc
        if info is None:
            return {"target": None}
        return {"target": {"length": info.length, "hashes": info.hashes, "custom": info.custom}}

    def command(self, payload: str, signatures: dict[str, str]) -> dict[str, Any]:
        self._refreshed()  # ngclient keeps what it verified as targets.json
        targets = Metadata[Targets].from_file(str(self.tuf_dir / "targets.json")).signed
        sigs = {keyid: Signature(keyid, sig) for keyid, sig in signatures.items()}
        try:
            targets.verify_delegate(COMMAND_ROLE, base64.b64decode(payload), sigs)
        except tuf_exc.UnsignedMetadataError as exc:
            raise Refused(
                Reason.BAD_SIGNATURE, f"command: not signed by the hub's command key ({exc})"
            ) from exc
        except ValueError as exc:  # metadata of a hub that did not sign commands yet
            raise Refused(
                Reason.UNTRUSTED_METADATA, f"targets metadata delegates no command key: {exc}"
            ) from exc
        return {}

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        return {**self._answer(request), "id": request.get("id")}

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        try:
            if op == "refresh":
                out = self.refresh(request["files"])
            elif op == "target":
                out = self.target(request["path"])
            elif op == "command":
                out = self.command(request["payload"], request["signatures"])
            else:
                return {"reason": Reason.UNTRUSTED_METADATA, "detail": f"unknown request {op!r}"}
        except Refused as exc:
            return {"reason": exc.reason, "detail": str(exc)}
        except Exception as exc:  # metadata ngclient chokes on is not trusted; the check goes on
            detail = f"TUF check: {type(exc).__name__}: {exc}"
            return {"reason": Reason.UNTRUSTED_METADATA, "detail": detail}
        return {"ok": True, **out}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m edge_agent.update.tuf_check TUF_DIR", file=sys.stderr)
        return 2
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print cannot pass for a reply
    sys.stdout = sys.stderr
    check = Check(Path(argv[0]))
    for line in sys.stdin:
        replies.write(json.dumps(check.answer(json.loads(line))) + "\n")
        replies.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
