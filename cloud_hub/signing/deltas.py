"""Which delta a device gets: from the version it last reported running to the one it is sent.

A deploy (or shadow) names the full target; when the device's last status says it runs an older
version of the same model whose bundle the hub still has, the hub also names a delta from that
version (edge_agent/update/delta.py), made once per pair and signed as a TUF target of its own
(`TufRepository.add_delta`). A device that missed versions gets a delta from what it reported,
never from what the hub sent it last; one whose report was wrong finds that the delta's base is
not what it holds and fetches the full target (edge_agent/update/updater.py). A delta that
would not save enough (`max_share` of the full bundle or more) is not offered; that verdict is
kept for the life of the process.
"""

from __future__ import annotations

import logging
from typing import Any

from cloud_hub.signing.tuf_repo import TufRepository, delta_path
from edge_agent.protocol.messages import DeltaRef, ModelRef
from edge_agent.update.delta import make_delta
from edge_agent.update.digest import sha256_hex

log = logging.getLogger(__name__)

MAX_SHARE = 0.7  # a delta at least this share of the full bundle is not worth a second path


def delta_base(reported: ModelRef | None, model: ModelRef) -> ModelRef | None:
    """The version a delta to `model` starts from, for a device that reported `reported`:
    an older version of the same model, or none."""
    if reported is None or reported.name != model.name or reported.version >= model.version:
        return None
    return reported


class Deltas:
    def __init__(self, repo: TufRepository, max_share: float = MAX_SHARE) -> None:
        self.repo = repo
        self.max_share = max_share
        self._not_worth: set[tuple[ModelRef, ModelRef]] = set()

    def offer(self, reported: ModelRef | None, model: ModelRef) -> DeltaRef | None:
        """The delta to send beside `model` to a device that reported running `reported`."""
        base = delta_base(reported, model)
        if base is None or (base, model) in self._not_worth:
            return None
        targets = self.repo.targets()
        path = delta_path(base, model)
        if path in targets:
            return DeltaRef(base, path)
        if base.target_path not in targets or model.target_path not in targets:
            return None  # the base was never published here (or the model is not yet)
        old, full = (self._signed(targets, m) for m in (base, model))
        if old is None or full is None:
            return None
        delta = make_delta(old, full)
        share = len(delta) / max(len(full), 1)
        if share >= self.max_share:
            self._not_worth.add((base, model))
            log.info(
                "no delta from %s to %s: %d bytes would be %.0f%% of the %d-byte bundle "
                "(offered below %.0f%%)",
                base,
                model,
                len(delta),
                share * 100,
                len(full),
                self.max_share * 100,
            )
            return None
        self.repo.add_delta(base, model, delta)
        log.info(
            "signed delta %s: %d bytes, %.0f%% of the %d-byte bundle of %s",
            path,
            len(delta),
            share * 100,
            len(full),
            model,
        )
        return DeltaRef(base, path)

    def _signed(self, targets: dict[str, dict[str, Any]], model: ModelRef) -> bytes | None:
        """The bundle of `model` on disk, if it is the one signed (a delta is made only
        between the bytes the metadata signs)."""
        data = self.repo.read_target(model.target_path)
        if sha256_hex(data) != targets[model.target_path]["sha256"]:
            log.warning(
                "no delta from or to %s: %s on disk is not the bundle signed for it",
                model,
                model.target_path,
            )
            return None
        return data
