"""The dashboard's experiments: `GET /api/experiments` and `GET /api/experiments/{id}`, each
experiment as `cloud_hub.experiments.engine.view` shows it (the CLI's `--json` too)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from cloud_hub.experiments import engine as en
from cloud_hub.store.database import Store

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ExperimentId = Annotated[str, PathParam(pattern=ID_PATTERN, description="an experiment id")]


class CohortOut(BaseModel):
    cohort: Literal["A", "B"] = Field(
        description="A runs the candidate, B the model it is compared with"
    )
    model: str
    rollout: str | None = Field(description="the rollout that deploys the cohort's model")
    devices: list[str]
    n: int = Field(description="samples so far: rows for a rate, telemetry windows for p95")
    value: float | None = Field(description="the metric on the cohort")
    low: float | None = Field(description="its interval, once decided")
    high: float | None


class ExperimentOut(BaseModel):
    id: str
    state: Literal["running", "decided", "stopped", "failed"]
    models: str = Field(description='"A vs B"')
    metric: Literal["accuracy", "agreement", "error-rate", "p95"]
    better: Literal["higher", "lower"]
    target: str
    split: float = Field(description="the candidate's share of the devices")
    effect: float = Field(description="the smallest difference the test is powered to find")
    alpha: float
    power: float
    needed: int = Field(description="the samples each cohort needs before the one decision")
    created: float
    deadline: float = Field(description="epoch s: without the samples by then, no difference")
    cohorts: list[CohortOut]
    test: str | None = Field(description="the stated test, once decided")
    difference: float | None = Field(description="A - B")
    low: float | None = Field(description="the interval on the difference")
    high: float | None
    p_value: float | None = Field(description="two-proportion z-test, for reference (rates)")
    decision: str | None
    outcome: Literal["winner", "no-difference", "underpowered"] | None
    winner: str | None
    reason: str = Field(description="why it stopped or failed")
    promoted: str | None = Field(description="the rollout of the winner, once promoted")


class ExperimentsOut(BaseModel):
    experiments: list[ExperimentOut]


def add_routes(
    app: FastAPI,
    store: Store,
    reads: dict[str, Any],
    errors: Callable[..., dict[int | str, dict[str, Any]]],
) -> None:
    """The read routes, behind `reads` (the token) like every other."""

    def view(row: dict[str, Any]) -> dict[str, Any]:
        return en.view(en.Experiment.from_json(row["body"]))

    @app.get(
        "/api/experiments",
        response_model=ExperimentsOut,
        responses=errors(401, 403),
        description="Experiments between two models, newest first.",
        **reads,
    )
    def experiments() -> dict[str, Any]:
        return {"experiments": [view(row) for row in reversed(store.experiments())]}

    @app.get(
        "/api/experiments/{experiment}",
        response_model=ExperimentOut,
        responses=errors(401, 403, 404, 422),
        **reads,
    )
    def experiment(experiment: ExperimentId) -> dict[str, Any]:
        row = store.experiment(experiment)
        if row is None:
            raise HTTPException(
                404, f"no experiment with id {experiment!r}; GET /api/experiments lists them"
            )
        return view(row)
