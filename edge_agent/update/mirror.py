"""The TUF metadata the hub publishes retained on `fleet/tuf/...`, as the agent's MQTT session
received it: unverified bytes by name, for `fetcher.MqttFetcher` to hand to ngclient."""

from __future__ import annotations

import json
import threading


class TufMirror:
    """The latest TUF metadata seen on the broker, by name ('timestamp.json', 'root/2.json')."""

    def __init__(self) -> None:
        self._files: dict[str, bytes] = {}
        self._changed = threading.Condition()
        self._generation = 0

    def put(self, name: str, payload: bytes) -> None:
        with self._changed:
            if self._files.get(name) != payload:  # a retained copy seen again changes nothing
                self._files[name] = payload
                self._generation += 1
            self._changed.notify_all()

    @property
    def generation(self) -> int:
        """Counts the changes to what is held: equal numbers, the same metadata."""
        with self._changed:
            return self._generation

    def get(self, name: str) -> bytes | None:
        with self._changed:
            return self._files.get(name)

    def snapshot(self) -> tuple[int, dict[str, bytes]]:
        """What is held now, with its generation."""
        with self._changed:
            return self._generation, dict(self._files)

    def timestamp_version(self) -> int:
        """Version of the newest timestamp seen (unverified: only used to know when to look)."""
        with self._changed:
            return self._ts_unlocked()

    def wait_for_timestamp(self, version: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._ts_unlocked() >= version, timeout)

    def _ts_unlocked(self) -> int:
        raw = self._files.get("timestamp.json")
        try:
            return int(json.loads(raw)["signed"]["version"]) if raw else 0
        except (ValueError, KeyError, TypeError):
            return 0
