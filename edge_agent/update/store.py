"""The device's installed models: verified bundles on disk and the active-model record.

Installs are atomic (write, fsync, rename) and the previous model stays for rollback. The record
`active.json` names the current and previous bundles and the rollout whose deploy installed the
current one; it is replaced atomically, so a power cut leaves either the old or the new state,
never half of one.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from edge_agent.errors import ConfigError
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.messages import ModelRef
from edge_agent.system.fsutil import atomic_write, remove_leftovers

log = logging.getLogger(__name__)


@frozen
class ActiveRecord:
    current: ModelRef | None
    previous: ModelRef | None
    rollout: str | None = None  # the rollout that installed `current` (None: none did)


class ModelStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)
        for name in remove_leftovers(folder):  # a write cut short by a SIGKILL
            log.info("removed %s, left by an interrupted write", name)

    def _bundle_path(self, model: ModelRef) -> Path:
        return self.folder / f"{model.name}-{model.version}.zip"

    def record(self) -> ActiveRecord:
        path = self.folder / "active.json"
        if not path.exists():
            return ActiveRecord(None, None)
        try:
            raw = json.loads(path.read_bytes())
            rollout = raw.get("rollout")
            if rollout is not None and not isinstance(rollout, str):
                raise TypeError(f"rollout: expected a string or null, got {rollout!r}")
            return ActiveRecord(
                ModelRef(**raw["current"]) if raw.get("current") else None,
                ModelRef(**raw["previous"]) if raw.get("previous") else None,
                rollout,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: unreadable active-model record ({exc})") from exc

    def _write_record(self, record: ActiveRecord) -> None:
        body = {
            "current": record.current.to_json() if record.current else None,
            "previous": record.previous.to_json() if record.previous else None,
            "rollout": record.rollout,
        }
        atomic_write(self.folder / "active.json", json.dumps(body).encode())

    def read(self, model: ModelRef) -> bytes:
        return self._bundle_path(model).read_bytes()

    def install(self, model: ModelRef, bundle: bytes, rollout: str | None = None) -> ActiveRecord:
        """Make `model` current (installed by `rollout`); the old current becomes previous;
        older bundles are removed."""
        with self._lock:
            atomic_write(self._bundle_path(model), bundle)
            old = self.record()
            previous = old.current if old.current != model else old.previous
            new = ActiveRecord(model, previous, rollout)
            self._write_record(new)
            self._prune(new)
            return new

    def rollback(self) -> ActiveRecord:
        """Back to the previous model (or to none); the failed one is forgotten."""
        with self._lock:
            old = self.record()
            new = ActiveRecord(old.previous, None)
            self._write_record(new)
            self._prune(new)
            return new

    def _prune(self, record: ActiveRecord) -> None:
        keep = {self._bundle_path(m).name for m in (record.current, record.previous) if m}
        for path in self.folder.glob("*.zip"):
            if path.name not in keep:
                path.unlink(missing_ok=True)
