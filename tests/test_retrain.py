"""Retraining for real: a hub home with a published model and the sampled rows its devices
sent, a policy that fires, a real training script (written here) that trains on the exported
data set, the candidate converted, validated against the serving model on the held-out rows,
published and rolled out with shadow first. A script that makes a worse model is refused, one
that fails and one that runs too long are recorded; drift reports fire a drift policy once."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sqlalchemy import create_engine

from cloud_hub.cli import app as cli
from cloud_hub.cluster.leader import AdvisoryLock, LostLead
from cloud_hub.quality.labels import JoinedLabel
from cloud_hub.retrain import registry as reg
from cloud_hub.retrain import runner
from cloud_hub.retrain.policy import LabelsTrigger, Policy, parse_command, parse_timeout
from cloud_hub.retrain.runner import Hub, check_policies
from cloud_hub.rollout import engine as ro
from cloud_hub.rollout.operations import init_hub, open_repo, publish_bundle
from cloud_hub.store.database import Store
from cloud_hub.store.url import STORE_ENV, store_url
from converters.pipeline import build_bundle
from edge_agent.protocol.messages import Batch, ModelRef, Record
from edge_agent.protocol.records import DriftReport, RawSample
from tests.support.postgres import fresh_database

SERVING = ModelRef("wine", 1)
FEATURES = ["f0", "f1", "f2"]

TRAIN = """\
import csv, json, pathlib, random, sys
import joblib
from sklearn.linear_model import LogisticRegression

data, out = pathlib.Path(sys.argv[-2]), sys.argv[-1]
features = json.loads((data / "manifest.json").read_text())["features"]
with open(data / "samples.csv", newline="") as f:
    rows = [r for r in csv.DictReader(f) if r["label"] != ""]
x = [[float(r[name]) for name in features] for r in rows]
y = [int(r["label"]) for r in rows]
if "--shuffle" in sys.argv:  # a model that learns nothing
    random.Random(0).shuffle(y)
print(f"training on {len(rows)} rows")
joblib.dump(LogisticRegression().fit(x, y), out)
"""


class FakeLabels:
    """Labels for every sampled row (the LabelSource the hub's labels will implement)."""

    def __init__(self, rows: Sequence[JoinedLabel]) -> None:
        self._rows = list(rows)

    def count_since(self, model: str, since: float) -> int:
        return sum(1 for r in self._rows if r.model.name == model and r.received >= since)

    def accuracy(self, model: str, since: float) -> tuple[float, int] | None:
        return None

    def rows(self, model: ModelRef) -> Sequence[JoinedLabel]:
        return [r for r in self._rows if r.model == model]


def _truth(x: np.ndarray) -> np.ndarray:
    return (x[:, 0] + x[:, 1] > 0.5).astype(np.int64)  # what the devices see now


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    """A hub serving wine@1, trained on an old concept (f0 > 0), with 400 sampled rows of
    the new one (f0 + f1 > 0.5) from two devices, each labeled."""
    home = tmp_path / "hub"
    init_hub(home)
    rng = np.random.default_rng(7)
    x_old = rng.normal(size=(300, 3)).astype(np.float32)
    y_old = (x_old[:, 0] > 0).astype(np.int64)
    model = LogisticRegression().fit(x_old, y_old)
    bundle = tmp_path / "wine-1.zip"
    build_bundle(model, x_old, y_old, name="wine", version=1, out=bundle, feature_names=FEATURES)
    publish_bundle(home, bundle)
    store = Store(store_url(home))
    x = rng.normal(size=(400, 3)).astype(np.float32)
    y = _truth(x)
    now = time.time()
    labels = []
    for d, device in enumerate(("pi-01", "pi-02")):
        records = []
        for seq in range(200):
            row = x[d * 200 + seq]
            features = dict(zip(FEATURES, map(float, row), strict=True))
            pid = f"{device}/1/{seq}"  # its prediction id: the labels name it
            body = RawSample(SERVING, features, int(row[0] > 0), id=pid).to_body()
            records.append(Record(1, seq, now - 600 + seq, body))
            labels.append(
                JoinedLabel(device, 1, seq, SERVING, int(row[0] > 0), int(y[d * 200 + seq]), now)
            )
        store.add_batch("telemetry", Batch(device, tuple(records)))
    (tmp_path / "train.py").write_text(TRAIN)
    (tmp_path / "fail.py").write_text(
        "import sys\nprint('no GPU here', file=sys.stderr)\nsys.exit(3)\n"
    )
    (tmp_path / "slow.py").write_text("import time\ntime.sleep(60)\n")
    return Hub(home, store, FakeLabels(labels))


def _policy(hub: Hub, run: str, timeout: str = "60s", approve: bool = False) -> Policy:
    script_dir = hub.home.parent
    policy = Policy(
        id="p-test",
        model="wine",
        triggers=(LabelsTrigger(100),),
        command=parse_command(f"{sys.executable} {script_dir}/{run} {{data}} {{model}}"),
        timeout_s=parse_timeout(timeout),
        approve=approve,
        shadow_rows=50,
    )
    reg.add_policy(hub.store, policy, created=time.time() - 60)  # before the labels came
    return policy


def _fire(hub: Hub) -> reg.Run:
    started = check_policies(hub, now=time.time())
    assert len(started) == 1, started
    stored = reg.run(hub.store, started[0].id)
    assert stored is not None
    return stored


def test_a_policy_fires_trains_converts_validates_publishes_and_rolls_out_in_shadow(
    hub: Hub, capsys: pytest.CaptureFixture[str]
) -> None:
    _policy(hub, "train.py")
    run = _fire(hub)
    assert run.state == reg.ROLLING_OUT, run.reason
    assert run.trigger == "100 new labels: 400 labels since the last run"
    assert (run.serving, run.candidate, run.verdict) == ("wine@1", "wine@2", "better")
    v = run.validation
    assert v["metric"] == "accuracy" and v["candidate"] > v["serving"] + 0.1, v
    folder = Path(run.folder)
    assert "training on" in (folder / "stdout.txt").read_text()
    # the data set: versioned by content, held-out rows kept from training
    data = hub.home / "datasets" / "wine" / run.dataset
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["model"] == "wine@1" and manifest["features"] == FEATURES
    files = manifest["files"]
    assert files["samples.csv"]["rows"] + files["holdout/samples.csv"]["rows"] == 400
    assert files["holdout/samples.csv"]["rows"] > 40
    assert files["reference.csv"]["rows"] == 16
    assert run.dataset == manifest["id"] == manifest["sha256"][:12]
    # published and rolled out, shadow first
    stored = hub.store.rollout(run.rollout)
    assert stored is not None
    rollout = ro.Rollout.from_json(stored["body"])
    assert rollout.model == ModelRef("wine", 2)
    assert rollout.plan.shadow_rows == 50
    # fired once: nothing new since, nothing fires
    assert check_policies(hub) == []
    # the signed card says where it came from
    assert cli.main(["--home", str(hub.home), "model", "lineage", "wine@2", "--json"]) == 0
    child, parent = json.loads(capsys.readouterr().out)
    assert child == {
        "model": "wine@2",
        "parent": "wine@1",
        "dataset": run.dataset,
        "data_sha256": manifest["sha256"],
        "data_rows": files["samples.csv"]["rows"],
        "trigger": run.trigger,
        "conversion": "quantize dynamic (int8), parity: accuracy drop <= 0.01, RMSE rise <= 0.01",
    }
    assert parent == {"model": "wine@1"}


def test_a_worse_model_is_refused_and_recorded(hub: Hub) -> None:
    _policy(hub, "train.py --shuffle")
    run = _fire(hub)
    assert run.state == reg.REFUSED
    assert run.reason.startswith("validation: the candidate is worse on ")
    assert "allowed: 0.01 worse" in run.reason
    assert run.candidate == "wine@2" and run.rollout == ""
    assert ModelRef("wine", 2).target_path not in open_repo(hub.home).targets()  # not published


def test_a_failing_and_a_slow_command_are_recorded_failed(hub: Hub) -> None:
    _policy(hub, "fail.py")
    run = _fire(hub)
    assert (run.state, run.reason) == (reg.FAILED, "the command exited with status 3: no GPU here")
    assert reg.remove_policy(hub.store, "p-test")
    _policy(hub, "slow.py", timeout="1s")
    started = time.monotonic()
    run = _fire(hub)
    assert time.monotonic() - started < 20
    assert (run.state, run.reason) == (
        reg.FAILED,
        "the command ran past its limit of 1s and was killed",
    )
    assert [r.state for r in reg.runs(hub.store)] == [reg.FAILED, reg.FAILED]


def test_approval_holds_the_validated_model_until_approved(
    hub: Hub, capsys: pytest.CaptureFixture[str]
) -> None:
    _policy(hub, "train.py", approve=True)
    run = _fire(hub)
    assert (run.state, run.verdict, run.rollout) == (reg.AWAITING, "better", "")
    assert hub.store.rollouts() == []
    # the CLI approves it (the hub's own labels are not needed for that)
    assert cli.main(["--home", str(hub.home), "retrain", "approve", run.id]) == 0
    approved = reg.run(hub.store, run.id)
    assert approved is not None and approved.state == reg.ROLLING_OUT
    assert [r["id"] for r in hub.store.rollouts()] == [approved.rollout]
    assert cli.main(["--home", str(hub.home), "retrain", "approve", run.id]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        f"edgehub: error: run {run.id}: expected a run awaiting approval, got one rolling-out"
    )


def _drift(status: str) -> dict[str, object]:
    return DriftReport(model=SERVING, window=200, status=status).to_body()


def test_sustained_drift_fires_a_policy_from_the_cli_once(
    hub: Hub, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    for device in ("pi-01", "pi-02", "pi-03"):
        status = "ok" if device == "pi-03" else "alert"
        records = tuple(Record(2, i, now - 7200 + 300 * i, _drift(status)) for i in range(24))
        hub.store.ingest([("drift", Batch(device, records))])
    home = str(hub.home)
    train = hub.home.parent / "train.py"
    add = ["--home", home, "retrain", "policy", "add", "wine"]
    run = ["--run", f"{sys.executable} {train} {{data}} {{model}}", "--timeout", "1m"]
    assert cli.main([*add, "--when", "drift alert on 50% of devices for 1h", *run]) == 0
    capsys.readouterr()
    assert cli.main(["--home", home, "retrain", "policy", "list", "--json"]) == 0
    [policy] = json.loads(capsys.readouterr().out)
    assert policy["when"] == ["drift alert on 50% of devices for 1h"]
    [fired] = check_policies(hub)  # as `retrain check` does, with the hub's labels
    assert fired.trigger.startswith(
        "drift alert on 50% of devices for 1h: at least 2 of 3 devices (67%)"
    )
    assert (fired.state, fired.candidate) == (reg.ROLLING_OUT, "wine@2"), fired.reason
    assert cli.main(["--home", home, "retrain", "check"]) == 0
    assert "no policy fired" in capsys.readouterr().out
    assert cli.main(["--home", home, "retrain", "runs", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert (listed["id"], listed["state"], listed["dataset"]) == (
        fired.id,
        reg.ROLLING_OUT,
        fired.dataset,
    )


def test_grammar_mistakes_are_one_line_and_exit_1(
    hub: Hub, capsys: pytest.CaptureFixture[str]
) -> None:
    add = ["--home", str(hub.home), "retrain", "policy", "add", "wine"]
    cases = [
        (
            ["--when", "drift alert on 20 of devices for 1h", "--run", "t {data} {model}"],
            "expected a share of devices such as 20% at character 16, got '20'",
        ),
        (["--when", "5000 new labels", "--run", "t {data}"], "expected {model} in the command"),
        (
            ["--when", "5000 new labels", "--run", "t {data} {model}", "--timeout", "x"],
            "--timeout: expected a duration",
        ),
    ]
    for argv, message in cases:
        assert cli.main([*add, *argv]) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("edgehub: error: ") and message in err, err
    assert reg.policies(hub.store) == []


def test_data_export_is_versioned_by_content(
    hub: Hub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = str(hub.home)
    assert cli.main(["--home", home, "data", "export", "wine@1", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert cli.main(["--home", home, "data", "export", "wine@1", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert first["id"] == again["id"] and first["folder"] == again["folder"]
    # the CLI's hub has no labels: every sampled row is in samples.csv, none held out
    assert first["files"]["samples.csv"]["rows"] == 400
    assert first["files"]["labels.csv"]["rows"] == 0
    out = tmp_path / "export"
    assert cli.main(["--home", home, "data", "export", "wine@1", "--out", str(out)]) == 0
    assert (out / "manifest.json").is_file() and (out / "samples.csv").is_file()
    assert cli.main(["--home", home, "data", "export", "wine@9"]) == 1
    assert "wine@9" in capsys.readouterr().err


def test_the_policy_check_runs_in_its_thread_inside_the_lead_it_was_started_by(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub's leader hands its fence (cloud_hub.cluster.leader) to the check's thread: what
    a check stores after another worker took the lead is refused there too."""
    inside = threading.local()
    seen: list[bool] = []
    done = threading.Event()

    class Fence:
        def __enter__(self) -> None:
            inside.fenced = True

        def __exit__(self, *exc: object) -> None:
            inside.fenced = False

    def check(hub: Hub) -> list[object]:
        seen.append(getattr(inside, "fenced", False))
        done.set()
        return []

    monkeypatch.setattr(runner, "check_policies", check)
    monkeypatch.setattr(reg, "policies", lambda store: ["a policy"])
    ticker = runner.Ticker(Hub(tmp_path, Store(store_url(tmp_path)), lambda: []))  # type: ignore[arg-type]
    ticker.maybe(time.time(), Fence())
    assert done.wait(10) and seen == [True]


@pytest.fixture
def pg(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The store on a fresh PostgreSQL database (before `hub`: it makes the store there)."""
    with fresh_database() as url:
        monkeypatch.setenv(STORE_ENV, url)
        yield url


def test_a_run_whose_lead_is_taken_while_it_trains_neither_publishes_nor_rolls_out(
    pg: str, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check's thread keeps its leader's fence (cloud_hub.cluster.leader): a lead taken by
    another worker while the command trains refuses what the run goes on to do, the rollout it
    would start (which `start_rollout` stored through a store of its own, unfenced) and the
    candidate it would sign into the repository on the way."""
    _policy(hub, "train.py")
    other_engine = create_engine(pg)
    old, new = AdvisoryLock(hub.store.engine), AdvisoryLock(other_engine)
    trained = runner.train

    def train_meanwhile_the_lead_goes(*args: Any) -> None:
        trained(*args)
        old.close()  # its lock's session went (a hang, a broken connection) ...
        assert new.leads()  # ... and another worker took the lead

    monkeypatch.setattr(runner, "train", train_meanwhile_the_lead_goes)
    try:
        assert old.leads()
        with old.fence(), pytest.raises(LostLead):
            check_policies(hub, now=time.time())
        assert hub.store.rollouts() == []
        assert ModelRef("wine", 2).target_path not in open_repo(hub.home).targets()
    finally:
        old.close()
        new.close()
        other_engine.dispose()
        hub.store.engine.dispose()
