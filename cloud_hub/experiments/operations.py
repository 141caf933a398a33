"""What an engineer does to experiments (start, stop, promote), and the running hub's step.

An experiment's two models go out as two ordinary rollouts (signed commands, install gates),
each aimed at its cohort's devices (`devices:ID,...`); neither supersedes the other. The
commands only write the store; a running `edgehub serve` steps the experiments (`step_all`).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloud_hub.experiments import engine as en
from cloud_hub.experiments.design import COHORTS, balanced
from cloud_hub.experiments.samples import CohortReader, Outcomes
from cloud_hub.rollout import engine as ro
from cloud_hub.rollout.operations import (
    change_stored_rollout,
    fleet_facts,
    open_repo,
    start_rollout,
)
from cloud_hub.store.database import Store
from cloud_hub.store.url import store_url
from edge_agent.errors import ConfigError, TransportError
from edge_agent.protocol.messages import ModelRef

log = logging.getLogger(__name__)
DRAWS = 200  # experiment ids tried for cohorts that both hold devices near the split


def start_experiment(
    home: Path, a: ModelRef, b: ModelRef, target: str, plan: en.Design
) -> en.Experiment:
    """Assign the devices matching `target` to cohorts, start a rollout of each model to its
    cohort, and store the experiment."""
    if a == b:
        raise ConfigError(f"--against: expected another model than {a}, got {b}")
    selector = ro.Selector.parse(target)
    repo = open_repo(home)
    for model in (a, b):
        if model.target_path not in repo.targets():
            raise ConfigError(f"{model} is not published; run `edgehub model publish BUNDLE` first")
    store = Store(store_url(home))
    devices = sorted(d for d, facts in fleet_facts(store).items() if selector.matches(facts, d))
    if len(devices) < 2:
        raise ConfigError(
            f"--target {target}: expected at least 2 devices (one per cohort), got {len(devices)}; "
            "see `edgehub devices list`"
        )
    if plan.metric == "agreement":
        _check_serving(store, devices, a, b)
    e = _draw(a, b, target, plan, devices)
    for cohort in COHORTS:
        members = e.members(cohort)
        rows = min(1_000_000, math.ceil(e.needed / len(members)))
        r = start_rollout(
            home,
            e.models[cohort],
            "1",
            target=f"devices:{','.join(members)}",
            shadow_rows=rows if plan.metric == "agreement" else None,
            supersede=False,  # the other cohort's rollout may be of the same model name
        )
        e.rollouts[cohort] = r.id
    store.add_experiment(e.id, e.state, e.to_json())
    return e


def _draw(
    a: ModelRef, b: ModelRef, target: str, plan: en.Design, devices: list[str]
) -> en.Experiment:
    """An experiment whose id puts devices in both cohorts, near the split."""
    for _ in range(DRAWS):
        e = en.start(f"e-{uuid.uuid4().hex[:8]}", a, b, target, plan, devices, time.time())
        if balanced({c: len(e.members(c)) for c in COHORTS}, plan.split):
            return e
    raise ConfigError(
        f"--split {100 * plan.split:g}%: cannot split {len(devices)} devices into two cohorts "
        "that both hold one; choose a split nearer 50%"
    )


def _check_serving(store: Store, devices: list[str], a: ModelRef, b: ModelRef) -> None:
    """Agreement is with the model a device serves: it must be neither of the two compared."""
    for row in store.devices():
        if row["id"] in devices and row["model"] is not None:
            serving = ModelRef(row["model"], int(row["version"]))
            if serving in (a, b):
                raise ConfigError(
                    f"--metric agreement: compares each model with the one the devices serve; "
                    f"{row['id']} serves {serving}, one of the two compared (use another metric)"
                )


def load_experiment(store: Store, experiment_id: str) -> tuple[en.Experiment, int]:
    row = store.experiment(experiment_id)
    if row is None:
        raise ConfigError(
            f"no experiment with id {experiment_id!r}; `edgehub experiment list` shows them"
        )
    return en.Experiment.from_json(row["body"]), int(row["rev"])


def change_experiment(
    store: Store, experiment_id: str, change: Callable[[en.Experiment], None], attempts: int = 20
) -> en.Experiment:
    """Apply a change by hand to the stored experiment; a running hub writing it at the same
    moment makes this read it again and retry."""
    for _ in range(attempts):
        e, rev = load_experiment(store, experiment_id)
        change(e)
        if store.update_experiment(e.id, rev, e.state, e.to_json()):
            return e
    raise TransportError(
        f"experiment {experiment_id}: the store kept changing under {attempts} writes"
    )


def stop_experiment(home: Path, experiment_id: str) -> en.Experiment:
    """Stop deciding, and stop both rollouts sending (devices keep the model they got)."""
    open_repo(home)
    store = Store(store_url(home))
    e = change_experiment(store, experiment_id, en.stop)
    for rollout_id in e.rollouts.values():
        row = store.rollout(rollout_id)
        if row is not None and row["state"] in (ro.RUNNING, ro.PAUSED, ro.COMPLETED):
            change_stored_rollout(
                store, rollout_id, lambda r: ro.abort(r, f"experiment {e.id} stopped")
            )
    return e


def promote_experiment(
    home: Path, experiment_id: str, canary: str = "1", waves: str = "50%,100%"
) -> ro.Rollout:
    """A staged rollout of the winner over the experiment's target."""
    open_repo(home)
    store = Store(store_url(home))
    e, _ = load_experiment(store, experiment_id)
    model = en.winner(e)
    if e.promoted is not None:
        raise ConfigError(f"experiment {e.id} was promoted already: rollout {e.promoted}")
    r = start_rollout(home, model, canary, target=e.target, waves=waves)

    def promoted(x: en.Experiment) -> None:
        x.promoted = r.id

    change_experiment(store, e.id, promoted)
    return r


def experiment_views(home: Path) -> list[dict[str, Any]]:
    open_repo(home)
    return [
        en.view(en.Experiment.from_json(row["body"]))
        for row in Store(store_url(home)).experiments()
    ]


# ---- the running hub ------------------------------------------------------------------------
def step_all(store: Store, now: float, outcomes: Outcomes | None) -> bool:
    """Step every running experiment; True when one changed."""
    rows = store.experiments([en.RUNNING])
    if not rows:
        return False
    fleet = fleet_facts(store)
    return any([_step(store, row, now, fleet, outcomes) for row in rows])


def _step(
    store: Store,
    row: dict[str, Any],
    now: float,
    fleet: dict[str, ro.DeviceFacts],
    outcomes: Outcomes | None,
) -> bool:
    e = en.Experiment.from_json(row["body"])
    rollouts: dict[str, tuple[str, str]] = {}
    for cohort, rollout_id in e.rollouts.items():
        found = store.rollout(rollout_id)
        if found is not None:
            rollouts[cohort] = (found["state"], str(found["body"].get("halt_reason") or ""))
    before = e.to_json()
    en.step(e, now, fleet, rollouts, CohortReader(store, e, outcomes))
    changed = e.to_json() != before
    if changed and not store.update_experiment(e.id, row["rev"], e.state, e.to_json()):
        return False  # changed by hand meanwhile: the next tick steps what is stored
    if e.state != row["state"]:
        log.info("experiment %s: %s %s", e.id, e.state, (e.decision or {}).get("text") or e.reason)
    if e.state == en.RUNNING:
        _aim_rollouts(store, e)
    return changed


def _aim_rollouts(store: Store, e: en.Experiment) -> None:
    """Each cohort's rollout takes the cohort's devices (late joiners too)."""
    for cohort, rollout_id in e.rollouts.items():
        row = store.rollout(rollout_id)
        if row is None:
            continue
        members = e.members(cohort)
        aimed = ro.Selector.parse(row["body"]["plan"]["select"]).values
        if set(members) - set(aimed):
            change_stored_rollout(store, rollout_id, _adding(members))


def _adding(devices: list[str]) -> Callable[[ro.Rollout], None]:
    def change(r: ro.Rollout) -> None:
        ro.add_devices(r, devices)

    return change
