"""A mixed categorical pipeline on the real stack: wine's numbers and a text column (the cellar),
a ColumnTransformer (StandardScaler, OneHotEncoder) and a LogisticRegression trained on a
DataFrame, converted from a CSV as `edgehub model convert` reads it, signed and rolled out by a
real hub to a whole agent over a private mosquitto. The agent reads sensor lines that carry the
cellar as text, CSV and JSON; what it predicts is compared, row by row, with scikit-learn's own
predictions on the same rows as a DataFrame of texts, computed here. Its drift reports reach the
hub: calm while the cellars come in their usual shares, alerting when texts the card does not
list arrive, and naming the cellars by their texts. The raw rows it samples come back in the
hub's data set with their texts."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cloud_hub.broker.local import RunningBroker
from converters.inputs import load_table
from converters.pipeline import build_bundle
from edge_agent.protocol.input_spec import row_spec
from edge_agent.protocol.messages import ModelRef
from tests.support.categorical import CELLARS, NUMBERS, TEXT, csv_lines, mixed_pipeline, wine_table
from tests.support.device_rig import Deployed, deployed

pytestmark = pytest.mark.broker
DEVICE = "pi-cellar"
MODEL = ModelRef("wine-cellar", 1)
DRIFT_WINDOW = 20
CALM_WINDOWS = 2


@dataclass
class Rig(Deployed):
    pipeline: Any
    fed: pd.DataFrame  # rows neither trained on nor in the card's reference


@pytest.fixture
def rig(broker: RunningBroker, tmp_path: Path) -> Iterator[Rig]:
    table, y = wine_table()
    order = np.random.default_rng(0).permutation(len(table))
    train, reference, fed = np.array_split(order, 3)
    pipeline = mixed_pipeline().fit(table.iloc[train], y[train])
    # the reference rows as the engineer hands them over: a CSV with the cellar as text
    sample = tmp_path / "reference.csv"
    table.iloc[reference].assign(label=y[reference]).to_csv(sample, index=False)
    x, labels, names, categories, _ = load_table(sample, "label")
    assert names is not None and categories == {TEXT: CELLARS}
    bundle = tmp_path / "wine-cellar-1.zip"
    build_bundle(
        pipeline,
        x,
        labels,
        name=MODEL.name,
        version=MODEL.version,
        out=bundle,
        feature_names=names,
        input_spec=row_spec(names, categories),
    )
    more = (
        "[telemetry]\nstatus_interval_s = 0.2\ninterval_s = 0.3\nraw_sample_rate = 1.0\n"
        # every row tested (no rate floor): the reports are checked against the rows fed
        f"[drift]\nwindow = {DRIFT_WINDOW}\nmin_interval_s = 0\n"
        f'[results]\nenabled = true\nhost = "{broker.host}"\nport = {broker.port}\n'
    )
    with deployed(broker, tmp_path, DEVICE, bundle, more) as rig:
        yield rig.extended(Rig, pipeline=pipeline, fed=table.iloc[fed])


def json_line(row: pd.Series) -> bytes:
    return json.dumps({**{n: float(row[n]) for n in NUMBERS}, TEXT: str(row[TEXT])}).encode()


def test_a_device_serves_a_pipeline_on_text_columns_and_watches_its_categories(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    calm = rig.fed.iloc[: CALM_WINDOWS * DRIFT_WINDOW]
    strange = rig.fed.iloc[:DRIFT_WINDOW].assign(**{TEXT: "cave"})  # a cellar the card lacks
    rows = pd.concat([calm, strange])
    lines = csv_lines(calm) + [json_line(row) for _, row in strange.iterrows()]
    for line, fmt in zip(lines, ["csv"] * len(calm) + ["json"] * len(strange), strict=True):
        rig.agent.lines.put((fmt, line))
    expected = rig.pipeline.predict(rows)  # scikit-learn on the texts, computed here

    # 1. every line served, predicted as scikit-learn predicts the same rows
    results = rig.results.wait_for(len(rows))
    assert len(results) == len(rows)
    assert rig.agent.pipeline.stats.rejected == {}
    assert [r["prediction"] for r in results] == expected.tolist()

    # 2. drift: calm windows stay ok, the window of unknown texts alerts, by text
    windows = CALM_WINDOWS + 1
    rig.wait("every drift report at the hub", lambda: len(rig.drift()) >= windows)
    reports = rig.drift()
    assert [r.status for r in reports[:CALM_WINDOWS]] == ["ok"] * CALM_WINDOWS
    assert reports[-1].status == "alert" and TEXT in (reports[-1].moved or ())
    for i, report in enumerate(reports[:CALM_WINDOWS]):
        part = calm.iloc[i * DRIFT_WINDOW : (i + 1) * DRIFT_WINDOW]
        assert report.categories[TEXT].counts == part[TEXT].value_counts().to_dict()
        assert report.categories[TEXT].unknown == 0
    assert reports[-1].categories[TEXT].unknown == DRIFT_WINDOW
    assert reports[-1].out_of_range[TEXT] == 1.0
    (row,) = json.loads(rig.cli(capsys, "drift", "--json"))
    assert (row["model"], row["device"]) == (MODEL.name, DEVICE)
    # the texts the card does not list, counted on the device, shown by the hub per feature
    assert row["unknown"] == {TEXT: len(strange)}
    table = rig.cli(capsys, "drift")
    assert "unknown texts" in table and f"{TEXT} {len(strange)}" in table

    # 3. the rows it sampled come back in the hub's data set with their texts
    rig.wait(
        "every sampled row at the hub",
        lambda: len(list(rig.hub.store.records("telemetry", DEVICE))) >= len(rows),
    )
    folder = rig.home.parent / "data"
    exported = json.loads(
        rig.cli(capsys, "data", "export", str(MODEL), "--out", str(folder), "--json")
    )
    assert exported["categories"] == {TEXT: CELLARS}
    with (folder / "samples.csv").open(newline="") as fh:
        sampled = list(csv.DictReader(fh))
    assert len(sampled) == len(rows)
    # a known cellar by its text; a text the card does not list is an empty cell
    want = sorted([*calm[TEXT].tolist(), *[""] * len(strange)])
    assert sorted(s[TEXT] for s in sampled) == want
