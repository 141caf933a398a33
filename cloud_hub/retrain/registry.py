"""Policies and runs in the hub's store (tables `retrain_policies` and `retrain_runs`)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import delete, insert, select, update

from cloud_hub.retrain.policy import Policy
from cloud_hub.store.database import Store, retrain_policies, retrain_runs
from edge_agent.protocol.frozen import frozen

# run states: where a run is, and where it ended
RUNNING = "running"
AWAITING = "awaiting-approval"
ROLLING_OUT = "rolling-out"
FAILED = "failed"  # the command failed or timed out, the export or conversion went wrong
REFUSED = "refused"  # validation found the candidate worse than the serving model
OPEN = (RUNNING, AWAITING)  # a policy with an open run does not fire again


@dataclass
class Run:
    id: str
    policy: str
    model: str
    trigger: str
    state: str = RUNNING
    dataset: str = ""
    serving: str = ""  # MODEL@VERSION the data set was taken for
    candidate: str = ""  # MODEL@VERSION of the retrained model
    verdict: str = ""
    reason: str = ""
    rollout: str = ""
    folder: str = ""  # the run's folder under HOME/retrain/runs
    created: float = 0.0
    validation: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Run:
        known = {k: v for k, v in obj.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@frozen
class StoredPolicy:
    policy: Policy
    created: float
    last_fired: float


def add_policy(store: Store, policy: Policy, created: float | None = None) -> None:
    """Store a new policy; labels received before `created` (default: now) are not new to it."""
    with store.engine.begin() as conn:
        conn.execute(
            insert(retrain_policies).values(
                id=policy.id,
                model=policy.model,
                created=time.time() if created is None else created,
                last_fired=0.0,
                body=policy.to_json(),
            )
        )


def policies(store: Store) -> list[StoredPolicy]:
    q = select(retrain_policies).order_by(retrain_policies.c.created)
    with store.engine.connect() as conn:
        rows = conn.execute(q).mappings().all()
    return [
        StoredPolicy(Policy.from_json(r["body"]), float(r["created"]), float(r["last_fired"]))
        for r in rows
    ]


def remove_policy(store: Store, policy_id: str) -> bool:
    with store.engine.begin() as conn:
        done = conn.execute(delete(retrain_policies).where(retrain_policies.c.id == policy_id))
    return bool(done.rowcount)


def claim_firing(store: Store, policy_id: str, before: float, at: float) -> bool:
    """Record that the policy fired at `at`, if nobody recorded a firing since `before` (two
    hubs, or a hub and `edgehub retrain check`, checking at once fire it once)."""
    with store.engine.begin() as conn:
        done = conn.execute(
            update(retrain_policies)
            .where(retrain_policies.c.id == policy_id, retrain_policies.c.last_fired == before)
            .values(last_fired=at)
        )
    return bool(done.rowcount == 1)


def save_run(store: Store, run: Run) -> None:
    """Insert the run, or write its new state."""
    now = time.time()
    with store.engine.begin() as conn:
        exists = conn.execute(select(retrain_runs.c.id).where(retrain_runs.c.id == run.id)).first()
        if exists is None:
            conn.execute(
                insert(retrain_runs).values(
                    id=run.id,
                    policy=run.policy,
                    state=run.state,
                    created=run.created or now,
                    updated=now,
                    body=run.to_json(),
                )
            )
        else:
            conn.execute(
                update(retrain_runs)
                .where(retrain_runs.c.id == run.id)
                .values(state=run.state, updated=now, body=run.to_json())
            )


def runs(store: Store, policy: str | None = None) -> list[Run]:
    q = select(retrain_runs.c.body).order_by(retrain_runs.c.created)
    if policy is not None:
        q = q.where(retrain_runs.c.policy == policy)
    with store.engine.connect() as conn:
        return [Run.from_json(r[0]) for r in conn.execute(q).all()]


def run(store: Store, run_id: str) -> Run | None:
    q = select(retrain_runs.c.body).where(retrain_runs.c.id == run_id)
    with store.engine.connect() as conn:
        row = conn.execute(q).first()
    return Run.from_json(row[0]) if row else None
