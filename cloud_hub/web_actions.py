"""Write actions on a rollout (the dashboard's buttons): set its state in the store.

The hub steps only rollouts whose state is `running` (cloud_hub/service.py), so each action is a
state the rollout engine honours by that rule alone or picks up on its next tick:

  pause     running -> paused            no further wave is started, nothing more is sent
  resume    paused -> running            the engine carries on where it stopped
  abort     running, paused -> aborted   final: nothing more is sent; devices keep what they run
  rollback  running, paused, halted, completed -> rolling-back
            the engine sends `rollback` to the devices the rollout reached

The change is a compare-and-set on the stored state, so an action never overwrites a state the
engine wrote in between; the stored body's `state` and `halt_reason` say what happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cloud_hub.storage import Store
from edge_agent.errors import BadDataError

PAUSED, ABORTED, ROLLING_BACK = "paused", "aborted", "rolling-back"


@dataclass(frozen=True)
class Action:
    allowed_from: frozenset[str]
    to: str
    note: str


ACTIONS = {
    "pause": Action(frozenset({"running"}), PAUSED, "paused from the dashboard"),
    "resume": Action(frozenset({PAUSED}), "running", ""),
    "abort": Action(frozenset({"running", PAUSED}), ABORTED, "aborted from the dashboard"),
    "rollback": Action(
        frozenset({"running", PAUSED, "halted", "completed"}),
        ROLLING_BACK,
        "rollback requested from the dashboard",
    ),
}


class NoSuchRollout(BadDataError):
    """The rollout id names no stored rollout."""


class ActionRefused(BadDataError):
    """The rollout is in a state the action does not apply to."""


def apply_action(store: Store, rollout_id: str, action: str) -> dict[str, Any]:
    """Apply `action` to a stored rollout; returns {id, action, previous_state, state}."""
    if action not in ACTIONS:
        raise ActionRefused(f"action: expected one of {', '.join(ACTIONS)}, got {action!r}")
    rule = ACTIONS[action]
    for _ in range(3):  # the engine may write between our read and our write: read again
        row = store.rollout(rollout_id)
        if row is None:
            raise NoSuchRollout(f"no rollout with id {rollout_id!r}")
        state = str(row["state"])
        if state not in rule.allowed_from:
            raise ActionRefused(
                f"rollout {rollout_id}: {action} applies to a rollout that is "
                f"{' or '.join(sorted(rule.allowed_from))}, this one is {state}"
            )
        body = {**row["body"], "state": rule.to, "halt_reason": rule.note}
        if store.swap_rollout(rollout_id, state, rule.to, body):
            return {"id": rollout_id, "action": action, "previous_state": state, "state": rule.to}
    raise ActionRefused(f"rollout {rollout_id}: its state keeps changing; try again")
