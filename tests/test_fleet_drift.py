"""Fleet and cohort drift: the devices' window counts added up per model version and cohort, and
tested against the card with the device's own statistics; `edgehub drift --fleet`.

The devices are real DriftMonitors fed seeded data; their reports go into a hub's store as an
agent's would (the drift CLI tests' way: SQLite in a temporary hub folder)."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cloud_hub.cli import app as cli
from cloud_hub.drift.fleet import (
    FLEET,
    NO_COUNTS,
    UNFIT,
    Labels,
    Report,
    fleet_drift,
    merge,
    minus_log10,
    pooled_accuracy,
)
from cloud_hub.drift.source import FleetQuery, PublishedCards, read_fleet_drift
from cloud_hub.signing.tuf_repo import TufRepository
from cloud_hub.store.database import Store
from cloud_hub.store.url import store_url
from cloud_hub.web import views as views
from cloud_hub.web.metrics import registry_for
from edge_agent.drift import DriftMonitor
from edge_agent.errors import MessageError
from edge_agent.protocol.card import ModelCard, parse_card
from edge_agent.protocol.messages import Batch, ModelRef, Record
from edge_agent.protocol.records import DriftReport
from tests.support.dashboard_fleet import bundle_of, card_json, predict_sign

FEATURES = ["temperature", "humidity", "pressure", "light"]
REFERENCE_ROWS = 100_000
WINDOW = 200
MODEL = ModelRef("plant", 1)


@pytest.fixture(scope="module")
def card() -> ModelCard:
    rng = np.random.default_rng(7)
    return parse_card(card_json(rng.normal(size=(REFERENCE_ROWS, len(FEATURES))), FEATURES, MODEL))


def device_windows(
    card: ModelCard, rng: np.random.Generator, windows: int, shift: float
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """A device's drift reports over `windows` windows of inputs shifted by `shift` standard
    deviations on every feature, and the rows it saw."""
    monitor = DriftMonitor(card, WINDOW)
    x = rng.normal(size=(windows * WINDOW, len(FEATURES))) + shift
    reports = []
    for w in range(windows):
        rows = x[w * WINDOW : (w + 1) * WINDOW]
        report = monitor.add(rows, predict_sign(rows))
        assert report is not None
        reports.append(report)
    return reports, x


def fleet_of(
    card: ModelCard, devices: int, windows: int, shift: float, seed: int
) -> tuple[list[Report], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    reports, seen = [], {}
    for d in range(devices):
        bodies, rows = device_windows(card, rng, windows, shift)
        reports += [report_of(f"pi-{d:03d}", b) for b in bodies]
        seen[f"pi-{d:03d}"] = rows
    return reports, seen


def report_of(device: str, body: dict[str, Any]) -> Report:
    return Report(device, DriftReport.from_body(body, "drift"))


def labels_of(devices: list[str]) -> dict[str, Labels]:
    """Even devices in the greenhouse group, every third one tagged outdoor."""
    return {
        d: Labels("greenhouse" if i % 2 == 0 else "", ("outdoor",) if i % 3 == 0 else ())
        for i, d in enumerate(sorted(devices))
    }


def bin_counts(values: np.ndarray, edges: tuple[float, ...]) -> list[int]:
    """Counts over the card's bins written out: bin i holds edges[i-1] < v <= edges[i]."""
    bounds = [-np.inf, *edges, np.inf]
    return [int(((values > lo) & (values <= hi)).sum()) for lo, hi in itertools.pairwise(bounds)]


# ---- merging ----------------------------------------------------------------------------------
def test_merged_counts_are_the_sum_of_the_devices_counts(card: ModelCard) -> None:
    reports, seen = fleet_of(card, devices=6, windows=3, shift=0.0, seed=1)
    labels = labels_of(list(seen))
    merged = merge(reports, labels, {MODEL: card})
    cohorts = {
        FLEET: list(seen),
        "group:greenhouse": [d for d in seen if labels[d].group == "greenhouse"],
        "tag:outdoor": [d for d in seen if "outdoor" in labels[d].tags],
    }
    assert {c for _, c in merged} == set(cohorts)
    for cohort, members in cohorts.items():
        m = merged[(MODEL, cohort)]
        rows = np.concatenate([seen[d] for d in members])
        assert (m.rows, m.windows, m.devices) == (len(rows), 3 * len(members), set(members))
        for j, f in enumerate(card.features):
            assert m.bins[j].tolist() == bin_counts(rows[:, j], f.edges), (cohort, f.name)
        assert m.predictions is not None
        assert m.predictions.tolist() == np.bincount(predict_sign(rows), minlength=2).tolist()


def test_reports_without_counts_are_skipped_and_counted(card: ModelCard) -> None:
    reports, _ = fleet_of(card, devices=2, windows=2, shift=0.0, seed=2)
    old = {k: v for k, v in reports[0].report.to_body().items() if k != "counts"}  # before counts
    bad = dict(reports[1].report.to_body(), counts={"rows": 200, "bins": {"temperature": [1, 2]}})
    more = [report_of("pi-old", old), report_of("pi-bad", bad)]
    rows = fleet_drift([*reports, *more], {}, {MODEL: card})
    (fleet,) = rows
    assert fleet["skipped"] == {NO_COUNTS: 1, UNFIT: 1}
    assert (fleet["windows"], fleet["devices"], fleet["rows"]) == (4, 2, 4 * WINDOW)


def test_a_version_without_a_card_says_so(card: ModelCard) -> None:
    reports, _ = fleet_of(card, devices=1, windows=2, shift=0.0, seed=3)
    (row,) = fleet_drift(reports, {}, {})
    assert row["status"] == "unknown" and row["p"] is None
    assert row["note"] == "no card for plant@1: it is not published here"
    assert row["skipped"] == {"no card": 2}
    (row,) = fleet_drift(reports, {}, {}, {MODEL: "no card for plant@1: tampered"})
    assert row["note"] == "no card for plant@1: tampered"


def test_the_strictest_levels_of_the_reports_apply(card: ModelCard) -> None:
    reports, _ = fleet_of(card, devices=2, windows=1, shift=0.0, seed=4)
    strict = dict(reports[1].report.to_body(), levels={"warn": 0.001, "alert": 1e-6})
    (row,) = fleet_drift([reports[0], report_of(reports[1].device, strict)], {}, {MODEL: card})
    assert row["levels"] == {"warn": 0.001, "alert": 1e-6}


# ---- what the fleet sees that no window does --------------------------------------------------
def test_a_small_shift_on_every_device_alerts_only_at_the_fleet(card: ModelCard) -> None:
    """0.05 standard deviations on every feature of 100 devices: no device's window alerts
    (a few warn, as a few would without drift), the merged fleet alerts, and so does each
    cohort, naming the features."""
    reports, seen = fleet_of(card, devices=100, windows=4, shift=0.05, seed=5)
    statuses = [r.report.status for r in reports]
    assert statuses.count("alert") == 0
    assert statuses.count("warn") <= 0.05 * len(statuses)
    rows = fleet_drift(reports, labels_of(list(seen)), {MODEL: card})
    assert [r["cohort"] for r in rows] == [FLEET, "group:greenhouse", "tag:outdoor"]
    fleet = rows[0]
    assert fleet["status"] == "alert" and fleet["p"] < 1e-10
    assert (fleet["devices"], fleet["windows"], fleet["rows"]) == (100, 400, 400 * WINDOW)
    assert sorted(fleet["moved"]) == sorted(FEATURES)
    assert all(r["status"] == "alert" for r in rows)


def test_drift_free_devices_give_an_ok_fleet(card: ModelCard) -> None:
    reports, seen = fleet_of(card, devices=100, windows=4, shift=0.0, seed=6)
    rows = fleet_drift(reports, labels_of(list(seen)), {MODEL: card})
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"]
    assert all(r["moved"] == [] and r["p"] > 0.01 for r in rows)


def test_the_fleet_p_value_is_calibrated_without_drift(card: ModelCard) -> None:
    """Fleets drawn from the reference warn at about the warn level (1%), no more."""
    rng = np.random.default_rng(8)
    ps = []
    for _ in range(1000):
        x = rng.normal(size=(20 * WINDOW, len(FEATURES)))
        body = DriftMonitor(card, len(x)).report(x, predict_sign(x))
        ps.append(fleet_drift([report_of("pi", body)], {}, {MODEL: card})[0]["p"])
    assert np.mean(np.asarray(ps) < 0.01) <= 0.02
    assert 0.05 <= np.mean(np.asarray(ps) < 0.1) <= 0.15


def test_accuracy_pools_the_reports_confidence_sums_and_refuses_nonsense(card: ModelCard) -> None:
    """Two devices' windows estimate 0.9 on 100 rows and 0.6 on 300: the pooled estimate is
    the rows-weighted 0.675, not the mean of the windows; a report whose parts do not add up
    (more right than rows, a negative, a bool, a reference above 1) does not decode."""

    def acc(right: object, rows: object, reference: object = 0.95) -> dict[str, Any]:
        return {"accuracy": {"sum": right, "rows": rows, "reference": reference}}

    def typed(*bodies: dict[str, Any]) -> list[DriftReport]:
        return [DriftReport.from_body(b, "drift") for b in bodies]

    pooled = pooled_accuracy(typed(acc(90.0, 100), acc(180.0, 300), {"accuracy": None}, {}))
    assert pooled == {"expected": 270 / 400, "reference": 0.95, "change": 270 / 400 - 0.95}
    assert pooled_accuracy(typed({})) is None
    for nonsense in (acc(5.0, 4), acc(-1.0, 10), acc(True, 10), acc(1.0, 10, 1.5), acc(1.0, 0)):
        with pytest.raises(MessageError, match=r"drift\.accuracy"):
            DriftReport.from_body(nonsense, "drift")
    reports, _ = fleet_of(card, 2, 2, 0.0, seed=3)
    reports = [
        report_of(r.device, r.report.to_body() | a)
        for r, a in zip(reports, (acc(90.0, 100), acc(45.0, 50), acc(10.0, 10), {}), strict=True)
    ]
    fleet = fleet_drift(reports, labels_of(["pi-000", "pi-001"]), {MODEL: card})[0]
    assert fleet["accuracy"]["expected"] == pytest.approx(145 / 160)


def test_minus_log10_is_the_heat_map_scale() -> None:
    assert minus_log10(1.0) == 0.0
    assert minus_log10(1e-5) == 5.0
    assert minus_log10(0.0) == 300.0
    assert minus_log10(None) is None


# ---- edgehub drift --fleet ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def hub(card: ModelCard, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub with plant@1 published and 40 devices' reports: 20 greenhouse devices shifted by
    0.1 standard deviations, 20 elsewhere unshifted, two from an old agent without counts."""
    home = tmp_path_factory.mktemp("hub")
    assert cli.main(["--home", str(home), "keys", "init"]) == 0
    path = home / "plant-1.zip"
    path.write_bytes(bundle_of(card.raw))
    assert cli.main(["--home", str(home), "model", "publish", str(path)]) == 0  # as people do
    store = Store(store_url(home))
    rng = np.random.default_rng(9)
    for d in range(40):
        device = f"pi-{d:02d}"
        bodies, _ = device_windows(card, rng, 5, 0.1 if d < 20 else 0.0)
        if d >= 38:
            bodies = [{k: v for k, v in b.items() if k != "counts"} for b in bodies]
        now = time.time()
        store.add_batch(
            "drift", Batch(device, tuple(Record(1, i, now, b) for i, b in enumerate(bodies)))
        )
        store.label_device(
            device, add=["north"] if d % 2 else [], group="greenhouse" if d < 20 else "field"
        )
    other = {"model": {"name": "plant", "version": 2}, "status": "ok", "psi": {}}
    store.add_batch("drift", Batch("pi-00", (Record(2, 0, time.time(), other),)))
    return home


def test_fleet_table_shows_each_cohort(hub: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--home", str(hub), "drift", "--fleet", "--since", "1h"]) == 0
    out = capsys.readouterr().out
    lines = {line.split("│")[2].strip(): line for line in out.splitlines() if "│ plant@1" in line}
    assert set(lines) == {FLEET, "group:greenhouse", "group:field", "tag:north"}
    assert "alert" in lines["group:greenhouse"] and "ok" in lines["group:field"]
    assert "alert" in lines[FLEET]
    assert "last 1h" in out
    # the old agent's windows, visibly skipped
    assert "plant@1: reference of 100000 rows; 10 windows skipped (no counts)" in out
    assert "plant@2: no card for plant@2: it is not published on this hub" in out


def test_fleet_json_and_filters(hub: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--home", str(hub), "drift", "--fleet", "--json", "--model", "plant@1"]
    assert cli.main([*argv, "--group", "field"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["since_s"] == 24 * 3600 and result["models"] == ["plant@1"]
    rows = {r["cohort"]: r for r in result["rows"]}
    assert set(rows) == {FLEET, "group:field"}
    field = rows["group:field"]
    assert (field["devices"], field["windows"], field["skipped"]) == (18, 90, {NO_COUNTS: 10})
    assert field["status"] == "ok"
    assert rows[FLEET]["status"] == "alert" and rows[FLEET]["devices"] == 38
    assert set(rows[FLEET]["p_values"]) == set(FEATURES)
    assert cli.main(["--home", str(hub), "drift", "--fleet", "--json", "--tag", "north"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["version"], r["cohort"]) for r in rows] == [(1, FLEET), (1, "tag:north"), (2, FLEET)]
    assert rows[1]["devices"] == 19  # the odd devices but the old agent's pi-39


def test_reports_older_than_since_are_left_out(hub: Path) -> None:
    store = Store(store_url(hub))
    cards = PublishedCards(TufRepository(hub))
    query = FleetQuery(3600.0, "plant@1")
    assert read_fleet_drift(store, cards, query)["rows"]
    assert read_fleet_drift(store, cards, query, now=time.time() + 3601)["rows"] == []


def test_the_per_device_table_shows_the_window_p(
    hub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--home", str(hub), "drift", "--model", "plant@1", "--device", "pi-00"]) == 0
    out = capsys.readouterr().out
    assert "min p" in out and "max psi" not in out and "accuracy" in out
    assert cli.main(["--home", str(hub), "drift", "--json", "--device", "pi-00"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert 0 <= row["min_p"] <= row["p"] <= 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "soon"], "--since: expected a duration like 30m, 1h or 24h, got 'soon'"),
        (["--since", "0"], "--since: expected a duration above 0, got '0'"),
        (["--since", "1d"], "--since: expected a duration like 30m, 1h or 24h, got '1d'"),
        (["--since=-1h"], "--since: expected a duration like 30m, 1h or 24h, got '-1h'"),
    ],
)
def test_a_bad_since_is_one_line(
    hub: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--home", str(hub), "drift", "--fleet", *argv])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert exc.value.code == 2
    assert len(errors) == 1 and message in errors[0], errors


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "iris"], "--model iris: no such model on this hub; known: plant@1"),
        (["--model", "plant@x"], "--model: model reference: expected NAME@VERSION like wine@2"),
        (["--model", "Plant!"], "--model: expected a model name of 1-64 lowercase letters"),
        (["--group", "attic"], "--group attic: no device is in that group; known: group:field"),
        (["--tag", "bad tag"], "--tag: expected"),
        (["--device", "pi-00"], "--device: --fleet merges every device; leave --device out"),
    ],
)
def test_bad_fleet_arguments_are_one_line(
    hub: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert cli.main(["--home", str(hub), "drift", "--fleet", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_fleet_options_without_fleet_are_refused(
    hub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--home", str(hub), "drift", "--since", "1h"]) == 1
    assert "--since, --group and --tag go with --fleet" in capsys.readouterr().err


# ---- the dashboard's heat map and /metrics -----------------------------------------------------
def test_the_heat_map_has_the_fleet_on_top_and_cells_by_level(hub: Path) -> None:
    cards = PublishedCards(TufRepository(hub))
    result = read_fleet_drift(Store(store_url(hub)), cards, FleetQuery(3600.0))
    plant1, plant2 = views.fleet_drift_map(result)["models"]
    assert plant1["model"] == "plant@1" and plant1["features"] == FEATURES
    cohorts = [r["cohort"] for r in plant1["rows"]]
    assert cohorts == [FLEET, "group:field", "group:greenhouse", "tag:north"]
    greenhouse, field = plant1["rows"][2], plant1["rows"][1]
    assert greenhouse["status"] == "alert" and greenhouse["score"] > 4
    assert {c["level"] for c in greenhouse["cells"].values()} <= {"warn", "alert"}
    assert {c["level"] for c in field["cells"].values()} == {"ok"}
    cell = greenhouse["cells"]["temperature"]
    assert cell["score"] == pytest.approx(-np.log10(cell["p"]), abs=0.01)
    assert plant2["rows"][0]["status"] == "unknown" and plant2["rows"][0]["cells"] == {}


def test_metrics_show_fleet_drift_per_model_version_and_cohort(hub: Path) -> None:
    registry = registry_for(Store(store_url(hub)), PublishedCards(TufRepository(hub)))
    samples = {
        (s.name, s.labels.get("cohort"), s.labels.get("version")): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
        if s.name.startswith("edgefleet_fleet_drift")
    }
    status = "edgefleet_fleet_drift_status"
    assert samples[(status, "group:greenhouse", "1")] == 2
    assert samples[(status, "group:field", "1")] == 0
    assert samples[(status, FLEET, "1")] == 2
    assert samples[("edgefleet_fleet_drift_p", FLEET, "1")] < 1e-4
    assert samples[("edgefleet_fleet_drift_rows", FLEET, "1")] == 38 * 5 * WINDOW
    assert not any(version == "2" for _, _, version in samples)  # no card: nothing to test
    bare = generate_latest(registry_for(Store(store_url(hub)))).decode()
    assert "edgefleet_fleet_drift_p{" not in bare  # a dashboard without the repository
