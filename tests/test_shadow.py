"""Shadow mode and the health gate's error rate: pure logic, then a real agent, hub and broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.tree import DecisionTreeClassifier

from cloud_hub.cli import app as hub_cli
from cloud_hub.rollout.operations import enroll_device, init_hub, publish_bundle, start_rollout
from cloud_hub.rollout.shadow import shadow_reports, start_shadow, stop_shadow
from cloud_hub.store.database import Store
from cloud_hub.store.url import store_url
from converters.pipeline import build_bundle
from edge_agent.errors import ConfigError, MessageError
from edge_agent.inference.runtime import Runtime, load_runtime
from edge_agent.inference.shadow import Shadow
from edge_agent.protocol.messages import Command, ModelRef, Status, decode_command
from edge_agent.update.bundle import Bundle, read_bundle
from edge_agent.update.health import check_health
from tests.support.cli import hub_fails
from tests.support.fleet import Fleet, _bundle, fleet  # noqa: F401  (fleet is a fixture)

IRIS_X, IRIS_Y = load_iris(return_X_y=True)


def _stump_bundle(tmp: Path, version: int) -> Path:
    """A candidate that disagrees with the logistic regression on about a third of iris."""
    out = tmp / f"iris-{version}-stump.zip"
    model = DecisionTreeClassifier(max_depth=1, random_state=0).fit(IRIS_X, IRIS_Y)
    build_bundle(model, IRIS_X, IRIS_Y, name="iris", version=version, out=out)
    return out


def _open(path: Path) -> tuple[Bundle, Runtime]:
    bundle = read_bundle(path.read_bytes(), None, 1 << 26)
    return bundle, load_runtime(bundle.card, bundle.model_bytes)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("shadow-models")
    return {"lr": _bundle(tmp, 1), "stump": _stump_bundle(tmp, 2)}


# ---- pure logic -------------------------------------------------------------------------------
def test_shadow_reports_agreement_and_latency_every_n_rows(models: dict[str, Path]) -> None:
    _, current = _open(models["lr"])
    bundle, candidate = _open(models["stump"])
    shadow = Shadow(bundle.card.model, candidate, "classification", rows_per_report=100)
    x = IRIS_X.astype(np.float32)
    served = current.predict(x)
    expected = float(np.mean(candidate.predict(x) == served))
    assert 0.4 < expected < 0.9  # the two models really differ

    reports = []
    for i in range(0, 150, 30):  # micro-batches of 30: one crosses the report's boundary
        report = shadow.observe(x[i : i + 30], served[i : i + 30], 0.05, ModelRef("iris", 1))
        if report is not None:
            reports.append(report)
    assert len(reports) == 1  # exactly 100 rows reported, 50 waiting for the next report
    assert len(shadow._agree) == 50
    first = reports[0]
    assert first.rows == 100 and first.errors == 0
    assert first.current == ModelRef("iris", 1)
    assert first.agreement == pytest.approx(np.mean(candidate.predict(x[:100]) == served[:100]))
    assert first.latency_ms["current"] == {"p50": 0.05, "p95": 0.05}
    assert first.latency_ms["candidate"]["p95"] > 0


class _Failing:
    """A runtime that fails on every `every`-th call, around a real one."""

    def __init__(self, inner: Runtime, every: int) -> None:
        self.inner, self.every, self.calls = inner, every, 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls % self.every == 0:
            raise RuntimeError("onnxruntime: bad input")
        return self.inner.predict(x)

    def scores(self, x: np.ndarray) -> np.ndarray | None:
        return self.inner.scores(x)


def test_a_failing_candidate_counts_errors_as_disagreement(models: dict[str, Path]) -> None:
    bundle, candidate = _open(models["lr"])
    shadow = Shadow(bundle.card.model, _Failing(candidate, 2), "classification", 20)
    x = IRIS_X[:20].astype(np.float32)
    served = candidate.predict(x)
    report = None
    for i in range(0, 20, 5):
        report = shadow.observe(x[i : i + 5], served[i : i + 5], 0.01, ModelRef("iris", 1))
    assert report is not None
    assert report.errors == 10 and report.agreement == 0.5


def test_health_gate_checks_the_error_rate(models: dict[str, Path]) -> None:
    bundle, runtime = _open(models["lr"])
    healthy = check_health(bundle.card, runtime)
    assert healthy.ok and healthy.error_rate == 0.0
    result = check_health(bundle.card, _Failing(runtime, 4))
    assert not result.ok
    assert result.error_rate == pytest.approx(0.25, abs=0.05)
    assert result.reason.startswith("error rate 0.2") and "allowed 0.00" in result.reason
    assert "onnxruntime: bad input" in result.reason


class _NaN:
    def __init__(self, inner: Runtime) -> None:
        self.inner = inner

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), np.nan, dtype=np.float32)

    def scores(self, x: np.ndarray) -> np.ndarray | None:
        return None


def test_health_gate_counts_non_finite_outputs_as_errors(models: dict[str, Path]) -> None:
    bundle, runtime = _open(models["lr"])
    result = check_health(bundle.card, _NaN(runtime))
    assert not result.ok and result.error_rate == 1.0 and "output nan" in result.reason


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"v": 1, "id": "c", "kind": "shadow"}', "a shadow needs both 'model' and 'target'"),
        (
            b'{"v": 1, "id": "c", "kind": "shadow", "model": {"name": "iris", "version": 2},'
            b' "target": "iris/2.zip", "rows": 0}',
            "command.rows: expected 1 to 1000000, got 0",
        ),
        (
            b'{"v": 1, "id": "c", "kind": "shadow", "model": {"name": "iris", "version": 2},'
            b' "target": "iris/2.zip", "rows": "many"}',
            "command.rows: expected int",
        ),
    ],
)
def test_bad_shadow_commands_are_refused(payload: bytes, expected: str) -> None:
    with pytest.raises(MessageError, match=expected):
        decode_command(payload)


def test_shadow_command_round_trips() -> None:
    cmd = Command("c1", "shadow", ModelRef("iris", 2), "iris/2.zip", 3, "r-1", rows=50)
    assert decode_command(_encoded(cmd)) == cmd
    assert decode_command(_encoded(Command("c2", "shadow-stop"))).kind == "shadow-stop"


def _encoded(cmd: Command) -> bytes:
    from edge_agent.protocol.messages import encode

    return encode(cmd)


# ---- the CLI ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hub_home(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> Path:
    tmp = tmp_path_factory.mktemp("shadow-hub")
    home = tmp / "hub"
    init_hub(home)
    publish_bundle(home, models["stump"])
    enroll_device(home, "pi-01", tmp / "state")
    return home


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["shadow", "start", "iris@9", "--device", "pi-01"], "iris@9 is not published"),
        (["shadow", "start", "iris@2", "--device", "pi-99"], "no device 'pi-99' at this hub"),
        (["shadow", "start", "iris@2", "--device", "a/b"], "--device: expected 1-64 characters"),
        (["shadow", "start", "iris", "--device", "pi-01"], "NAME@VERSION"),
        (["shadow", "stop", "--device", "pi-99"], "no device 'pi-99'"),
    ],
)
def test_shadow_cli_mistakes_are_one_line(
    hub_home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert expected in hub_fails(capsys, "--home", str(hub_home), *argv)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--rows", "0"], "argument --rows: expected 1 to 1000000 rows, got '0'"),
        (["--rows", "x"], "argument --rows: expected 1 to 1000000 rows, got 'x'"),
        ([], "the following arguments are required: --device"),
    ],
)
def test_shadow_cli_argument_mistakes(
    hub_home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    device = ["--device", "pi-01"] if argv else []
    with pytest.raises(SystemExit) as info:
        hub_cli.main(["--home", str(hub_home), "shadow", "start", "iris@2", *device, *argv])
    assert info.value.code == 2
    assert expected in capsys.readouterr().err


def test_shadow_cli_without_a_hub(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = hub_fails(capsys, "--home", str(tmp_path / "none"), "shadow", "report")
    assert "no hub here" in err


def test_shadow_start_queues_one_command_per_device(
    hub_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--home", str(hub_home), "shadow", "start", "iris@2", "--device", "pi-01", "--json"]
    assert hub_cli.main(argv) == 0
    queued: list[dict[str, Any]] = __import__("json").loads(capsys.readouterr().out)
    assert [c["kind"] for c in queued] == ["shadow"] and queued[0]["rows"] == 200
    assert hub_cli.main(["--home", str(hub_home), "shadow", "report"]) == 0
    assert "no shadow report yet" in capsys.readouterr().out


# ---- a real agent, hub and mosquitto ----------------------------------------------------------
def test_shadow_run_reports_agreement_and_never_serves_the_candidate(
    fleet: Fleet,  # noqa: F811
    models: dict[str, Path],
) -> None:
    w = fleet.watcher
    publish_bundle(fleet.home, models["lr"])
    start_rollout(fleet.home, ModelRef("iris", 1), "1")
    w.wait("iris@1 healthy", lambda: w.has_event("healthy", 1))
    publish_bundle(fleet.home, models["stump"])
    start_shadow(fleet.home, ModelRef("iris", 2), ["pi-01"], rows=50)
    w.wait("the candidate shadowing", lambda: w.has_event("shadowing", 2))

    for row in IRIS_X:
        fleet.agent.lines.put(("csv", ",".join(f"{v:g}" for v in row).encode()))
    w.wait("three shadow reports", lambda: _reports(w.events) >= 3)

    _, current = _open(models["lr"])
    _, candidate = _open(models["stump"])
    x = IRIS_X.astype(np.float32)
    agree = candidate.predict(x) == current.predict(x)
    got = [e["shadow"] for e in w.events if e["event"] == "shadow-report"]
    for i, report in enumerate(got):
        assert report["rows"] == 50
        assert report["current"] == {"name": "iris", "version": 1}
        assert report["agreement"] == pytest.approx(agree[i * 50 : (i + 1) * 50].mean(), abs=1e-4)
    # never acted on: the device still serves iris@1, and every inference is counted once
    assert fleet.agent.store.record().current == ModelRef("iris", 1)
    assert fleet.agent.pipeline.active is not None
    assert fleet.agent.pipeline.active.card.model == ModelRef("iris", 1)
    assert fleet.agent.pipeline.stats.inferences == len(IRIS_X)

    def stored() -> int:
        return _reports([r.body for r in fleet.hub.store.records("events", "pi-01")])

    with fleet.hub.handled:
        assert fleet.hub.handled.wait_for(lambda: stored() == len(got), 30)
    (row,) = shadow_reports(fleet.home)  # the latest per device and candidate
    assert row["device"] == "pi-01" and row["candidate"] == "iris@2" and row["current"] == "iris@1"
    assert row["agreement"] == got[-1]["agreement"]

    stop_shadow(fleet.home, ["pi-01"])
    with fleet.hub.handled:
        assert fleet.hub.handled.wait_for(lambda: fleet.agent.pipeline.shadow is None, 30)


def _reports(events: list[dict[str, Any]]) -> int:
    return sum(e["event"] == "shadow-report" for e in events)


# ---- a candidate whose input differs from the serving model's ---------------------------------
def test_a_shadow_the_device_could_not_compare_is_refused_at_the_hub(
    tmp_path: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The agent compares a shadow only on the serving model's own input; a candidate that
    takes another input would never be compared there, so the hub refuses it up front."""
    home = tmp_path / "hub"
    init_hub(home)
    publish_bundle(home, models["lr"])  # iris@1: 4 features
    publish_bundle(home, models["stump"])  # iris@2: the same input
    three = tmp_path / "iris-3.zip"
    stump = DecisionTreeClassifier(max_depth=1, random_state=0).fit(IRIS_X[:, :3], IRIS_Y)
    build_bundle(stump, IRIS_X[:, :3], IRIS_Y, name="iris", version=3, out=three)
    publish_bundle(home, three)  # iris@3: 3 features
    enroll_device(home, "pi-01", tmp_path / "state")
    Store(store_url(home)).set_status(
        Status("pi-01", True, 1, "0.1", "raspberry-pi-4", ModelRef("iris", 1))
    )

    assert len(start_shadow(home, ModelRef("iris", 2), ["pi-01"], 50)) == 1
    err = hub_fails(capsys, "--home", str(home), "shadow", "start", "iris@3", "--device", "pi-01")
    assert "pi-01 serves iris@1, which takes row (4,)" in err
    assert "iris@3 takes row (3,)" in err
    with pytest.raises(ConfigError, match="without a shadow stage"):
        start_rollout(home, ModelRef("iris", 3), "100%", shadow_rows=50)
    assert start_rollout(home, ModelRef("iris", 3), "100%").model == ModelRef("iris", 3)
