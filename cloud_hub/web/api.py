"""The hub's dashboard: a JSON API (OpenAPI at /openapi.json), /metrics, and the page itself.

FastAPI, because the response models below are both the validation of what we send and the
published OpenAPI description; the page is plain HTML + JS in cloud_hub/web/static (no build
step) and polls the API once a second. Reads need the bearer token unless `open_reads`; writes
always need it.
"""

from __future__ import annotations

import hmac
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud_hub.drift.source import FleetQuery, PublishedCards, read_fleet_drift
from cloud_hub.quality.labels import FROM_API
from cloud_hub.quality.report import MetricsQuery, quality_report
from cloud_hub.store.database import Store
from cloud_hub.web import views
from cloud_hub.web.actions import ACTIONS, ActionRefused, NoSuchRollout, apply_action
from cloud_hub.web.experiments import add_routes as add_experiment_routes
from cloud_hub.web.fleet_rows import FleetRows
from cloud_hub.web.metrics import registry_for
from cloud_hub.web.rollouts import soaking_metrics
from edge_agent.errors import ConfigError
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.records import MAX_LABELS

STATIC = Path(__file__).parent / "static"
Severity = Literal["ok", "warn", "alert"]
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_POINTS = 5000


@frozen
class WebAuth:
    token: str
    open_reads: bool = False


# ---- response models (the OpenAPI description) ----------------------------------------------
class ErrorOut(BaseModel):
    error: str = Field(description="what was expected, what arrived and where")


class StorageOut(BaseModel):
    ok: bool = Field(description="false while the device cannot write its state folder or buffer")
    error: str | None = Field(description="what failed, while not ok")
    reasons: list[str] = Field(description='why, as codes: "disk-full", "read-only", ...')
    since: float | None = Field(description="epoch seconds the trouble began, while not ok")
    unkept: dict[str, int] = Field(
        description="records the device inferred but could not keep since it started, per kind"
    )


class InputOut(BaseModel):
    name: str
    open: bool
    lost: int = Field(description="times its serial port went away since the agent started")
    reopened: int
    idle_s: float = Field(description="seconds since its last line (or since it started)")
    no_input: bool = Field(description="idle past the device's telemetry.no_input_s")


class DeviceOut(BaseModel):
    id: str
    status: Literal["online", "offline", "never seen"]
    online: bool
    profile: str
    model: str | None
    version: int | None
    agent_version: str
    boot: int
    last_seen: float | None = Field(description="epoch seconds of the last message, if any")
    inferences: int
    dropped: int = Field(description="records the device's buffer dropped past its cap")
    refused: dict[str, int] = Field(
        description="what the hub refused of the device, per reason: rate (messages past its "
        "rate), quota (records past its storage quota); the device keeps and resends them"
    )
    buffered: int
    input: str = Field(
        description='its inputs in a phrase: "ok", "no input 75s", "input closed", '
        '"port lost x3", some of these, "-" (none configured) or "unreadable"'
    )
    inputs: list[InputOut] = Field(description="each input as the last status told")
    latency_p95_ms: float | None = Field(description="from the newest telemetry window")
    drift_status: str | None
    drift_max_psi: float | None
    worst_feature: str | None
    storage: StorageOut | None = Field(
        description="the device's own storage, as its last status said (null: it did not say)"
    )
    severity: Severity = Field(
        description="alert: drift alert or storage failing; warn: drift warn, offline or an "
        "input in trouble; ok otherwise"
    )
    concerns: list[str] = Field(description='why, worst first: "drift alert", "offline", ...')


class FleetOut(BaseModel):
    now: float
    fleet: int = Field(description="devices the hub knows")
    total: int = Field(description="devices matching the filters (the pages hold them)")
    offset: int
    limit: int
    counts: dict[Severity, int] = Field(
        description="devices of the model filter per severity (what each severity filter shows)"
    )
    devices: list[DeviceOut] = Field(description="this page of the matching devices")


class VersionLatency(BaseModel):
    p50: float | None = Field(description="row-weighted median of the windows' p50")
    p95: float | None = Field(description="row-weighted median of the windows' p95")


class VersionOut(BaseModel):
    model: str
    version: int | None
    label: str = Field(description="NAME@VERSION")
    devices: int = Field(description="devices running it")
    online: int
    windows: int = Field(description="online devices whose newest window is of this version")
    rows_per_s: float = Field(description="rows inferred per second, summed over those windows")
    errors_per_s: float = Field(description="rejected lines per second, summed likewise")
    error_rate: float | None = Field(description="errors per inferred row in those windows")
    latency_ms: VersionLatency
    drift_warn: int = Field(description="devices whose newest drift report warns")
    drift_alert: int = Field(description="devices whose newest drift report alerts")


class VersionsOut(BaseModel):
    now: float
    versions: list[VersionOut]


class SeriesPoint(BaseModel):
    ts: float = Field(description="start of the bucket (epoch s)")
    rows_per_s: float
    error_rate: float | None = Field(description="errors per inferred row (null: no rows)")
    alerts: int = Field(description="drift reports that alerted")


class Series(BaseModel):
    model: str = Field(description='"fleet" (every device) or NAME@VERSION')
    points: list[SeriesPoint]


class FleetSeriesOut(BaseModel):
    now: float
    since_s: float
    bucket_s: float
    series: list[Series]


class Latency(BaseModel):
    p50: float | None
    p95: float | None
    p99: float | None


class TelemetryPoint(BaseModel):
    ts: float
    model: str | None
    window_s: float | None
    count: int | None
    throughput_per_s: float | None
    latency_ms: Latency
    errors: int
    errors_by_reason: dict[str, int]


class TelemetryOut(BaseModel):
    device: str
    points: list[TelemetryPoint]


class DriftRow(BaseModel):
    device: str
    model: str | None
    ts: float
    status: str | None
    max_psi: float | None
    psi: dict[str, float]
    levels: dict[str, Literal["ok", "warn", "alert", "unknown"]]


class Thresholds(BaseModel):
    warn: float = Field(description="a feature warns when its adjusted p-value (q) is below this")
    alert: float = Field(description="... and alerts below this")


class DriftMapOut(BaseModel):
    features: list[str]
    rows: list[DriftRow]
    thresholds: Thresholds


class FleetCell(BaseModel):
    p: float = Field(description="the feature's chi-square p-value over the merged counts")
    q: float | None = Field(description="Benjamini-Hochberg adjusted across the family")
    psi: float | None
    score: float | None = Field(description="-log10 p: 2 is p = 0.01, higher is surer")
    level: Literal["ok", "warn", "alert", "unknown"] = Field(description="q against the levels")


class FleetCohortRow(BaseModel):
    cohort: str = Field(description='"fleet", "group:NAME" or "tag:NAME"')
    status: Literal["ok", "warn", "alert", "unknown"]
    p: float | None = Field(description="the family's p-value (Simes) of the merged counts")
    score: float | None = Field(description="-log10 p")
    devices: int
    windows: int
    rows: int = Field(description="rows merged (the reference's rows bound the power)")
    reference_rows: int
    moved: list[str]
    skipped: dict[str, int] = Field(
        description='reports not merged, by why: "no counts" (older agents), "no card", ...'
    )
    note: str
    cells: dict[str, FleetCell]


class FleetModelMap(BaseModel):
    model: str
    features: list[str]
    rows: list[FleetCohortRow]


class FleetDriftOut(BaseModel):
    now: float
    since_s: float
    models: list[FleetModelMap]


class DriftPoint(BaseModel):
    ts: float
    psi: float


class DriftSeriesOut(BaseModel):
    device: str
    features: dict[str, list[DriftPoint]]


class RolloutDevice(BaseModel):
    id: str
    state: str
    reason: str


class RolloutWave(BaseModel):
    number: int
    state: Literal["pending", "in progress", "soaking", "done", "failed"] = Field(
        description="soaking: every device healthy, the wave's gate not judged yet"
    )
    devices: list[RolloutDevice]


class GateCheck(BaseModel):
    wave: int = Field(description="counted from 1")
    gate: Literal["gate", "shadow gate"]
    name: str = Field(description="failures, healthy, p95_ms, error_rate, max_psi, ...")
    label: str = Field(description="what it measures, for people")
    value: float | None = Field(description="what was measured (null: no data yet)")
    limit: float | None
    relation: Literal["<=", ">="] = Field(description="the value passes when value RELATION limit")
    passed: bool | None = Field(description="null: no data to judge yet")
    live: bool = Field(description="the wave under way, as it stands now (not a verdict yet)")


class SoakOut(BaseModel):
    wave: int
    soak_s: float
    ends_at: float = Field(description="epoch s")
    seconds_left: int


class RolloutOut(BaseModel):
    id: str
    state: str
    model: str | None
    created: float
    updated: float
    wave: int | None = Field(description="the current wave, counted from 1")
    waves: list[RolloutWave]
    progress: dict[str, int] = Field(description="devices by state")
    halt_reason: str
    checks: list[GateCheck] = Field(
        description="each wave's gate checks; live for the one under way"
    )
    soak: SoakOut | None = Field(description="the soak of the wave under way (null: none soaks)")
    gates: dict[str, Any] = Field(description="`gates` / `gate_results` as the engine stored them")
    body: dict[str, Any] = Field(description="the rollout as stored")


class RolloutsOut(BaseModel):
    rollouts: list[RolloutOut]


class ActionOut(BaseModel):
    id: str
    action: str
    previous_state: str
    state: str


class LabelIn(BaseModel):
    prediction: Any = Field(description="the prediction id DEVICE/BOOT/ROW, e.g. pi-01/3/1520")
    label: Any = Field(description="the true class label (a string or an integer) or value")


class LabelsOut(BaseModel):
    received: int = Field(description="labels in the request")
    outcomes: dict[str, int] = Field(
        description="how many were joined, late (kept until their window arrives), partial, "
        "duplicate, unknown, foreign or malformed (README: ground truth)"
    )


class MetricValue(BaseModel):
    value: float
    low: float | None = Field(description="the 95% interval's lower end (null: one label)")
    high: float | None


class QualityRow(BaseModel):
    model: str
    version: int
    task: Literal["classification", "regression", "anomaly"]
    by: Literal["version", "device", "cohort"]
    group: str = Field(description='"fleet", a device id, or "group:NAME" / "tag:NAME"')
    bucket: float | None = Field(description="start of the time bucket (epoch s), with bucket_s")
    labels: int = Field(description="labels joined to this row's predictions")
    used: int = Field(description="labels the metrics use (a regressor's need a number)")
    accuracy: MetricValue | None = Field(
        description="classifiers and anomaly models; Wilson interval"
    )
    precision: MetricValue | None = Field(
        description="macro (anomaly models: of the anomaly flags); bootstrap interval"
    )
    recall: MetricValue | None = Field(
        description="macro (anomaly models: of the anomaly flags); bootstrap interval"
    )
    f1: MetricValue | None = Field(
        description="macro (anomaly models: of the anomaly flags); bootstrap interval"
    )
    rmse: MetricValue | None = Field(description="regressors; normal approximation")
    mae: MetricValue | None = Field(description="regressors; normal approximation")
    floor: float | None = Field(description="the accuracy floor of this model (null: none)")
    alert: bool = Field(description="the 99% interval's upper end is below the floor")


class LabelCountsOut(BaseModel):
    counts: dict[str, dict[str, int]] = Field(description="source -> outcome -> labels so far")
    states: dict[str, int] = Field(description="pending, joined, partial, unknown -> labels")


class FloorsOut(BaseModel):
    default: float | None
    per_model: dict[str, float]


class MetricsOut(BaseModel):
    now: float
    since_s: float
    by: str
    bucket_s: float | None
    floors: FloorsOut
    rows: list[QualityRow]
    alerts: list[str] = Field(description="model versions below their accuracy floor")
    labels: LabelCountsOut


MAX_BUCKETS = 500

bearer = HTTPBearer(auto_error=False, description="the hub's dashboard token")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
DeviceId = Annotated[str, PathParam(pattern=ID_PATTERN, description="a device id")]
RolloutId = Annotated[str, PathParam(pattern=ID_PATTERN, description="a rollout id")]
Since = Annotated[
    float, Query(ge=0, allow_inf_nan=False, description="only records stamped after (epoch s)")
]
Limit = Annotated[int, Query(ge=1, le=MAX_POINTS, description="at most this many, the newest")]
Feature = Annotated[str | None, Query(max_length=200, description="only this feature")]
ModelName = Annotated[str | None, Query(max_length=64, description="only devices running it")]
Action = Literal["pause", "resume", "abort", "rollback"]
PageLimit = Annotated[int, Query(ge=1, le=views.MAX_PAGE, description="devices per page")]
Offset = Annotated[int, Query(ge=0, description="devices to skip (a page starts there)")]
SeverityFilter = Annotated[
    list[Severity] | None, Query(description="only these severities (repeat it for more)")
]
VersionFilter = Annotated[
    str | None,
    Query(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(@[0-9]{1,9})?$",
        description="only devices running this model (NAME) or model version (NAME@VERSION)",
    ),
]
Sort = Annotated[
    Literal["severity", "last_seen", "id"],
    Query(
        description="severity: worst first, then the most recently seen; last_seen: newest first"
    ),
]
DriftDevices = Annotated[
    list[str] | None,
    Query(
        max_length=views.MAX_PAGE,
        description="only these devices, in this order (repeat it: a page of the fleet)",
    ),
]
SeriesSince = Annotated[
    float, Query(gt=0, le=86400, allow_inf_nan=False, description="the last seconds")
]
SeriesBucket = Annotated[
    float, Query(ge=1, le=3600, allow_inf_nan=False, description="seconds a point")
]
SinceSeconds = Annotated[
    float,
    Query(gt=0, le=30 * 86400, allow_inf_nan=False, description="reports of the last seconds"),
]
LabelsSince = Annotated[
    float,
    Query(gt=0, le=366 * 86400, allow_inf_nan=False, description="labels of the last seconds"),
]
BucketSeconds = Annotated[
    float | None,
    Query(gt=0, allow_inf_nan=False, description="one row per bucket of prediction time"),
]
QualityModel = Annotated[
    str | None, Query(max_length=84, description="only this model (NAME or NAME@VERSION)")
]
LabelsIn = Annotated[list[LabelIn], Body(max_length=MAX_LABELS)]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut} for code in codes}


# ---- the app --------------------------------------------------------------------------------
def create_app(store: Store, auth: WebAuth, cards: PublishedCards | None = None) -> FastAPI:
    """The app over `store`; `cards` reads published model cards for fleet drift (None: no
    repository, fleet drift says each card is missing)."""
    app = FastAPI(
        title="edgefleet hub",
        version="1",
        docs_url=None,  # Swagger UI and ReDoc load scripts from a CDN; the page stays offline
        redoc_url=None,
        openapi_url=None,  # served below, behind the token like every read
        description="The fleet, its rollouts, experiments, telemetry and drift. Send "
        "`Authorization: Bearer <token>`; reads may be open (`edgehub serve --open-reads`).",
    )
    cards = cards or PublishedCards(None)
    fleet_rows = FleetRows(store)
    registry = registry_for(store, cards, fleet_rows)

    def write_access(credentials: Credentials) -> None:
        if credentials is None:
            raise HTTPException(
                401,
                "this needs `Authorization: Bearer <token>`; got no token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(credentials.credentials.encode(), auth.token.encode()):
            raise HTTPException(403, "the bearer token is not this hub's dashboard token")

    def read_access(credentials: Credentials) -> None:
        if not auth.open_reads:
            write_access(credentials)

    reads: Any = {"dependencies": [Depends(read_access)]}

    @app.get("/openapi.json", include_in_schema=False, **reads)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    def device_or_404(device: str) -> dict[str, Any]:
        row = store.device(device)
        if row is None:
            raise HTTPException(404, f"no device with id {device!r}; GET /api/fleet lists them")
        return row

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_r: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": validation_message(exc)}, 422)

    @app.get(
        "/api/fleet",
        response_model=FleetOut,
        responses=_errors(401, 403, 422),
        description="One page of the devices, filtered by severity and model (version), "
        "worst first by default.",
        **reads,
    )
    def fleet(
        limit: PageLimit = 50,
        offset: Offset = 0,
        severity: SeverityFilter = None,
        model: VersionFilter = None,
        sort: Sort = "severity",
    ) -> dict[str, Any]:
        query = views.FleetQuery(limit, offset, tuple(severity or ()), model, sort)
        rows, _ = fleet_rows.read()
        return {"now": time.time(), **views.fleet_page(rows, query)}

    @app.get(
        "/api/versions",
        response_model=VersionsOut,
        responses=_errors(401, 403),
        description="Per model version: devices running it, rows/s, errors, latency and drift "
        "from the online devices' newest telemetry windows and drift reports.",
        **reads,
    )
    def versions() -> dict[str, Any]:
        rows, telemetry = fleet_rows.read()
        return {"now": time.time(), "versions": views.version_summary(rows, telemetry)}

    @app.get(
        "/api/fleet/series",
        response_model=FleetSeriesOut,
        responses=_errors(401, 403, 422),
        description="The fleet over time: rows/s, error rate and drift alerts per bucket, for "
        f"the whole fleet and each model version (at most {MAX_BUCKETS} buckets).",
        **reads,
    )
    def fleet_series(since_s: SeriesSince = 900.0, bucket_s: SeriesBucket = 30.0) -> dict[str, Any]:
        if since_s / bucket_s > MAX_BUCKETS:
            raise HTTPException(
                422,
                f"query parameters since_s and bucket_s: expected at most {MAX_BUCKETS} buckets, "
                f"got since_s={since_s:g} / bucket_s={bucket_s:g}",
            )
        now = time.time()
        start = now - since_s
        series = views.fleet_series(store.fleet_buckets(start, bucket_s), start, now, bucket_s)
        return {"now": now, "since_s": since_s, "bucket_s": bucket_s, "series": series}

    @app.get(
        "/api/devices/{device}",
        response_model=DeviceOut,
        responses=_errors(401, 403, 404, 422),
        **reads,
    )
    def device(device: DeviceId) -> dict[str, Any]:
        row = device_or_404(device)
        return views.device_row(
            row,
            next(iter(store.recent_records("telemetry", device, limit=1)), None),
            next(iter(store.recent_records("drift", device, limit=1)), None),
        )

    @app.get(
        "/api/devices/{device}/telemetry",
        response_model=TelemetryOut,
        responses=_errors(401, 403, 404, 422),
        **reads,
    )
    def telemetry(device: DeviceId, since: Since = 0.0, limit: Limit = 300) -> dict[str, Any]:
        device_or_404(device)
        recs = store.recent_records("telemetry", device, since, limit)
        points = views.telemetry_points(recs)  # not the raw samples
        return {"device": device, "points": points}

    @app.get(
        "/api/devices/{device}/drift",
        response_model=DriftSeriesOut,
        responses=_errors(401, 403, 404, 422),
        **reads,
    )
    def device_drift(
        device: DeviceId,
        since: Since = 0.0,
        limit: Limit = 300,
        feature: Feature = None,
    ) -> dict[str, Any]:
        device_or_404(device)
        recs = store.recent_records("drift", device, since, limit)
        return {"device": device, "features": views.drift_series(recs, feature)}

    @app.get("/api/drift", response_model=DriftMapOut, responses=_errors(401, 403, 422), **reads)
    def drift(model: ModelName = None, device: DriftDevices = None) -> dict[str, Any]:
        return views.drift_map(store.latest_records("drift"), model, device)

    @app.get(
        "/api/drift/fleet",
        response_model=FleetDriftOut,
        responses=_errors(401, 403, 422),
        description="Drift merged over the devices' windows per model version and cohort "
        "(the fleet, each group, each tag), tested against each version's card.",
        **reads,
    )
    def fleet_drift(model: ModelName = None, since_s: SinceSeconds = 3600.0) -> dict[str, Any]:
        result = read_fleet_drift(store, cards, FleetQuery(since_s))
        if model is not None:
            result["rows"] = [r for r in result["rows"] if r["model"] == model]
        return views.fleet_drift_map(result)

    @app.get(
        "/api/metrics",
        response_model=MetricsOut,
        responses=_errors(401, 403, 422),
        description="Model quality from labels joined to predictions: accuracy, macro "
        "precision, recall and F1 (classifiers) or RMSE and MAE (regressors), each with its "
        "95% interval, per model version and group, and the accuracy floors' alerts.",
        **reads,
    )
    def quality(
        model: QualityModel = None,
        since_s: LabelsSince = 86400.0,
        by: Literal["version", "device", "cohort"] = "version",
        bucket_s: BucketSeconds = None,
    ) -> dict[str, Any]:
        try:
            query = MetricsQuery(since_s, model, by, bucket_s)
        except ConfigError as exc:
            raise HTTPException(422, str(exc)) from exc
        return quality_report(store, cards, query)

    @app.post(
        "/api/labels",
        response_model=LabelsOut,
        responses=_errors(401, 403, 422),
        dependencies=[Depends(write_access)],
        description="Ground truth: a list of {prediction: id, label: value}, at most "
        f"{MAX_LABELS}; each is joined to its prediction or counted by why not.",
    )
    def labels(body: LabelsIn) -> dict[str, Any]:
        pairs = [(item.prediction, item.label) for item in body]
        outcomes = store.add_labels(pairs, FROM_API, time.time())
        return {"received": len(pairs), "outcomes": dict(outcomes)}

    @app.get("/api/rollouts", response_model=RolloutsOut, responses=_errors(401, 403), **reads)
    def rollouts() -> dict[str, Any]:
        return {"rollouts": [rollout_view(r) for r in reversed(store.rollouts())]}

    def rollout_view(row: dict[str, Any]) -> dict[str, Any]:
        return views.rollout_view(row, time.time(), soaking_metrics(store, row))

    @app.get(
        "/api/rollouts/{rollout}",
        response_model=RolloutOut,
        responses=_errors(401, 403, 404, 422),
        **reads,
    )
    def rollout(rollout: RolloutId) -> dict[str, Any]:
        row = store.rollout(rollout)
        if row is None:
            raise HTTPException(
                404, f"no rollout with id {rollout!r}; GET /api/rollouts lists them"
            )
        return rollout_view(row)

    @app.post(
        "/api/rollouts/{rollout}/{action}",
        response_model=ActionOut,
        responses=_errors(401, 403, 404, 409, 422),
        dependencies=[Depends(write_access)],
        description="Ask the rollout engine to "
        + ", ".join(ACTIONS)
        + " this rollout; 409 when its state does not allow it.",
    )
    def act(rollout: RolloutId, action: Action) -> dict[str, Any]:
        try:
            return apply_action(store, rollout, action)
        except NoSuchRollout as exc:
            raise HTTPException(404, str(exc)) from exc
        except ActionRefused as exc:
            raise HTTPException(409, str(exc)) from exc

    add_experiment_routes(app, store, reads, _errors)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **_errors(401, 403)},
        **reads,
    )
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def validation_message(exc: RequestValidationError) -> str:
    """`query parameter limit: Input should be less than or equal to 5000, got '9999'`."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        where = f"{loc[0]} parameter {'.'.join(loc[1:])}" if len(loc) > 1 else ".".join(loc)
        got = f", got {err['input']!r}" if "input" in err else ""
        parts.append(f"{where}: {err.get('msg', 'invalid')}{got}")
    return "; ".join(parts) or "invalid request"
