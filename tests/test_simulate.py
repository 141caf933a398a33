"""The fleet simulator: its pure parts, a real run against mosquitto and a hub, bad CLI input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.broker.local import RunningBroker
from cloud_hub.cli import app as hub_cli
from cloud_hub.harness.simulate import (
    MALFORMED_LINES,
    SIM_MODEL,
    SimOptions,
    Simulation,
    build_sim_model,
    parse_broker,
    rollout_of,
    rows_due,
    sensor_lines,
)
from cloud_hub.home_lock import own_home
from cloud_hub.rollout import engine as ro
from cloud_hub.rollout.operations import init_hub, publish_bundle, start_rollout
from cloud_hub.store.database import Store, typed
from cloud_hub.store.url import store_url
from edge_agent.errors import ConfigError
from edge_agent.framing.rows import card_bounds
from edge_agent.protocol.messages import ModelRef, Status
from edge_agent.protocol.records import DriftReport
from edge_agent.sources.line_parser import LineParser
from edge_agent.update.bundle import read_bundle
from tests.support.cli import hub_fails


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub with the simulator's small iris model published."""
    root = tmp_path_factory.mktemp("sim")
    init_hub(root / "home")
    build_sim_model(root / "home", root, SIM_MODEL)
    return root / "home"


def card_of(home: Path):  # type: ignore[no-untyped-def]
    data = next((home.parent).glob("sim-iris-1.zip")).read_bytes()
    return read_bundle(data, None, 10**7).card


# ---- pure parts -------------------------------------------------------------------------------
def test_sensor_lines_parse_like_a_sensor_and_drift_moves_half_the_features(home: Path) -> None:
    card = card_of(home)
    parser = LineParser(card.feature_names, "csv", card_bounds(card))
    rng = np.random.default_rng(1)
    plain = np.stack([parser.parse(line) for line in sensor_lines(card, 2000, rng)])
    means = np.array([f.mean for f in card.features])
    stds = np.array([f.std for f in card.features])
    assert np.all(np.abs(plain.mean(axis=0) - means) < 0.2 * stds)
    shifted = np.stack([parser.parse(line) for line in sensor_lines(card, 2000, rng, shift=3)])
    moved = (shifted.mean(axis=0) - plain.mean(axis=0)) / stds
    half = len(card.features) // 2
    assert np.all(moved[:half] > 2.5) and np.all(np.abs(moved[half:]) < 0.2)


def test_bad_share_sends_malformed_lines(home: Path) -> None:
    card = card_of(home)
    rng = np.random.default_rng(2)
    assert all(line in MALFORMED_LINES for line in sensor_lines(card, 50, rng, bad_share=1.0))
    mixed = sensor_lines(card, 1000, rng, bad_share=0.1)
    assert 50 < sum(line in MALFORMED_LINES for line in mixed) < 150
    assert sensor_lines(card, 0, rng) == []


def test_rows_due_keeps_the_rate() -> None:
    assert rows_due(2.0, 0.4, 0) == 0
    assert rows_due(2.0, 1.0, 0) == 2
    assert rows_due(2.0, 1.6, 2) == 1
    assert rows_due(0.0, 100.0, 0) == 0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"devices": 0}, "--devices: expected at least 1, got 0"),
        ({"devices": 2, "drifting": 3}, "--drift: expected 0 to 2 devices"),
        ({"devices": 1, "rate": -1.0}, "--rate: expected rows per second >= 0, got -1.0"),
        ({"devices": 1, "bad_lines": 1.5}, "--bad-lines: expected a share from 0 to 1"),
        ({"devices": 1, "window_s": 0.0}, "--window: expected seconds > 0, got 0.0"),
        ({"devices": 1, "shift": float("nan")}, "--shift: expected a finite number"),
        ({"devices": 1, "prefix": "no/slash"}, "--prefix"),
    ],
)
def test_options_refuse_bad_values(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        SimOptions(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["localhost", "mqtt://:1883", "mqtt://h:0", "mqtt://h:x", "h:1/x"])
def test_broker_url_is_checked(text: str) -> None:
    with pytest.raises(ConfigError, match="--broker: expected mqtt://HOST:PORT"):
        parse_broker(text)
    assert parse_broker("mqtt://10.0.0.2:1884") == ("10.0.0.2", 1884)
    assert parse_broker("broker.local:1883") == ("broker.local", 1883)


# ---- a real run -------------------------------------------------------------------------------
@pytest.mark.broker
def test_rollout_reaches_every_simulated_device_and_telemetry_arrives_once(
    home: Path, broker: RunningBroker, tmp_path: Path
) -> None:
    opts = SimOptions(devices=3, rate=50.0, drifting=1, window_s=0.2, prefix="t")
    sim = Simulation(home, tmp_path / "devices", opts, (broker.host, broker.port))
    try:
        assert sim.wait_connected(30)
        rid = start_rollout(home, SIM_MODEL, "1").id  # its own hub: the simulated fleet
        hub = sim.hub
        assert hub is not None

        def done() -> bool:
            return rollout_of(sim.store, rid).state != ro.RUNNING

        with hub.handled:
            assert hub.handled.wait_for(done, 60), sim.snapshot(rid)
        assert rollout_of(sim.store, rid).state == ro.COMPLETED
        for d in sim.fleet.devices:  # installed through the agent's verified path
            assert d.agent.store.record().current == SIM_MODEL
            events = [r.body["event"] for r in sim.store.records("events", d.id)]
            assert events[-5:] == ["offered", "downloading", "verified", "installed", "healthy"]

        def inferred() -> bool:
            return sim.fleet.stats()["inferences"] >= 3 * 20

        with hub.handled:
            assert hub.handled.wait_for(inferred, 30), sim.fleet.stats()
        result = sim.finish()
    finally:
        sim.close()
    assert result["exactly_once"], result
    assert result["accepted"] == result["stored"] > 3 * 5  # events plus telemetry windows
    assert sim.fleet.runtimes and len(sim.fleet.runtimes) == 1  # one session shared by all


@pytest.mark.broker
def test_a_simulated_fleet_serves_a_categorical_model_its_texts(
    broker: RunningBroker, tmp_path: Path
) -> None:
    from converters.pipeline import build_bundle
    from edge_agent.protocol.input_spec import row_spec
    from tests.support.categorical import CELLARS, TEXT, codes, mixed_pipeline, wine_table

    home = tmp_path / "home"
    init_hub(home)
    table, y = wine_table()
    model = ModelRef("sim-cellar", 1)
    bundle = tmp_path / "sim-cellar-1.zip"
    features = list(table.columns)
    build_bundle(
        mixed_pipeline().fit(table, y),
        codes(table),
        y,
        name=model.name,
        version=model.version,
        out=bundle,
        input_spec=row_spec(features, {TEXT: CELLARS}),
    )
    publish_bundle(home, bundle)
    opts = SimOptions(devices=2, rate=100.0, window_s=0.2, prefix="c")
    sim = Simulation(home, tmp_path / "devices", opts, (broker.host, broker.port))
    try:
        assert sim.wait_connected(30)
        rid = start_rollout(home, model, "1").id
        hub = sim.hub
        assert hub is not None
        with hub.handled:
            done = hub.handled.wait_for(lambda: rollout_of(sim.store, rid).state != ro.RUNNING, 60)
            assert done, sim.snapshot(rid)
        assert rollout_of(sim.store, rid).state == ro.COMPLETED

        def reports() -> list[DriftReport]:
            found = typed(sim.store.records("drift"), DriftReport)
            return [r for _, r in found if r.model == model]

        with hub.handled:  # a drift window (200 rows) from each device
            assert hub.handled.wait_for(lambda: len(reports()) >= 2, 60), sim.fleet.stats()
        stats = sim.fleet.stats()
    finally:
        sim.close()
    assert stats["rejected"] == 0
    # the sensors sent the card's texts: none of them unknown to the card
    for report in reports():
        assert report.categories[TEXT].unknown == 0
        assert set(report.categories[TEXT].counts) <= set(CELLARS)


# ---- the command line -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--devices", "0"], "--devices: expected at least 1, got 0"),
        (["--devices", "many"], "argument --devices: expected a whole number, got 'many'"),
        (["--devices", "2", "--rate", "fast"], "argument --rate: expected a number, got 'fast'"),
        (["--devices", "2", "--rate", "inf"], "argument --rate: expected a finite number"),
        (["--devices", "2", "--drift", "5"], "--drift: expected 0 to 2 devices"),
        (["--devices", "2", "--broker", "localhost"], "--broker: expected mqtt://HOST:PORT"),
        (["--devices", "2", "--duration", "0"], "--duration: expected seconds > 0, got 0.0"),
        (["--devices", "2", "--model", "nope@9"], "--model nope@9 is not published"),
        (["--devices", "2", "--model", "nope"], "nope"),
        (["--devices", "2", "--prefix", "a b"], "--prefix"),
        (["--devices", "9999"], "one process holds at most"),
    ],
)
def test_simulate_cli_refuses_bad_input(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    full = ["--home", str(home), "simulate", *argv]
    if needle.startswith("argument "):  # argparse's own check: usage, then one error line
        with pytest.raises(SystemExit) as exited:
            hub_cli.main(full)
        assert exited.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "Traceback" not in err
    else:
        err = hub_fails(capsys, *full)
    assert needle in err


def test_simulate_cli_needs_a_hub(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = hub_fails(capsys, "--home", str(tmp_path / "none"), "simulate", "--devices", "1")
    assert "no hub here; run `edgehub --home" in err


@pytest.mark.broker
def test_simulate_leaves_others_rollouts_and_no_devices_behind(
    tmp_path: Path, broker: RunningBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    init_hub(home)
    build_sim_model(home, tmp_path, SIM_MODEL)
    store = Store(store_url(home))
    store.set_status(Status("pi-1", True, 1, "0.1", "raspberry-pi-4"))  # a real device
    theirs = start_rollout(home, SIM_MODEL, "1").id  # someone's rollout of the same model
    argv = ["--home", str(home), "simulate", "--devices", "2", "--duration", "6"]
    url = f"mqtt://{broker.host}:{broker.port}"
    code = hub_cli.main([*argv, "--broker", url, "--window", "0.5", "--json"])
    out, err = capsys.readouterr()
    snap = json.loads(out)
    assert code == 0, snap
    # not on a terminal: plain progress lines, on stderr beside --json
    progress = [line for line in err.splitlines() if line.startswith("simulate: ")]
    assert progress and "devices connected" in progress[0], err
    assert rollout_of(store, theirs).state == ro.RUNNING  # not superseded by the simulation
    assert rollout_of(store, snap["rollout"]["id"]).state == ro.COMPLETED
    assert [d["id"] for d in store.devices()] == ["pi-1"]  # the simulated ones are gone
    assert store.count("telemetry") > 0  # their records stay


def test_simulate_refuses_a_home_a_hub_serves(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = store_ids(home)
    with own_home(home, "edgehub serve"):
        err = hub_fails(capsys, "--home", str(home), "simulate", "--devices", "1")
        assert err == (
            f"edgehub: error: hub home {home} is in use by edgehub serve (pid {os.getpid()}); "
            "stop it or use another --home"
        )
        assert store_ids(home) == before  # nothing was started, nothing registered


def store_ids(home: Path) -> list[str]:
    return [d["id"] for d in Store(store_url(home)).devices()]


def test_sensor_lines_of_a_categorical_card_carry_its_texts_in_the_reference_shares() -> None:
    from converters.card import reference_card
    from edge_agent.drift import DriftMonitor
    from edge_agent.framing import framer_for
    from edge_agent.protocol.card import parse_card

    rng = np.random.default_rng(3)
    regions = ["north, upper", 'say "hi"', "east", "west"]
    shares = np.array([0.5, 0.3, 0.15, 0.05])
    rows = 2000
    ref = np.c_[rng.choice(4, rows, p=shares), rng.normal(size=(rows, 2))]
    card = parse_card(reference_card(ref, ["region", "u", "v"], categories={"region": regions}))
    framer = framer_for(card)

    def framed(lines: list[bytes]) -> np.ndarray:
        rejected: list[object] = []
        out = framer.frame([("csv", line) for line in lines], rejected.append)
        assert rejected == [] and out is not None
        return np.asarray(out.x)

    plain = sensor_lines(card, 4000, rng)
    assert any(line.startswith(b'"north, upper",') for line in plain)  # texts, quoted
    codes = framed(plain)[:, 0]
    assert set(codes.tolist()) <= {0.0, 1.0, 2.0, 3.0}  # never the unknown code
    np.testing.assert_allclose(
        np.bincount(codes.astype(int), minlength=4) / 4000, shares, atol=0.03
    )
    monitor = DriftMonitor(card, 200)
    statuses = [monitor.add(framed(plain[i : i + 200])) for i in range(0, 4000, 200)]
    assert sum(s is not None and s["status"] != "ok" for s in statuses) <= 1
    # a drifting device moves the first half of the features: here the region, to its rarest
    moved = framed(sensor_lines(card, 1000, rng, shift=3))[:, 0]
    assert np.mean(moved == 3) > 0.7
    report = DriftMonitor(card, 1000).add(framed(sensor_lines(card, 1000, rng, shift=3)))
    assert report is not None and report["status"] == "alert" and "region" in report["moved"]
