"""`edgehub experiment`: each wrong argument gets one line naming it, exit 1; what works prints
tables or JSON. No broker: the commands only read and write the hub's store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloud_hub.cli import app as hub_cli
from cloud_hub.rollout import engine as ro
from cloud_hub.store.database import Store
from cloud_hub.store.url import store_url
from edge_agent.protocol.messages import ModelRef, Status
from tests.support.cli import bundle, hub_fails

START = ("experiment", "start", "wine@2", "--against", "wine@1", "--target", "tag:lab")
P95 = ("experiment", "start", "wine@2", "--against", "wine@1", "--metric", "p95")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub with wine@1 and wine@2 published and four devices tagged lab serving wine@1."""
    folder = tmp_path_factory.mktemp("hub")
    home = folder / "home"
    assert hub_cli.main(["--home", str(home), "keys", "init"]) == 0
    for version in (1, 2):
        path = folder / f"wine-{version}.zip"
        path.write_bytes(bundle("wine", version))
        assert hub_cli.main(["--home", str(home), "model", "publish", str(path)]) == 0
    store = Store(store_url(home))
    for device in ("lab-1", "lab-2", "lab-3", "lab-4", "field-1"):
        store.set_status(Status(device, True, 1, "0.1", "raspberry-pi-4", ModelRef("wine", 1)))
        if device.startswith("lab"):
            store.label_device(device, add=["lab"])
    return home


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["experiment", "start", "wine", "--against", "wine@1", "--metric", "p95"],
            "the candidate: model reference: expected NAME@VERSION like wine@2, got 'wine'",
        ),
        (
            ["experiment", "start", "wine@2", "--metric", "p95"],
            "--against: expected a published model, NAME@VERSION like tumor@1; none given",
        ),
        (
            ["experiment", "start", "wine@2", "--against", "one", "--metric", "p95"],
            "--against: model reference: expected NAME@VERSION like wine@2, got 'one'",
        ),
        ([*START], "--metric: expected one of accuracy, agreement, error-rate, p95; none given"),
        (
            [*START, "--metric", "f1"],
            "--metric: expected one of accuracy, agreement, error-rate, p95, got 'f1'",
        ),
        (
            [*START, "--metric", "p95", "--split", "50"],
            "--split: expected the candidate's share like 50% (above 0% and below 100%), got '50'",
        ),
        (
            [*START, "--metric", "p95", "--split", "100%"],
            "--split: expected the candidate's share like 50% (above 0% and below 100%), "
            "got '100%'",
        ),
        (
            [*START, "--metric", "accuracy", "--effect", "x"],
            "--effect: expected a difference in accuracy (0.05 = 5 points), above 0, got 'x'",
        ),
        (
            [*START, "--metric", "accuracy", "--effect", "1.5"],
            "--effect: expected a difference of rates below 1, got 1.5",
        ),
        (
            [*START, "--metric", "p95", "--effect", "-1"],
            "--effect: expected a standardized difference in p95 (Cohen's d: 0.5 = half the "
            "windows' standard deviation), above 0, got '-1'",
        ),
        (
            [*START, "--metric", "p95", "--alpha", "0.5"],
            "--alpha: expected a number above 0 and below 0.5 like 0.05, got '0.5'",
        ),
        (
            [*START, "--metric", "p95", "--power", "1"],
            "--power: expected a number above 0.5 and below 1 like 0.8, got '1'",
        ),
        (
            [*START, "--metric", "p95", "--deadline", "1d"],
            "--deadline: expected a duration like 30s, 5m or 1h, got '1d'",
        ),
        (
            [*START, "--metric", "p95", "--deadline", "0"],
            "--deadline: expected a duration above 0 like 24h, got '0'",
        ),
        (
            ["experiment", "start", "wine@1", "--against", "wine@1", "--metric", "p95"],
            "--against: expected another model than wine@1, got wine@1",
        ),
        (
            [*P95, "--target", "everyone"],
            "--target: expected all, group:NAME or tag:NAME[,NAME...] (or devices:ID[,ID...]), "
            "got 'everyone'",
        ),
        (
            ["experiment", "start", "wine@3", "--against", "wine@1", "--metric", "p95"],
            "wine@3 is not published; run `edgehub model publish BUNDLE` first",
        ),
        (
            [*P95, "--target", "tag:gpu"],
            "--target tag:gpu: expected at least 2 devices (one per cohort), got 0; see "
            "`edgehub devices list`",
        ),
        (
            [*START, "--metric", "agreement"],
            "--metric agreement: compares each model with the one the devices serve; lab-1 "
            "serves wine@1, one of the two compared (use another metric)",
        ),
        (
            ["experiment", "show", "e-nope"],
            "no experiment with id 'e-nope'; `edgehub experiment list` shows them",
        ),
        (
            ["experiment", "stop", "e-nope"],
            "no experiment with id 'e-nope'; `edgehub experiment list` shows them",
        ),
        (
            ["experiment", "promote", "e-nope"],
            "no experiment with id 'e-nope'; `edgehub experiment list` shows them",
        ),
    ],
)
def test_each_wrong_argument_gets_one_line(
    hub: Path, capsys: pytest.CaptureFixture[str], argv: list[str], line: str
) -> None:
    assert hub_fails(capsys, "--home", str(hub), *argv) == f"edgehub: error: {line}"


def test_without_a_hub(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["experiment", "list"], [*START, "--metric", "p95"]):
        err = hub_fails(capsys, "--home", str(tmp_path / "none"), *argv)
        assert "no hub here" in err


def test_start_show_list_stop_and_promote(hub: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = ["--home", str(hub)]
    assert hub_cli.main([*home, *START, "--metric", "error-rate", "--split", "50%"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("experiment e-")
    assert "on error-rate started: wine@2 on " in out
    assert "it decides at 1570 rows per cohort, or at the deadline (24h)" in out
    experiment_id = out.split()[1]

    assert hub_cli.main([*home, "experiment", "show", experiment_id, "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert (view["state"], view["models"], view["needed"]) == ("running", "wine@2 vs wine@1", 1570)
    cohorts = {c["cohort"]: c for c in view["cohorts"]}
    assert sorted(cohorts["A"]["devices"] + cohorts["B"]["devices"]) == [
        "lab-1",
        "lab-2",
        "lab-3",
        "lab-4",
    ]
    assert cohorts["A"]["devices"] and cohorts["B"]["devices"]
    store = Store(store_url(hub))
    for c in cohorts.values():  # each cohort's model goes out as a rollout aimed at its devices
        row = store.rollout(c["rollout"])
        assert row is not None
        r = ro.Rollout.from_json(row["body"])
        assert (str(r.model), r.plan.select) == (c["model"], f"devices:{','.join(c['devices'])}")

    assert hub_cli.main([*home, "experiment", "show", experiment_id]) == 0
    table = capsys.readouterr().out
    for text in (
        "wine@2 vs wine@1",
        "error-rate (lower is better)",
        "1570 per cohort",
        "0 of 1570",
    ):
        assert text in table
    assert hub_cli.main([*home, "experiment", "list"]) == 0
    assert experiment_id in capsys.readouterr().out

    err = hub_fails(capsys, *home, "experiment", "promote", experiment_id)
    assert err == (
        f"edgehub: error: experiment {experiment_id} is still running (A 0, B 0 of 1570 "
        "samples); nothing to promote yet"
    )
    assert hub_cli.main([*home, "experiment", "stop", experiment_id]) == 0
    assert "stopped" in capsys.readouterr().out
    for c in cohorts.values():  # its rollouts stop sending
        row = store.rollout(c["rollout"])
        assert row is not None and row["state"] == ro.ABORTED
    err = hub_fails(capsys, *home, "experiment", "stop", experiment_id)
    assert err == (
        f"edgehub: error: experiment {experiment_id} is stopped; only a running one can be stopped"
    )
    err = hub_fails(capsys, *home, "experiment", "promote", experiment_id)
    assert (
        err
        == f"edgehub: error: experiment {experiment_id} has no winner to promote (stopped by hand)"
    )
