"""`edgehub drift`: reports stored per model version and device, the features that moved, the
captured inputs as CSV, retention, and one clear line for every wrong argument."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from cloud_hub.cli import app as cli
from cloud_hub.store.database import Store, drift_summary
from cloud_hub.store.url import store_url
from edge_agent.protocol.messages import Batch, Record


def _report(status: str, moved: list[str], capture: bool = False) -> dict[str, object]:
    body: dict[str, object] = {
        "model": {"name": "wine", "version": 2},
        "window": 200,
        "psi": {"hue": 0.4, "ash": 0.01},
        "max_psi": 0.4 if moved else 0.01,
        "worst_feature": "hue",
        "status": status,
        "moved": moved,
    }
    if capture:
        body["capture"] = {"features": ["hue", "ash"], "rows": [[1.5, 2.0], [1.7, 2.1]]}
    return body


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "hub"
    home.mkdir()
    store = Store(store_url(home))
    bodies = [_report("ok", []), _report("alert", ["hue"], capture=True), _report("warn", ["hue"])]
    records = tuple(Record(1, i, time.time(), b) for i, b in enumerate(bodies))
    store.add_batch("drift", Batch("pi-01", records))
    store.add_batch("drift", Batch("pi-02", (Record(1, 0, time.time(), _report("ok", [])),)))
    return home


def test_drift_json_groups_per_model_version_and_device(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--home", str(home), "drift", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["model"], r["version"], r["device"]) for r in rows] == [
        ("wine", 2, "pi-01"),
        ("wine", 2, "pi-02"),
    ]
    first = rows[0]
    assert (first["windows"], first["warn"], first["alert"]) == (3, 1, 1)
    assert first["moved"] == {"hue": 2}
    assert first["captures"] == 1
    assert cli.main(["--home", str(home), "drift", "--json", "--device", "pi-02"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert cli.main(["--home", str(home), "drift", "--json", "--model", "iris"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_drift_table_names_the_features_that_moved(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--home", str(home), "drift", "--model", "wine@2"]) == 0
    out = capsys.readouterr().out
    assert "hue (2)" in out and "pi-01" in out and "wine@2" in out


def test_drift_shows_per_feature_the_rows_of_texts_the_card_does_not_list(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(store_url(home))
    windows = []
    for unknown in (0, 3, 4):
        body = _report("ok", [])
        body["model"] = {"name": "shop", "version": 1}
        body["categories"] = {
            "region": {"counts": {"north": 10, "south": 7}, "unknown": unknown},
            "kind": {"counts": {"a": 20}, "unknown": 1},
        }
        windows.append(Record(2, len(windows), time.time(), body))
    store.add_batch("drift", Batch("pi-03", tuple(windows)))
    assert cli.main(["--home", str(home), "drift", "--json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["shop"]["unknown"] == {"region": 7, "kind": 3}
    assert rows["wine"]["unknown"] == {}  # no categorical feature: nothing to count
    assert cli.main(["--home", str(home), "drift", "--model", "shop"]) == 0
    out = capsys.readouterr().out
    assert "unknown texts" in out and "region 7, kind 3" in out
    assert cli.main(["--home", str(home), "drift", "--model", "wine"]) == 0
    assert "unknown texts" not in capsys.readouterr().out


def test_captures_export_as_csv(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "captures.csv"
    assert cli.main(["--home", str(home), "drift", "captures", "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["device"], r["hue"], r["ash"]) for r in rows] == [
        ("pi-01", "1.5", "2.0"),
        ("pi-01", "1.7", "2.1"),
    ]


def test_captures_of_a_categorical_model_are_written_with_their_texts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    from cloud_hub.rollout.operations import init_hub, publish_bundle
    from converters.bundle import write_bundle
    from converters.card import reference_card

    home = tmp_path / "hub"
    init_hub(home)
    regions = ["north, upper", "south"]
    x = np.c_[np.arange(20.0) % 2, np.arange(20.0)]
    card = reference_card(x, ["region", "temp"], name="shop", categories={"region": regions})
    bundle = tmp_path / "shop-1.zip"
    write_bundle(bundle, card, b"not a model: this test reads the card only")
    publish_bundle(home, bundle)
    body = _report("alert", ["region"])
    body["model"] = {"name": "shop", "version": 1}
    # the device sends codes: 0 and 1 are the regions, 2 a text the card does not list
    body["capture"] = {"features": ["region", "temp"], "rows": [[1, 3.5], [0, 4.0], [2, 5.0]]}
    unpublished = _report("alert", ["hue"], capture=True)  # wine@2 has no card on this hub
    records = (Record(1, 0, time.time(), body), Record(1, 1, time.time(), unpublished))
    Store(store_url(home)).add_batch("drift", Batch("pi-04", records))
    out = tmp_path / "captures.csv"
    assert cli.main(["--home", str(home), "drift", "captures", "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open(newline="")))
    shop = [(r["region"], r["temp"]) for r in rows if r["model"] == "shop"]
    assert shop == [("south", "3.5"), ("north, upper", "4.0"), ("", "5.0")]
    wine = [(r["hue"], r["ash"]) for r in rows if r["model"] == "wine"]
    assert wine == [("1.5", "2.0"), ("1.7", "2.1")]  # numbers as sent
    printed = capsys.readouterr().out
    assert "5 captured rows written" in printed
    assert "no card for wine@2" in printed and "written as the devices sent them" in printed


def test_retention_prunes_old_records(home: Path) -> None:
    store = Store(store_url(home))
    assert store.prune(time.time() - 3600) == 0
    assert store.prune(time.time() + 1) == 4
    assert drift_summary(store) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["drift", "captures"], "the following arguments are required: --csv"),
        (["serve", "--retention-days", "0"], "expected a positive number of days"),
        (["serve", "--retention-days", "soon"], "expected a positive number of days"),
        (["serve", "--device-rate", "-3"], "--device-rate: expected a number of 0 or more"),
        (["serve", "--device-rate", "nan"], "--device-rate: expected a number of 0 or more"),
        (["serve", "--device-quota", "1.5"], "--device-quota: expected a whole number of 0"),
        (["serve", "--device-quota", "lots"], "got 'lots'"),
        (["serve", "--leader-timeout", "4"], "--leader-timeout: expected a number of seconds"),
        (["serve", "--leader-timeout", "inf"], "expected a number of seconds, got 'inf'"),
        (["serve", "--leader-timeout", "soon"], "of 5 or more, got 'soon'"),
    ],
)
def test_bad_arguments_are_one_line(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--home", str(home), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_hub_and_unwritable_csv_are_one_line(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--home", str(tmp_path / "nowhere"), "drift"]) == 1
    assert "expected a hub folder" in capsys.readouterr().err
    bad = tmp_path / "no-such-dir" / "x.csv"
    assert cli.main(["--home", str(home), "drift", "captures", "--csv", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "expected a file the hub can write" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("Bad Name", "edgehub: error: --model: expected a model name of 1-64 lowercase"),
        ("wine@two", "edgehub: error: --model: model reference: expected NAME@VERSION"),
    ],
)
def test_a_wrong_model_filter_says_so_once(
    home: Path, capsys: pytest.CaptureFixture[str], model: str, message: str
) -> None:
    for command in (["drift"], ["drift", "--fleet"], ["metrics"]):
        assert cli.main(["--home", str(home), *command, "--model", model]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(message) and err.count("--model") == 1, (command, err)
        assert len(err.splitlines()) == 1
