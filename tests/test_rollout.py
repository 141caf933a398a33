"""The rollout state machine and its gates, without a broker: the tests drive the clock."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from cloud_hub.rollout import engine as ro
from cloud_hub.rollout.gates import (
    Gates,
    Metrics,
    Threshold,
    after_install,
    judge_installs,
    measure,
    parse_duration,
)
from edge_agent.errors import ConfigError, MessageError
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.records import DriftReport, ShadowReport, TelemetryWindow
from tests.support.rollout import Sim

MODEL = ModelRef("wine", 2)


def new(
    devices: list[str],
    canary: str = "1",
    waves: str = "100%",
    gates: Gates | None = None,
    select: str = "all",
    shadow: int | None = None,
) -> ro.Rollout:
    plan = ro.Plan(select, canary, tuple(waves.split(",")), gates or Gates(), shadow)
    planned = ro.plan_waves(devices, ro.parse_canary(canary), ro.parse_waves(waves))
    return ro.start("r-1", MODEL, "wine/2.zip", 4, planned, plan=plan, now=0.0)


def deploys(sends: list[tuple[str, str]]) -> list[str]:
    return [d for d, kind in sends if kind == "deploy"]


# ---- planning --------------------------------------------------------------------------------
def test_plan_waves_canary_then_everyone_sorted() -> None:
    one, all_ = Threshold(count=1), [Threshold(percent=100)]
    assert ro.plan_waves(["c", "a", "b", "d"], one, all_) == [["a"], ["b", "c", "d"]]
    assert ro.plan_waves(["c", "a", "b", "d"], Threshold(count=2), all_) == [["a", "b"], ["c", "d"]]


def test_plan_waves_by_percent_of_the_fleet() -> None:
    devices = [f"d{i:02}" for i in range(20)]
    waves = ro.plan_waves(devices, ro.parse_canary("5%"), ro.parse_waves("25%,50%,100%"))
    assert [len(w) for w in waves] == [1, 4, 5, 10]
    assert [d for w in waves for d in w] == devices
    # shares that round to nothing new are dropped, never empty waves
    small = ro.plan_waves(["a", "b"], ro.parse_canary("1"), ro.parse_waves("10%,50%,100%"))
    assert small == [["a"], ["b"]]


@pytest.mark.parametrize("canary", ["3", "10", "100%"])
def test_plan_waves_canary_as_big_as_the_fleet_is_one_wave(canary: str) -> None:
    devices = ["z", "y", "x"]
    assert ro.plan_waves(devices, ro.parse_canary(canary), ro.parse_waves("100%")) == [
        ["x", "y", "z"]
    ]


def test_plan_waves_without_devices() -> None:
    with pytest.raises(ConfigError, match="rollout: no devices match the target; enroll"):
        ro.plan_waves([], Threshold(count=1), [Threshold(percent=100)])


@pytest.mark.parametrize(
    ("spec", "fleet", "count"),
    [("1", 10, 1), ("3", 10, 3), ("10%", 10, 1), ("10%", 25, 3), ("1%", 5, 1), ("50%", 4, 2)],
)
def test_canary_count(spec: str, fleet: int, count: int) -> None:
    assert max(1, ro.parse_canary(spec).ceil(fleet)) == count


@pytest.mark.parametrize(
    "spec", ["x", "", "%", "ten%", "1.5", "2 devices", "inf%", "nan%", "1e400%", "-5%", "101%"]
)
def test_canary_rejects(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        ro.parse_canary(spec)
    assert str(info.value).startswith("--canary: expected")
    assert repr(spec) in str(info.value)


@pytest.mark.parametrize("spec", ["0", "0%"])
def test_canary_of_nobody(spec: str) -> None:
    with pytest.raises(ConfigError, match=f"--canary: expected at least 1 device, got {spec!r}"):
        ro.parse_canary(spec)


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("10%,50%", "last wave to be 100%"),
        ("50%,10%,100%", "growing"),
        ("0%,100%", "above 0"),
        ("10%,,100%", "count like 2"),
        ("half", "count like 2"),
        ("20,5,100%", "growing"),
    ],
)
def test_waves_rejects(spec: str, why: str) -> None:
    with pytest.raises(ConfigError, match=f"--waves: expected .*{why}"):
        ro.parse_waves(spec)


def test_thresholds_round_toward_caution() -> None:
    assert Threshold.parse("10%", "x").floor(5) == 0  # a failure budget rounds down
    assert Threshold.parse("10%", "x").ceil(5) == 1  # a success need rounds up
    assert Threshold.parse("20%", "x").floor(10) == 2
    assert Threshold.parse("3", "x").ceil(2) == 2  # never more than there are
    assert str(Threshold.parse("12.5%", "x")) == "12.5%"


@pytest.mark.parametrize(
    ("text", "seconds"), [("0", 0.0), ("90", 90.0), ("90s", 90.0), ("5m", 300.0), ("1.5h", 5400.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "--soak") == seconds


@pytest.mark.parametrize("text", ["", "5 min", "-1", "1d", "m"])
def test_durations_rejected(text: str) -> None:
    with pytest.raises(ConfigError, match=f"--soak: expected a duration like 30s.*got {text!r}"):
        parse_duration(text, "--soak")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_p95_ms": 20.0}, "--soak: the latency"),
        ({"max_p95_ms": -1.0, "soak_s": 5}, "--max-p95-ms: expected a number from 0"),
        ({"max_error_rate": 1.5, "soak_s": 5}, "--max-error-rate: expected a number from 0 to 1"),
        ({"max_psi": math.nan, "soak_s": 5}, "--max-psi"),
        ({"min_agreement": 2.0}, "--min-agreement: expected a number from 0 to 1"),
        ({"on_fail": "shrug"}, "--on-fail: expected abort or pause"),
        ({"soak_s": math.inf}, "--soak: expected a duration"),
    ],
)
def test_gates_refuse_nonsense(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Gates(**kwargs)


def test_agreement_needs_a_shadow_phase() -> None:
    with pytest.raises(ConfigError, match=r"--min-agreement: .*add --shadow ROWS"):
        ro.Plan(gates=Gates(min_agreement=0.9))


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("all", True),
        ("group:lab", True),
        ("tag:edge,cam", True),
        ("group:a,b", False),
        ("tag:", False),
        ("tags:x", False),
        ("everyone", False),
        ("tag:a/b", False),
        ("group:+", False),
    ],
)
def test_selector(text: str, ok: bool) -> None:
    if ok:
        assert str(ro.Selector.parse(text)) == text
    else:
        with pytest.raises(ConfigError, match="--target"):
            ro.Selector.parse(text)


def test_selector_matches() -> None:
    lab = ro.DeviceFacts(group="lab", tags=("cam", "edge"))
    assert ro.Selector.parse("all").matches(lab)
    assert ro.Selector.parse("group:lab").matches(lab)
    assert not ro.Selector.parse("group:field").matches(lab)
    assert ro.Selector.parse("tag:edge,cam").matches(lab)
    assert not ro.Selector.parse("tag:edge,gpu").matches(lab)


# ---- stepping: install results --------------------------------------------------------------
def test_canary_gets_the_deploy_first_and_others_only_after_it_is_healthy() -> None:
    sim = Sim(new(["d3", "d1", "d2"]))
    r = sim.r
    assert r.devices == {"d1": ro.WAITING, "d2": ro.WAITING, "d3": ro.WAITING}
    assert sim.step(1) == [("d1", "deploy")]
    assert r.devices["d1"] == ro.SENT
    assert sim.step(2) == []  # not sent twice
    sim.report("d1", "offered")
    sim.report("d1", "installed")
    assert sim.step(3) == []
    assert (r.wave, r.state, r.devices["d1"]) == (0, ro.RUNNING, ro.INSTALLED)
    sim.report("d1", "healthy")
    assert sim.step(4) == [("d2", "deploy"), ("d3", "deploy")]
    assert r.wave == 1
    assert r.stages[0].gate is not None and r.stages[0].gate["outcome"] == "proceed"
    sim.report("d2", "healthy")
    assert sim.step(5) == []
    assert r.state == ro.RUNNING
    sim.report("d3", "healthy")
    assert sim.step(6) == []
    assert r.state == ro.COMPLETED
    assert r.halt_reason == ""
    sim.report("d3", "rejected", "late")
    assert sim.step(7) == []
    assert r.state == ro.COMPLETED
    assert sim.measured == []  # no model gate asked for: nothing measured


@pytest.mark.parametrize("event", ["rejected", "rolled-back"])
def test_a_failing_canary_halts_and_nobody_else_is_sent(event: str) -> None:
    sim = Sim(new(["a", "b", "c"]))
    sim.step(1)
    sim.report("a", event, "tampered: hash mismatch")
    assert sim.step(2) == []
    r = sim.r
    assert r.state == ro.HALTED
    assert r.halt_reason.startswith("wave 1: 1 of 1 device(s) failed, at most 0 allowed")
    assert "a tampered: hash mismatch" in r.halt_reason
    assert r.devices == {"a": ro.FAILED, "b": ro.WAITING, "c": ro.WAITING}
    assert r.rollback == {}  # it rolled itself back (or never installed)
    sim.report("b", "healthy")
    assert sim.step(3) == []
    assert r.state == ro.HALTED


def test_failures_allowed_as_a_count() -> None:
    sim = Sim(new([f"d{i}" for i in range(6)], canary="3", gates=Gates(max_failure=Threshold(1))))
    assert deploys(sim.step(1)) == ["d0", "d1", "d2"]
    sim.report("d0", "rejected", "bad disk")
    sim.report("d1", "healthy")
    sim.report("d2", "healthy")
    assert deploys(sim.step(2)) == ["d3", "d4", "d5"]  # 1 failure is within the budget
    sim.report("d3", "rejected", "x")
    sim.report("d4", "rejected", "y")
    # 2 failures in a wave of 3: abort without waiting for d5, and the healthy ones of every
    # wave get a rollback, once
    assert sorted(sim.step(3)) == [("d1", "rollback"), ("d2", "rollback")]
    assert sim.r.state == ro.HALTED
    assert sim.r.halt_reason.startswith("wave 2: 2 of 3 device(s) failed, at most 1 allowed")
    assert sim.step(4) == []
    assert sim.step(5) == []
    sim.report("d5", "healthy")  # the straggler installed after the abort: rolled back too
    assert sim.step(6) == [("d5", "rollback")]
    sim.report("d1", "rolled-back", "requested by the hub")
    sim.step(7)
    assert sim.r.rollback == {"d1": "done", "d2": "sent", "d5": "sent"}
    assert ro.progress(sim.r)["rolled_back"] == 1


def test_failures_allowed_as_a_percent() -> None:
    devices = [f"d{i:02}" for i in range(10)]
    sim = Sim(new(devices, canary="10", gates=Gates(max_failure=Threshold(percent=20))))
    sim.step(1)
    for d in devices[:2]:
        sim.report(d, "rejected", "x")
    for d in devices[2:9]:
        sim.report(d, "healthy")
    sim.step(2)
    assert sim.r.state == ro.RUNNING  # 2 of 10 = 20%: within
    sim.report("d09", "rolled-back", "health gate failed: latency")
    sim.step(3)
    assert sim.r.state == ro.HALTED
    assert "3 of 10 device(s) failed, at most 20% allowed" in sim.r.halt_reason


def test_too_few_successes_pause() -> None:
    gates = Gates(max_failure=Threshold(2), min_success=Threshold(percent=80))
    sim = Sim(new(["a", "b", "c", "d", "e"], canary="5", gates=gates))
    sim.step(1)
    for d, event in zip(
        "abcde", ["healthy", "healthy", "healthy", "rejected", "rejected"], strict=True
    ):
        sim.report(d, event, "no space")
    sim.step(2)
    assert sim.r.state == ro.PAUSED
    assert sim.r.halt_reason == ("wave 1: 3 of 5 answering device(s) healthy, at least 80% needed")
    assert sim.r.rollback == {}  # a pause rolls nothing back
    ro.resume(sim.r)
    sim.step(3)
    assert sim.r.state == ro.COMPLETED
    assert sim.r.stages[0].gate is not None and sim.r.stages[0].gate["overridden"] is True


# ---- soak and model gates ---------------------------------------------------------------------
def soaked(**gates: Any) -> Sim:
    sim = Sim(new(["a", "b", "c"], waves="50%,100%", gates=Gates(soak_s=60, **gates)))
    assert sim.step(100) == [("a", "deploy")]
    sim.report("a", "healthy")
    assert sim.step(110) == []  # settled at 110, soaking until 170
    assert sim.r.stages[0].settled == 110
    return sim


def test_the_soak_holds_the_next_wave_until_it_ends() -> None:
    sim = soaked()
    assert sim.step(169) == []
    assert ro.wave_rows(sim.r, 169)[0]["phase"] == "soaking, 1 s left"
    assert sim.step(170) == [("b", "deploy")]  # 50% of 3 = 2 devices reached
    sim.report("b", "healthy")
    sim.step(171)
    assert sim.step(231) == [("c", "deploy")]
    sim.report("c", "healthy")
    sim.step(232)
    sim.step(292)
    assert sim.r.state == ro.COMPLETED
    assert [row["phase"] for row in ro.wave_rows(sim.r, 300)] == ["passed"] * 3


def test_latency_budget_broken_after_the_soak_halts_and_rolls_back() -> None:
    sim = soaked(max_p95_ms=5.0)
    sim.metrics = Metrics(windows=3, inferences=300, p95_ms=7.5)
    assert sim.step(169) == []
    assert sim.measured == []  # not measured before the soak ends
    assert sim.step(170) == [("a", "rollback")]
    # the healthy devices, each from where it installed the model, read since the deploy
    assert sim.measured == [({"a": (1, 0)}, 100)]
    assert sim.r.state == ro.HALTED
    assert sim.r.halt_reason == "wave 1: p95_ms 7.5 above the limit 5"
    gate = sim.r.stages[0].gate
    assert gate is not None
    assert {c["name"]: c["ok"] for c in gate["checks"]} == {
        "failures": True,
        "healthy": True,
        "p95_ms": False,
    }


@pytest.mark.parametrize(
    ("gates", "metrics", "reason"),
    [
        ({"max_psi": 0.2}, Metrics(drift_reports=2, max_psi=0.9), "max_psi 0.9 above the limit"),
        (
            {"max_accuracy_drop": 0.05},
            Metrics(drift_reports=2, accuracy_drop=0.08),
            "accuracy_drop 0.08 above the limit 0.05",
        ),
        (
            {"max_error_rate": 0.01},
            Metrics(windows=1, inferences=100, errors=5),
            "error_rate 0.05 above the limit 0.01",
        ),
        (
            {"max_error_rate": 0.01},
            Metrics(windows=1, inferences=0, errors=5),
            "error_rate none above",
        ),
    ],
)
def test_drift_and_error_gates(gates: dict[str, Any], metrics: Metrics, reason: str) -> None:
    sim = soaked(**gates)
    sim.metrics = metrics
    assert sim.step(170) == [("a", "rollback")]
    assert sim.r.state == ro.HALTED
    assert reason in sim.r.halt_reason


def test_model_within_every_limit_proceeds() -> None:
    sim = soaked(max_p95_ms=5.0, max_error_rate=0.01, max_psi=0.2)
    sim.metrics = Metrics(
        windows=3, inferences=300, errors=1, p95_ms=2.0, drift_reports=1, max_psi=0.05
    )
    assert sim.step(170) == [("b", "deploy")]


def test_accuracy_drop_is_pooled_per_device_and_the_worst_device_counts() -> None:
    """Each device's expected accuracy pools its windows' sums over their rows (a short window
    weighs what it holds); the drop is the card's value less that; bodies without a usable
    estimate are skipped."""

    def body(total: float, rows: int, reference: float = 0.95) -> dict[str, Any]:
        return {"accuracy": {"sum": total, "rows": rows, "reference": reference}}

    drift = {
        "a": [body(180.0, 200), body(10.0, 20)],  # 190 of 220 expected right: 0.8636
        "b": [body(188.0, 200), {"accuracy": None}],
        "c": [{"max_psi": 0.1}],  # a regressor or a card without a calibration
    }
    m = measure({}, reports(drift))
    assert m.accuracy_drop == pytest.approx(0.95 - 190 / 220)
    assert measure({}, reports({"c": [{"max_psi": 0.1}]})).accuracy_drop is None
    better = measure({}, reports({"a": [body(198.0, 200)]}))
    assert better.accuracy_drop == pytest.approx(-0.04)  # an improvement passes any limit
    sim = soaked(max_accuracy_drop=0.0)
    sim.metrics = better
    assert sim.step(170) == [("b", "deploy")]


def test_a_halt_names_the_device_a_worst_device_figure_is_of() -> None:
    """p95 latency, PSI and the accuracy drop are each the worst device's: the halt says which
    device, so a person can tell one busy device from the model's latency everywhere."""

    def window(p95: float) -> dict[str, Any]:
        return {"window_s": 5.0, "model": MODEL.to_json(), "count": 100, "latency_ms": {"p95": p95}}

    m = measure(
        windows({"pi-01": [window(2.0)], "pi-07": [window(40.0), window(20.0)]}),
        reports({"pi-01": [{"max_psi": 0.4}], "pi-07": [{"max_psi": 0.1}]}),
    )
    assert m.p95_ms == 30.0 and m.max_psi == 0.4
    assert m.worst == {"p95_ms": "pi-07", "max_psi": "pi-01"}
    sim = soaked(max_p95_ms=5.0, max_psi=0.2)
    sim.metrics = m
    assert sim.step(170) == [("a", "rollback")]
    assert sim.r.halt_reason == (
        "wave 1: p95_ms 30 (device pi-07) above the limit 5; "
        "max_psi 0.4 (device pi-01) above the limit 0.2"
    )


def test_no_telemetry_after_the_soak_pauses_and_resume_proceeds() -> None:
    sim = soaked(max_p95_ms=5.0)
    assert sim.step(170) == []
    assert sim.r.state == ro.PAUSED
    assert "no data for p95_ms" in sim.r.halt_reason
    ro.resume(sim.r)
    assert sim.step(171) == [("b", "deploy")]


def test_on_fail_pause_pauses_instead_of_rolling_back() -> None:
    sim = soaked(max_p95_ms=5.0, on_fail="pause")
    sim.metrics = Metrics(windows=1, inferences=10, p95_ms=50.0)
    assert sim.step(170) == []
    assert sim.r.state == ro.PAUSED
    assert "p95_ms 50 above" in sim.r.halt_reason
    ro.roll_back(sim.r)  # the person looked and decided
    assert sim.step(171) == [("a", "rollback")]
    assert sim.r.state == ro.ROLLED_BACK


# ---- what a wave's gate counts: each device's records after its own install -------------------
@frozen
class Rec:
    """A stored record as the hub reads it (cloud_hub.store.database.StoredRecord's fields)."""

    device: str
    boot: int
    seq: int
    body: dict[str, Any]

    def typed(self) -> tuple[Rec, TelemetryWindow]:
        return self, TelemetryWindow.from_body(self.body, "telemetry")


def reports(bodies: dict[str, list[dict[str, Any]]]) -> dict[str, list[DriftReport]]:
    return {d: [DriftReport.from_body(b, "drift") for b in bs] for d, bs in bodies.items()}


def windows(bodies: dict[str, list[dict[str, Any]]]) -> dict[str, list[TelemetryWindow]]:
    return {d: [TelemetryWindow.from_body(b, "telemetry") for b in bs] for d, bs in bodies.items()}


M = MODEL.to_json()
OTHER = ModelRef("wine", 1).to_json()


def window(model: dict[str, Any] | None, count: int, **errors: int) -> dict[str, Any]:
    return {"model": model, "count": count, "latency_ms": {"p95": 1.0}, "errors": errors}


def test_only_what_each_device_recorded_after_its_install_with_the_candidate_counts() -> None:
    installed = {"a": (1, 5), "b": (3, 10)}  # b already ran the model: its `healthy` answer
    records = [
        Rec("a", 1, 2, window(M, 10, garbage=40)),  # an earlier attempt with this model
        Rec("a", 1, 4, window(OTHER, 50, nan=9)),  # the model before, just before the install
        Rec("a", 1, 6, window(None, 0, **{"no-model": 30})),  # closed after the install
        Rec("a", 1, 7, window(M, 100)),
        Rec("a", 2, 0, window(M, 50, nan=1)),  # after a reboot: seq starts again, boot is higher
        Rec("b", 2, 99, window(M, 20, garbage=20)),  # an earlier boot: before its answer
        Rec("b", 3, 9, window(M, 20, garbage=20)),  # buffered while offline, arrived late
        Rec("b", 3, 11, window(M, 100)),
        Rec("c", 1, 50, window(M, 5, garbage=5)),  # not a device of the wave
    ]
    counted = after_install([r.typed() for r in records], MODEL, installed)
    assert counted == windows(
        {
            "a": [window(M, 100), window(M, 50, nan=1)],
            "b": [window(M, 100)],
        }
    )
    metrics = measure(counted, {})
    assert (metrics.windows, metrics.inferences, metrics.errors) == (3, 250, 1)


def test_a_device_is_measured_from_its_first_install_or_already_running_answer() -> None:
    reports = [
        ro.Report("a", "offered", at=(1, 3)),
        ro.Report("a", "installed", at=(1, 5)),
        ro.Report("a", "healthy", at=(1, 7)),
        ro.Report("a", "healthy", "already running", at=(2, 1)),  # a resent deploy, answered
        ro.Report("b", "healthy", "already running", at=(4, 2)),
        ro.Report("c", "rejected", "tampered", at=(1, 1)),
    ]
    assert ro.installed_at(reports) == {"a": (1, 5), "b": (4, 2)}
    assert ro.installed_at(reversed(reports)) == {"a": (1, 5), "b": (4, 2)}


def test_the_wave_gate_measures_each_healthy_device_from_its_own_install() -> None:
    gates = Gates(soak_s=60, max_error_rate=0.05, max_failure=Threshold(count=1))
    sim = Sim(new(["a", "b", "c"], canary="3", gates=gates))
    assert deploys(sim.step(100)) == ["a", "b", "c"]
    for event in ("offered", "downloading", "verified", "installed", "healthy"):
        sim.report("a", event)  # a's records 0 to 4: installed is (1, 3)
    sim.report("b", "healthy", "already running")  # b's record 0
    sim.report("c", "offered")
    sim.report("c", "rejected", "tampered: chunk 0")
    sim.step(110)
    sim.metrics = Metrics(windows=2, inferences=200)
    sim.step(170)
    assert sim.measured == [({"a": (1, 3), "b": (1, 0)}, 100)]  # c failed: not measured
    assert sim.r.state == ro.COMPLETED


# ---- pause, resume, abort, rollback by hand ---------------------------------------------------
def test_pause_holds_new_waves_and_resume_continues() -> None:
    sim = Sim(new(["a", "b"]))
    sim.step(1)
    ro.pause(sim.r)
    sim.report("a", "healthy")
    assert sim.step(2) == []
    assert sim.r.devices["a"] == ro.HEALTHY  # answers still count while paused
    assert sim.r.halt_reason == "paused by hand"
    with pytest.raises(
        ConfigError, match="rollout r-1 is paused; only a running rollout can be paused"
    ):
        ro.pause(sim.r)
    ro.resume(sim.r)
    assert sim.step(3) == [("b", "deploy")]
    with pytest.raises(ConfigError, match="only a paused rollout can be resumed"):
        ro.resume(sim.r)


def test_abort_stops_sending_and_keeps_installs() -> None:
    sim = Sim(new(["a", "b"]))
    sim.step(1)
    sim.report("a", "healthy")
    ro.abort(sim.r)
    assert sim.step(2) == []
    assert sim.r.state == ro.ABORTED
    assert sim.r.devices["b"] == ro.WAITING
    with pytest.raises(ConfigError, match="is aborted; only a running or paused or completed"):
        ro.abort(sim.r)


def test_rollback_of_a_completed_rollout() -> None:
    sim = Sim(new(["a", "b"]))
    sim.step(1)
    sim.report("a", "healthy")
    sim.step(2)
    sim.report("b", "healthy")
    sim.step(3)
    assert sim.r.state == ro.COMPLETED
    ro.roll_back(sim.r)
    assert sim.step(4) == [("a", "rollback"), ("b", "rollback")]
    assert sim.step(5) == []
    with pytest.raises(ConfigError, match="is rolled-back"):
        ro.roll_back(sim.r)


# ---- offline devices, returning devices, joiners ---------------------------------------------
def test_offline_device_does_not_hold_its_wave_and_gets_the_model_when_back() -> None:
    sim = Sim(new(["a", "b", "c"]), online=["a", "b"])
    sim.step(1)
    sim.report("a", "healthy")
    assert deploys(sim.step(2)) == ["b", "c"]  # c is offline: the broker keeps its command
    sim.report("b", "healthy")
    sim.step(3)
    assert sim.r.state == ro.COMPLETED  # c is not holding anyone up
    assert sim.r.devices["c"] == ro.SENT
    # c comes back; its session had the command, it answers: nothing is sent again
    sim.fleet["c"] = ro.DeviceFacts(True, online_since=50)
    sim.report("c", "offered")
    assert sim.step(50 + ro.RESEND_AFTER_S) == []
    sim.report("c", "healthy")
    sim.step(70)
    assert sim.r.devices["c"] == ro.HEALTHY


def test_a_wave_nobody_answered_waits_for_its_devices() -> None:
    sim = Sim(new(["a", "b"]), online=["a"])
    sim.step(1)
    sim.report("a", "healthy")
    assert deploys(sim.step(2)) == ["b"]
    sim.step(3)
    assert (sim.r.state, sim.r.wave) == (ro.RUNNING, 1)  # b is offline: no evidence yet
    assert ro.wave_rows(sim.r, 3)[1]["phase"] == "installing"
    sim.fleet["b"] = ro.DeviceFacts(True, online_since=4)
    sim.report("b", "healthy")
    sim.step(5)
    assert sim.r.state == ro.COMPLETED


def test_a_device_back_without_answering_gets_the_command_again() -> None:
    sim = Sim(new(["a", "b"]), online=["a"])
    sim.step(1)
    sim.report("a", "healthy")
    assert deploys(sim.step(2)) == ["b"]
    sim.fleet["b"] = ro.DeviceFacts(True, online_since=100)
    assert sim.step(100 + ro.RESEND_AFTER_S - 1) == []  # give the broker's copy a chance
    assert sim.step(100 + ro.RESEND_AFTER_S) == [("b", "deploy")]
    assert sim.step(100 + ro.RESEND_AFTER_S + 1) == []  # once
    # an online device silent for long gets it again too
    assert sim.step(100 + ro.RESEND_AFTER_S + ro.RESEND_IDLE_S) == [("b", "deploy")]


def test_new_matching_devices_join_and_others_do_not() -> None:
    r = new(["a", "b"], select="tag:cam")
    sim = Sim(r)
    sim.fleet = {d: ro.DeviceFacts(True, tags=("cam",)) for d in ("a", "b")}
    sim.step(1)
    sim.fleet["z-new"] = ro.DeviceFacts(True, tags=("cam",))
    sim.fleet["other"] = ro.DeviceFacts(True, tags=("gpu",))
    sim.step(2)
    assert r.waves == [["a"], ["b", "z-new"]]  # joins the last wave, not yet started
    assert "other" not in r.devices
    sim.report("a", "healthy")
    assert deploys(sim.step(3)) == ["b", "z-new"]
    sim.report("b", "healthy")
    sim.report("z-new", "healthy")
    sim.step(4)
    assert r.state == ro.COMPLETED
    # after completion a newcomer still gets the model at once
    sim.fleet["late"] = ro.DeviceFacts(True, tags=("cam",))
    assert sim.step(5) == [("late", "deploy")]


def test_events_from_strangers_are_ignored() -> None:
    sim = Sim(new(["a", "b"]))
    sim.step(1)
    sim.report("intruder", "rejected", "x")
    sim.report("intruder", "healthy")
    assert sim.step(2) == []
    assert sim.r.state == ro.RUNNING
    assert "intruder" not in sim.r.devices


def test_a_healthy_device_reporting_failure_later_does_not_flip() -> None:
    sim = Sim(new(["a", "b"]))
    sim.step(1)
    sim.report("a", "healthy")
    sim.report("a", "rolled-back", "later")
    sim.step(2)
    assert sim.r.devices["a"] == ro.HEALTHY
    assert sim.r.state == ro.RUNNING


def test_replaying_every_event_changes_nothing() -> None:
    """The hub passes all of a rollout's events on each step: the result must not change."""
    sim = Sim(new(["a", "b", "c"]))
    sim.step(1)
    sim.report("a", "healthy")
    assert deploys(sim.step(2)) == ["b", "c"]
    snapshot = sim.r.to_json()
    for t in (3, 4, 5):
        assert sim.step(t) == []
    sim.events = sim.events + sim.events
    assert sim.step(6) == []
    assert sim.r.to_json() == snapshot


# ---- shadow -----------------------------------------------------------------------------------
def test_shadow_phase_gates_on_agreement_before_deploying() -> None:
    gates = Gates(min_agreement=0.95, soak_s=30)
    sim = Sim(new(["a", "b"], gates=gates, shadow=200))
    assert sim.step(1) == [("a", "shadow")]
    assert ro.wave_rows(sim.r, 1)[0]["phase"] == "shadowing"
    sim.report("a", "shadowing")
    assert sim.step(2) == []
    sim.report("a", "shadow-report", rows=200, agreement=0.99)
    assert sim.step(3) == [("a", "deploy")]
    assert sim.r.stages[0].shadow_gate is not None
    assert sim.r.stages[0].shadow_gate["checks"][0]["value"] == 0.99
    sim.report("a", "healthy")
    sim.step(4)
    assert sim.step(34) == [("b", "shadow")]
    sim.report("b", "shadow-report", rows=100, agreement=0.5)
    sim.report("b", "shadow-report", rows=100, agreement=0.9)
    assert sim.step(35) == [("a", "rollback")]
    assert sim.r.state == ro.HALTED
    assert sim.r.halt_reason == "wave 2 shadow: agreement 0.7 below the limit 0.95"
    assert sim.step(36) == []
    assert sim.r.devices["b"] == ro.SHADOWED  # never deployed


def test_shadow_without_reports_pauses_after_the_soak() -> None:
    sim = Sim(new(["a"], gates=Gates(min_agreement=0.9, soak_s=30), shadow=50))
    sim.step(0)
    assert sim.step(29) == []
    sim.step(30)
    assert sim.r.state == ro.PAUSED
    assert "no data for agreement" in sim.r.halt_reason


# ---- persistence -----------------------------------------------------------------------------
def test_json_round_trip_then_continue() -> None:
    """What the store keeps is all there is: a restarted hub continues from it."""
    sim = Sim(
        new(["a", "b", "c"], canary="2", waves="50%,100%", gates=Gates(soak_s=10, max_psi=0.3))
    )
    sim.step(1)
    sim.report("a", "healthy")
    sim.report("b", "healthy")
    sim.step(2)
    body = json.loads(json.dumps(sim.r.to_json()))
    back = ro.Rollout.from_json(body)
    assert back == sim.r
    assert back.plan.gates.max_psi == 0.3
    sim.r = back
    sim.metrics = Metrics(drift_reports=1, max_psi=0.1)
    assert sim.step(12) == [("c", "deploy")]


def test_measure_reads_typed_records() -> None:
    telemetry = {
        "a": [
            {"count": 100, "latency_ms": {"p95": 2.0}, "errors": {"nan": 1}},
            {"count": 300, "latency_ms": {"p95": 4.0}, "errors": {}},
        ],
        "b": [{"count": 10, "latency_ms": {"p95": 1.0}, "errors": {"wrong-field-count": 2}}],
    }
    drift = {"a": [{"max_psi": 0.1}, {"max_psi": 0.4}]}
    shadow = {
        "a": [
            ShadowReport.from_body({"rows": 100, "agreement": 1.0}, "shadow"),
            ShadowReport.from_body({"rows": 300, "agreement": 0.8}, "shadow"),
        ]
    }
    m = measure(windows(telemetry), reports(drift), shadow)
    assert m.windows == 3
    assert m.inferences == 410
    assert m.errors == 3
    assert m.p95_ms == pytest.approx(3.5)  # a's weighted mean, the worst device
    assert m.max_psi == 0.4
    assert m.drift_reports == 2
    assert m.agreement == pytest.approx(0.85)
    assert m.error_rate == pytest.approx(3 / 410)


def test_judge_installs_counts() -> None:
    v = judge_installs(Gates(max_failure=Threshold(percent=50)), 4, healthy=2, failed=2, answered=4)
    assert v.outcome == "proceed"
    v = judge_installs(Gates(), 4, healthy=0, failed=1, answered=1)
    assert v.outcome == "abort"


def test_a_window_models_error_rate_counts_the_lines_it_took_not_its_windows() -> None:
    """Many sensor lines make one window: one refused line in 64 is 1.6% of what the device
    took, not one error per window."""
    taken = TelemetryWindow(count=2, errors={"non-numeric": 1}, model=MODEL, lines=127)
    m = measure({"a": [taken, TelemetryWindow(count=1, model=MODEL, lines=64)]}, {})
    assert (m.inferences, m.taken, m.errors) == (3, 191, 1)
    assert m.error_rate == pytest.approx(1 / 191)
    rows = measure({"a": [TelemetryWindow(count=100, errors={"garbage": 5}, model=MODEL)]}, {})
    assert rows.error_rate == pytest.approx(0.05)  # a row model: one line, one inference
    with pytest.raises(MessageError, match=r"telemetry\.lines: expected"):
        TelemetryWindow.from_body({"count": 1, "lines": -3}, "telemetry")
