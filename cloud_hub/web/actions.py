"""Write actions on a rollout (the dashboard's buttons): the rollout engine's own by-hand changes
(`cloud_hub.rollout.engine.MANUAL`: pause, resume, abort, rollback), written with the same revision
check
as `edgehub rollout pause|resume|abort|rollback`, so a button never overwrites what the running
hub wrote in between and the hub never overwrites a button.
"""

from __future__ import annotations

from typing import Any

from cloud_hub.rollout import engine as ro
from cloud_hub.rollout.operations import change_stored_rollout
from cloud_hub.store.database import Store
from edge_agent.errors import BadDataError, ConfigError

ACTIONS = tuple(ro.MANUAL)


class NoSuchRollout(BadDataError):
    """The rollout id names no stored rollout."""


class ActionRefused(BadDataError):
    """The rollout is in a state the action does not apply to."""


def apply_action(store: Store, rollout_id: str, action: str) -> dict[str, Any]:
    """Apply `action` to a stored rollout; returns {id, action, previous_state, state}."""
    change = ro.MANUAL.get(action)
    if change is None:
        raise ActionRefused(f"action: expected one of {', '.join(ACTIONS)}, got {action!r}")
    row = store.rollout(rollout_id)
    if row is None:
        raise NoSuchRollout(f"no rollout with id {rollout_id!r}")
    try:
        r = change_stored_rollout(store, rollout_id, change)
    except ConfigError as exc:
        raise ActionRefused(str(exc)) from exc
    return {"id": rollout_id, "action": action, "previous_state": row["state"], "state": r.state}
