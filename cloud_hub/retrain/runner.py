"""Checking the policies and running the ones that fire: the I/O around `triggers`.

A run, once its policy fired (recorded first, so it fires once):

    export the data set -> run the training command -> convert (next version) -> validate
    against the serving model on the held-out rows -> publish -> staged rollout, shadow first

With `approve` the run stops validated, before it publishes, until `edgehub retrain approve`.
Every run is stored with its state, and a failed or refused one says why. The training command
runs without a shell, in its own process group (killed whole at the time limit), in the run's
folder HOME/retrain/runs/RUN (stdout.txt, stderr.txt, the model it writes, the bundle).
"""

from __future__ import annotations

import csv
import logging
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from cloud_hub.drift.source import MAX_BUNDLE_BYTES, PublishedCards
from cloud_hub.retrain import registry as reg
from cloud_hub.retrain.dataset import HOLDOUT, Dataset, export_dataset
from cloud_hub.retrain.policy import DriftTrigger, Policy
from cloud_hub.retrain.registry import Run
from cloud_hub.retrain.triggers import (
    DEFAULT_STALE_S,
    DriftPoint,
    LabelSource,
    first_firing,
)
from cloud_hub.rollout.operations import open_repo, publish_bundle, start_rollout
from cloud_hub.store.database import Store, typed
from edge_agent.errors import BundleRejected, ConfigError, EdgefleetError
from edge_agent.inference.runtime import open_runtime
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.input_spec import category_code, row_spec
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.records import DriftReport
from edge_agent.update.bundle import Bundle, read_bundle

log = logging.getLogger(__name__)
CHECK_EVERY_S = 60.0
TAIL_CHARS = 300


class RunFailed(EdgefleetError):
    """A step of a run went wrong: the run is recorded failed with this message."""


class Refused(EdgefleetError):
    """Validation found the candidate worse than the serving model."""


@frozen
class Hub:
    """What a run needs of the hub: its folder, store and labels."""

    home: Path
    store: Store
    labels: LabelSource

    @property
    def cards(self) -> PublishedCards:
        return PublishedCards(open_repo(self.home))


# ---- checking -------------------------------------------------------------------------------
def drift_points(store: Store, model: str, since: float) -> list[DriftPoint]:
    return [
        DriftPoint(r.device, r.ts, report.status)
        for r, report in typed(store.records_since("drift", None, since), DriftReport)
        if report.model is not None and report.model.name == model
    ]


def serving_model(hub: Hub, model: str) -> ModelRef:
    """The version most of the model's devices run, else the newest published one."""
    running = Counter(
        d["version"] for d in hub.store.devices() if d["model"] == model and d["version"]
    )
    if running:
        return ModelRef(model, running.most_common(1)[0][0])
    versions = published_versions(hub, model)
    if not versions:
        raise RunFailed(f"{model}: no published version to retrain (`edgehub model list`)")
    return ModelRef(model, max(versions))


def published_versions(hub: Hub, model: str) -> list[int]:
    return [
        int(info["model_version"])
        for info in open_repo(hub.home).targets().values()
        if info.get("model") == model and info.get("model_version") is not None
    ]


def check_policies(hub: Hub, now: float | None = None) -> list[Run]:
    """Evaluate every policy once; run those that fire. Returns the runs started."""
    now = time.time() if now is None else now
    started = []
    open_runs = {r.policy for r in reg.runs(hub.store) if r.state in reg.OPEN}
    for stored in reg.policies(hub.store):
        policy = stored.policy
        if policy.id in open_runs:
            continue
        longest = max(
            (t.duration_s for t in policy.triggers if isinstance(t, DriftTrigger)), default=0.0
        )
        points = drift_points(hub.store, policy.model, now - longest - DEFAULT_STALE_S)
        devices = {d["id"] for d in hub.store.devices() if d["model"] == policy.model}
        why = first_firing(
            policy.triggers,
            model=policy.model,
            now=now,
            since=stored.last_fired,
            drift=points,
            devices=len(devices | {p.device for p in points}),
            labels=_Since(hub.labels, max(stored.created, stored.last_fired)),
        )
        if why is None or not reg.claim_firing(hub.store, policy.id, stored.last_fired, now):
            continue
        started.append(start_run(hub, policy, why, now))
    return started


@frozen
class _Since:
    """Label counts from `floor` on at the earliest (labels before a policy existed are not
    new to it)."""

    source: LabelSource
    floor: float

    def count_since(self, model: str, since: float) -> int:
        return self.source.count_since(model, max(since, self.floor))

    def accuracy(self, model: str, since: float) -> tuple[float, int] | None:
        return self.source.accuracy(model, max(since, self.floor))

    def rows(self, model: ModelRef) -> Any:
        return self.source.rows(model)


# ---- running --------------------------------------------------------------------------------
def start_run(hub: Hub, policy: Policy, trigger: str, now: float) -> Run:
    run = Run(f"run-{uuid.uuid4().hex[:8]}", policy.id, policy.model, trigger, created=now)
    reg.save_run(hub.store, run)
    try:
        execute(hub, policy, run)
    except Refused as exc:
        run.state, run.reason = reg.REFUSED, str(exc)
    except (RunFailed, EdgefleetError, OSError) as exc:
        run.state, run.reason = reg.FAILED, str(exc)
    reg.save_run(hub.store, run)
    log.info("retrain %s of %s: %s %s", run.id, policy.model, run.state, run.reason)
    return run


def execute(hub: Hub, policy: Policy, run: Run) -> None:
    serving = serving_model(hub, policy.model)
    run.serving = str(serving)
    data = export_dataset(hub.store, hub.cards, hub.labels, serving, hub.home / "datasets")
    run.dataset = data.id
    folder = hub.home / "retrain" / "runs" / run.id
    folder.mkdir(parents=True, exist_ok=True)
    run.folder = str(folder)
    reg.save_run(hub.store, run)
    model_file = folder / "model.joblib"
    train(policy, data.folder, model_file, folder)
    version = max(published_versions(hub, policy.model), default=0) + 1
    candidate = ModelRef(policy.model, version)
    run.candidate = str(candidate)
    lineage = {
        "parent": str(serving),
        "data_sha256": data.manifest["sha256"],
        "data_rows": int(data.manifest["files"]["samples.csv"]["rows"]),
        "dataset": data.id,
        "trigger": run.trigger[:300],
        "conversion": (
            f"quantize dynamic (int8), parity: accuracy drop <= {policy.max_accuracy_drop:g}, "
            f"RMSE rise <= {policy.max_rmse_rise:g}"
        ),
    }
    bundle = convert(policy, data, model_file, candidate, folder / "bundle.zip", lineage)
    run.validation = validate(policy, hub, serving, bundle, data)
    run.verdict = run.validation["verdict"]
    if policy.approve:
        run.state = reg.AWAITING
        return
    roll_out(hub, policy, run)


def roll_out(hub: Hub, policy: Policy, run: Run) -> None:
    # in a transaction of the hub's store held throughout: in the running leader's check, it is
    # refused once another worker took the lead (the check may have trained for long), and the
    # next lead waits for it (cloud_hub.cluster.leader.AdvisoryLock.fence)
    with hub.store.engine.begin():
        model, _path = publish_bundle(hub.home, Path(run.folder) / "bundle.zip")
        rollout = start_rollout(hub.home, model, shadow_rows=policy.shadow_rows, store=hub.store)
    run.rollout, run.state, run.reason = rollout.id, reg.ROLLING_OUT, ""


def approve(hub: Hub, run_id: str) -> Run:
    """Publish and roll out a run that waits for approval."""
    run = reg.run(hub.store, run_id)
    if run is None:
        raise ConfigError(f"no retraining run {run_id!r}; `edgehub retrain runs` lists them")
    if run.state != reg.AWAITING:
        raise ConfigError(f"run {run_id}: expected a run awaiting approval, got one {run.state}")
    stored = {p.policy.id: p.policy for p in reg.policies(hub.store)}
    policy = stored.get(run.policy)
    if policy is None:
        raise ConfigError(f"run {run_id}: its policy {run.policy} was removed")
    roll_out(hub, policy, run)
    reg.save_run(hub.store, run)
    return run


def command_for(policy: Policy, data: Path, model: Path) -> list[str]:
    return [a.replace("{data}", str(data)).replace("{model}", str(model)) for a in policy.command]


def train(policy: Policy, data: Path, model_file: Path, folder: Path) -> None:
    """Run the training command; RunFailed when it cannot start, fails or runs too long."""
    argv = command_for(policy, data, model_file)
    with open(folder / "stdout.txt", "wb") as out, open(folder / "stderr.txt", "wb") as err:
        try:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=err, cwd=folder, start_new_session=True
            )
        except OSError as exc:
            raise RunFailed(f"the command {argv[0]!r} could not start: {exc.strerror}") from exc
        try:
            code = proc.wait(timeout=policy.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RunFailed(
                f"the command ran past its limit of {policy.timeout_s:g}s and was killed"
            ) from None
    if code != 0:
        tail = (folder / "stderr.txt").read_text(errors="replace").strip()[-TAIL_CHARS:]
        last = tail.splitlines()[-1] if tail else "nothing on stderr"
        raise RunFailed(f"the command exited with status {code}: {last}")
    if not model_file.is_file():
        raise RunFailed(f"the command exited 0 but wrote no model to {model_file.name}")


# ---- convert and validate -------------------------------------------------------------------
def _targets(values: Sequence[str]) -> np.ndarray:
    """CSV labels as the model's class labels or targets: integers, numbers, else text."""
    try:
        numbers = np.array([float(v) for v in values])
    except ValueError:
        return np.array(values)
    if len(numbers) and np.all(numbers == np.round(numbers)):
        return numbers.astype(np.int64)
    return numbers


def _cell(text: str, categories: Sequence[str] | None) -> float:
    if categories is not None:
        return category_code(categories, text)
    return float(text) if text != "" else np.nan


def read_rows(
    path: Path, features: list[str], categories: Mapping[str, Sequence[str]] | None = None
) -> tuple[np.ndarray, list[str]]:
    """(features as float, NaN for blanks, a categorical feature's texts as their codes among
    `categories`; the `label` column as text) of a samples CSV."""
    cats = categories or {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    x = np.array(
        [[_cell(r[c], cats.get(c)) for c in features] for r in rows], dtype=np.float32
    ).reshape(len(rows), len(features))
    return x, [r.get("label", "") for r in rows]


def convert(
    policy: Policy,
    data: Dataset,
    model_file: Path,
    candidate: ModelRef,
    out: Path,
    lineage: dict[str, Any],
) -> Bundle:
    from converters.inputs import load_model
    from converters.pipeline import build_bundle

    features = list(data.manifest["features"])
    categories = data.manifest.get("categories", {})
    x, labels = read_rows(data.folder / "samples.csv", features, categories)
    known = [i for i, v in enumerate(labels) if v != ""]
    if known:
        x, y = x[known], _targets([labels[i] for i in known])
    else:
        y = None
    if len(x) == 0:
        raise RunFailed(f"data set {data.id}: no sampled rows to convert the model with")
    try:
        build_bundle(
            load_model(model_file),
            x,
            y,
            name=candidate.name,
            version=candidate.version,
            out=out,
            feature_names=features,
            input_spec=row_spec(features, categories),
            max_accuracy_drop=policy.max_accuracy_drop,
            max_rmse_rel=policy.max_rmse_rise,
            lineage=lineage,
        )
    except EdgefleetError as exc:
        raise RunFailed(f"converting {model_file.name}: {exc}") from exc
    return _bundle(out.read_bytes(), None, str(out))


def _bundle(data: bytes, card_sha256: str | None, where: str) -> Bundle:
    try:
        return read_bundle(data, card_sha256, MAX_BUNDLE_BYTES)
    except BundleRejected as exc:
        raise RunFailed(f"{where}: not a valid bundle: {exc}") from exc


def score(bundle: Bundle, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy (classification) or RMSE (regression) of the bundle's model on (x, y)."""
    card = bundle.card
    runtime = open_runtime(card.runtime, bundle.model_bytes, card.task, card.classes, 1)
    predicted = np.asarray(runtime.predict(x)).ravel()
    if card.task == "classification":
        return float(np.mean(predicted.astype(str) == y.astype(str)))
    return float(np.sqrt(np.mean((predicted.astype(np.float64) - y.astype(np.float64)) ** 2)))


def validate(
    policy: Policy, hub: Hub, serving: ModelRef, candidate: Bundle, data: Dataset
) -> dict[str, Any]:
    """The candidate against the serving model on the held-out labeled rows; Refused when it
    is worse by more than the policy's limit (the converter's parity limits by default)."""
    features = list(data.manifest["features"])
    x, labels = read_rows(data.folder / HOLDOUT, features, data.manifest.get("categories"))
    if len(x) == 0:
        raise Refused(
            f"data set {data.id}: no labeled rows held out to validate on (labels are needed "
            "to compare the candidate with the serving model)"
        )
    y = _targets(labels)
    info = open_repo(hub.home).targets()[serving.target_path]
    serving_bundle = _bundle(
        open_repo(hub.home).read_target(serving.target_path), info.get("card_sha256"), str(serving)
    )
    before, after = score(serving_bundle, x, y), score(candidate, x, y)
    result: dict[str, Any] = {"rows": len(x), "serving": before, "candidate": after}
    if candidate.card.task == "classification":
        result["metric"], limit = "accuracy", policy.max_accuracy_drop
        worse = before - after > limit
        detail = f"accuracy {after:.4f} against the serving model's {before:.4f}"
    else:
        result["metric"], limit = "rmse", policy.max_rmse_rise
        rise = (after - before) / before if before > 0 else after - before
        worse = rise > limit
        detail = f"RMSE {after:.6g} against the serving model's {before:.6g}"
    result["limit"] = limit
    result["verdict"] = "worse" if worse else "better" if after != before else "same"
    if worse:
        raise Refused(
            f"validation: the candidate is worse on {len(x)} held-out rows: {detail} "
            f"(allowed: {limit:g} worse)"
        )
    return result


# ---- the running hub ------------------------------------------------------------------------
class Ticker:
    """The running hub's check: at most once every `every_s`, in a thread of its own (a
    training run may take its time limit; ingest goes on meanwhile), never two at once."""

    def __init__(self, hub: Hub, every_s: float = CHECK_EVERY_S) -> None:
        self.hub, self.every_s = hub, every_s
        self._next = 0.0
        self._thread: threading.Thread | None = None

    def maybe(self, now: float, fence: AbstractContextManager[object] | None = None) -> None:
        """`fence`: the lead's (cloud_hub.cluster.leader), kept by the check's thread: what
        it stores is refused once another worker has taken the lead."""
        if now < self._next or (self._thread is not None and self._thread.is_alive()):
            return
        self._next = now + self.every_s
        if not reg.policies(self.hub.store):
            return  # no policy: no thread
        self._thread = threading.Thread(
            target=self._check, args=(fence or nullcontext(),), name="retrain", daemon=True
        )
        self._thread.start()

    def _check(self, fence: AbstractContextManager[object]) -> None:
        try:
            with fence:
                check_policies(self.hub)
        except (EdgefleetError, OSError) as exc:
            log.warning("retrain check: %s", exc)
