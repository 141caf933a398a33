"""An anomaly model on the real stack: an IsolationForest trained on benign tumours
(breast_cancer), converted, signed and rolled out by a real hub to a whole agent over a private
mosquitto. The agent serves rows we feed it, half of them malignant; what it flags is counted
three ways, each against scikit-learn's own verdict on the same rows, computed here: the
results it publishes for local actuators (an independent subscriber counts them), the
anomalies its telemetry windows report to the hub, and its drift reports, which the hub's
`edgehub drift` shows next to the card's reference rate. The truth (malignant or not) comes back
by prediction id through `edgehub labels import`, and `edgehub metrics` gives the precision,
recall and F1 of the device's flags as scikit-learn computes them."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import IsolationForest
from sklearn.metrics import f1_score, precision_score, recall_score

from cloud_hub.broker.local import RunningBroker
from converters.pipeline import build_bundle
from edge_agent.protocol.messages import ModelRef
from tests.support.device_rig import Deployed, deployed
from tests.support.models import csv_line

pytestmark = pytest.mark.broker
DEVICE = "pi-anomaly"
MODEL = ModelRef("tumour-watch", 1)
DRIFT_WINDOW = 40
FED = 4 * DRIFT_WINDOW  # rows fed: four whole drift windows


@dataclass
class Rig(Deployed):
    detector: IsolationForest
    benign: np.ndarray  # rows the model did not see, and the card's sample did not hold
    malignant: np.ndarray


@pytest.fixture
def rig(broker: RunningBroker, tmp_path: Path) -> Iterator[Rig]:
    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    benign, malignant = x[y == 1], x[y == 0]
    detector = IsolationForest(n_estimators=50, contamination=0.05, random_state=0)
    detector.fit(benign[:120])
    bundle = tmp_path / "tumour-watch-1.zip"  # the reference: benign rows it was not trained on
    build_bundle(detector, benign[120:270], None, name=MODEL.name, version=1, out=bundle)
    more = (
        "[telemetry]\nstatus_interval_s = 0.2\ninterval_s = 0.3\n"
        # every row tested (no rate floor): the reports are checked against the rows fed
        f"[drift]\nwindow = {DRIFT_WINDOW}\nmin_interval_s = 0\n"
        f'[results]\nenabled = true\nhost = "{broker.host}"\nport = {broker.port}\n'
    )
    with deployed(broker, tmp_path, DEVICE, bundle, more) as rig:
        yield rig.extended(Rig, detector=detector, benign=benign[270:], malignant=malignant)


def test_an_isolation_forest_flags_the_outliers_fed_to_a_device(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    half = FED // 2
    rows = np.concatenate([rig.benign[:half], rig.malignant[:half]])
    # calm first, then the malignant rows: the last two drift windows see them
    for row in rows:
        rig.agent.lines.put(("csv", csv_line(row)))
    expected = rig.detector.predict(rows) == -1  # scikit-learn's verdict on the same rows
    assert 0 < expected[:half].sum() < expected[half:].sum()
    assert rig.agent.pipeline.active is not None
    card = rig.agent.pipeline.active.card
    # some rows lie more than a reference range beyond the card's: scored all the same
    beyond = [f.max + (f.max - f.min) for f in card.features]
    assert np.any(rows > np.asarray(beyond))

    # 1. the results for local actuators: one per row, each flagged as scikit-learn flags it
    results = rig.results.wait_for(FED)
    assert len(results) == FED
    assert all(r["model"] == str(MODEL) and type(r["prediction"]) is float for r in results)
    assert rig.agent.pipeline.stats.rejected == {}
    assert [r["anomaly"] for r in results] == expected.tolist()
    # the score and the threshold of the card say the same
    threshold = -rig.detector.offset_
    assert [r["prediction"] > threshold for r in results] == expected.tolist()

    # 2. the telemetry windows at the hub count them
    rig.wait("every row's window at the hub", lambda: sum(w.count for w in rig.windows()) >= FED)
    windows = rig.windows()
    assert sum(w.count for w in windows) == FED
    assert sum(w.anomalies or 0 for w in windows) == int(expected.sum())

    # 3. the drift reports: the anomaly rate of each window, and the rise when malignant rows come
    rig.wait("four drift reports at the hub", lambda: len(rig.drift()) >= FED // DRIFT_WINDOW)
    reports = rig.drift()
    rates = [r.anomaly for r in reports]
    assert all(rate is not None for rate in rates)
    per_window = expected.reshape(-1, DRIFT_WINDOW).sum(axis=1).tolist()
    assert [rate.anomalies for rate in rates if rate is not None] == per_window
    assert [r.status for r in reports[:2]] == ["ok", "ok"]
    assert all(r.status == "alert" for r in reports[2:])
    assert all(rate.p < 1e-4 for rate in rates[2:] if rate is not None)

    # the hub's drift table shows the anomaly rate next to the card's
    (row,) = json.loads(rig.cli(capsys, "drift", "--json"))
    assert (row["model"], row["device"]) == (MODEL.name, DEVICE)
    pooled = row["anomalies"]
    assert (pooled["anomalies"], pooled["rows"]) == (int(expected.sum()), FED)
    table = rig.cli(capsys, "drift")
    assert "anomalies" in table and f"{pooled['rate']:.1%} of {FED}" in table
    models = json.loads(rig.cli(capsys, "model", "list", "--json"))
    assert [(m["model"], m["task"]) for m in models] == [(MODEL.name, "anomaly")]

    # 4. the truth comes back by prediction id: the quality of the flags
    truth = np.r_[np.zeros(half, dtype=int), np.ones(half, dtype=int)]  # 1: malignant
    labels = rig.home.parent / "labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prediction", "label"])
        writer.writerows(
            (r["id"], "anomaly" if t else "normal") for r, t in zip(results, truth, strict=True)
        )
    rig.cli(capsys, "labels", "import", str(labels))
    (quality,) = json.loads(rig.cli(capsys, "metrics", "--model", str(MODEL), "--json"))["rows"]
    assert (quality["task"], quality["labels"], quality["used"]) == ("anomaly", FED, FED)
    assert quality["precision"]["value"] == pytest.approx(precision_score(truth, expected))
    assert quality["recall"]["value"] == pytest.approx(recall_score(truth, expected))
    assert quality["f1"]["value"] == pytest.approx(f1_score(truth, expected))
