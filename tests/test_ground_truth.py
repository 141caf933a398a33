"""Ground truth at the hub (cloud_hub.quality): labels joined to predictions by id in the store,
every case counted by reason; then the whole way on the real stack (a real agent infers iris,
labels come back on the device topic, through POST /api/labels and `edgehub labels import`),
where the hub's accuracy is the one computed here from the model's own predictions."""

from __future__ import annotations

import csv
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from cloud_hub.cli import app as hub_cli
from cloud_hub.quality.labels import FROM_API, FROM_CSV, FROM_DEVICE, JoinedLabel
from cloud_hub.store.database import Store
from cloud_hub.store.url import store_url
from edge_agent.config import load_config
from edge_agent.errors import ConfigError, MessageError
from edge_agent.inference.runtime import load_runtime
from edge_agent.protocol.ids import prediction_id
from edge_agent.protocol.messages import Batch, ModelRef, Record
from edge_agent.protocol.records import MAX_LABELS, Labels, RawSample, TelemetryWindow, WindowRows
from edge_agent.update.bundle import read_bundle
from edge_agent.uplink.buffer import Buffer, Cap
from edge_agent.uplink.labels import local_labels
from tests.support.dashboard_fleet import TOKEN, http
from tests.support.fleet import _publish
from tests.support.labelled_fleet import (  # noqa: F401  (labelled_fleet is a fixture)
    DEVICE,
    IRIS_X,
    IRIS_Y,
    LOCAL_LABELS,
    LabelledFleet,
    feed,
    labelled_fleet,
)

pytestmark = pytest.mark.usefixtures("each_store")  # on SQLite and on PostgreSQL

MODEL = ModelRef("iris", 1)
NOW = 1_000_000.0


# ---- the store, record by record ------------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(store_url(tmp_path))
    s.register(DEVICE)
    return s


def window(boot: int, first: int, predictions: list[Any] | None, count: int = 0) -> dict[str, Any]:
    n = len(predictions) if predictions is not None else count
    rows = WindowRows(boot, first, tuple(predictions) if predictions is not None else None)
    return TelemetryWindow(window_s=1.0, model=MODEL, count=n, rows=rows).to_body()


class Records:
    """A device's records as its agent numbers them (boot 1), stored through the ingest."""

    def __init__(self, store: Store, device: str = DEVICE) -> None:
        self.store, self.device, self.seq = store, device, 0

    def send(self, kind: str, *bodies: dict[str, Any], ts: float = NOW) -> int:
        records = []
        for body in bodies:
            self.seq += 1
            records.append(Record(1, self.seq, ts, body))
        return self.store.add_batch(kind, Batch(self.device, tuple(records)))


def ids(*rows: int, device: str = DEVICE, boot: int = 1) -> list[str]:
    return [prediction_id(device, boot, r) for r in rows]


def test_a_label_joins_the_prediction_its_window_carries(store: Store) -> None:
    Records(store).send("telemetry", window(1, 0, [0, 1, 2]), window(1, 3, [2, 2]))
    got = store.add_labels(list(zip(ids(1, 4), [1, 0], strict=True)), FROM_API, NOW + 5)
    assert got == Counter(joined=2)
    assert store.joined_labels() == [
        JoinedLabel(DEVICE, 1, 1, MODEL, 1, 1, NOW + 5, NOW),
        JoinedLabel(DEVICE, 1, 4, MODEL, 2, 0, NOW + 5, NOW),
    ]
    assert store.joined_labels(ModelRef("iris", 2)) == []
    assert store.joined_labels(devices=["pi-99"]) == []
    assert store.joined_labels(since=NOW + 6) == []
    assert store.label_counts() == {FROM_API: {"joined": 2}}


def test_a_late_label_waits_for_its_window_then_joins(store: Store) -> None:
    got = store.add_labels([(ids(7)[0], "setosa")], FROM_API, NOW)
    assert got == Counter(late=1)
    assert store.joined_labels() == []
    assert store.label_states() == {"pending": 1}
    Records(store).send("telemetry", window(1, 5, ["versicolor", "setosa", "setosa"]))
    assert store.join_labels(NOW + 1) == Counter(joined=1)
    (joined,) = store.joined_labels()
    assert (joined.row, joined.prediction, joined.label) == (7, "setosa", "setosa")
    assert store.label_counts() == {FROM_API: {"late": 1, "joined": 1}}
    assert store.join_labels(NOW + 2) == Counter()  # nothing pending any more


def test_a_label_whose_window_never_comes_is_unknown_after_the_grace_period(
    store: Store,
) -> None:
    store.add_labels([(ids(3)[0], 1)], FROM_API, NOW)
    assert store.join_labels(NOW + 60, grace_s=3600) == Counter()
    assert store.join_labels(NOW + 3600, grace_s=3600) == Counter(unknown=1)
    assert store.label_states() == {"unknown": 1}
    assert store.label_counts() == {FROM_API: {"late": 1, "unknown": 1}}


def test_duplicates_keep_the_first_label(store: Store) -> None:
    Records(store).send("telemetry", window(1, 0, [0, 1]))
    first = store.add_labels([(ids(0)[0], 0), (ids(0)[0], 2), (ids(1)[0], 1)], FROM_API, NOW)
    assert first == Counter(joined=2, duplicate=1)
    again = store.add_labels([(ids(1)[0], 2)], FROM_CSV, NOW + 1)
    assert again == Counter(duplicate=1)
    assert [j.label for j in store.joined_labels()] == [0, 1]
    assert store.label_counts() == {
        FROM_API: {"joined": 2, "duplicate": 1},
        FROM_CSV: {"duplicate": 1},
    }


@pytest.mark.parametrize(
    ("pair", "reason"),
    [
        (("pi-01/1", 1), "malformed"),
        (("pi-01/one/2", 1), "malformed"),
        (("pi 01/1/2", 1), "malformed"),
        ((7, 1), "malformed"),
        ((f"{DEVICE}/1/0", None), "malformed"),
        ((f"{DEVICE}/1/0", True), "malformed"),
        ((f"{DEVICE}/1/0", ""), "malformed"),
        ((f"{DEVICE}/1/0", float("nan")), "malformed"),
        ((f"{DEVICE}/1/0", [1]), "malformed"),
        (("pi-99/1/0", 1), "unknown"),
    ],
)
def test_bad_labels_are_counted_by_reason_and_kept_out(
    store: Store, pair: tuple[Any, Any], reason: str
) -> None:
    Records(store).send("telemetry", window(1, 0, [0]))
    good = (ids(0)[0], 0)
    assert store.add_labels([pair, good], FROM_API, NOW) == Counter({reason: 1, "joined": 1})
    assert [j.id for j in store.joined_labels()] == [good[0]]


def test_without_predictions_a_label_is_partial_unless_a_sample_has_the_row(
    store: Store,
) -> None:
    records = Records(store)
    records.send("telemetry", window(1, 0, None, count=10))
    sample = RawSample(MODEL, {"a": 1.0}, 2, ids(4)[0]).to_body()
    records.send("telemetry", sample)
    got = store.add_labels([(ids(3)[0], 2), (ids(4)[0], 2)], FROM_API, NOW)
    assert got == Counter(partial=1, joined=1)
    assert [(j.row, j.prediction) for j in store.joined_labels()] == [(4, 2)]
    assert store.label_states() == {"partial": 1, "joined": 1}


def test_labels_a_device_sends_are_joined_on_ingest_and_its_word_covers_only_itself(
    store: Store,
) -> None:
    store.register("pi-02")
    Records(store, "pi-02").send("telemetry", window(1, 0, [1, 1]))
    records = Records(store)
    records.send("telemetry", window(1, 0, [0, 1]))
    body = Labels(((ids(0)[0], 0), (ids(1, device="pi-02")[0], 0), ("junk", 1))).to_body()
    assert records.send("labels", body) == 1
    assert records.send("labels", body) == 1  # a new record (seq), the same labels: duplicates
    assert store.label_counts() == {
        FROM_DEVICE: {"joined": 1, "foreign": 2, "malformed": 2, "duplicate": 1}
    }
    assert [j.id for j in store.joined_labels()] == ids(0)
    # a resent record (the same boot and seq) is stored once, so counted once
    store.add_batch("labels", Batch(DEVICE, (Record(1, 3, NOW, body),)))
    assert store.label_counts()[FROM_DEVICE]["duplicate"] == 1


def test_a_sample_with_another_devices_id_joins_nothing(store: Store) -> None:
    store.register("pi-02")
    Records(store, "pi-02").send("telemetry", RawSample(MODEL, {}, 2, ids(4)[0]).to_body())
    assert store.add_labels([(ids(4)[0], 2)], FROM_API, NOW) == Counter(late=1)


def test_retention_removes_the_index_with_its_records(store: Store) -> None:
    Records(store).send("telemetry", window(1, 0, [0]))
    store.add_labels([(ids(0)[0], 0)], FROM_API, NOW)
    store.prune(float("inf"))
    assert store.add_labels([(ids(1)[0], 0)], FROM_API, NOW) == Counter(late=1)
    assert len(store.joined_labels()) == 1  # joined labels keep their prediction


# ---- the real stack -------------------------------------------------------------------------
def sent_predictions(fleet: LabelledFleet, n: int) -> dict[str, Any]:
    """id -> prediction of the first `n` rows, as the hub stored the windows (waits for them)."""

    def stored() -> dict[str, Any]:
        out = {}
        for r in fleet.hub.store.records("telemetry", DEVICE):
            rows = r.body.get("rows")
            for i, p in enumerate((rows or {}).get("predictions") or []):
                out[prediction_id(DEVICE, rows["boot"], rows["first"] + i)] = p
        return out

    with fleet.hub.handled:
        assert fleet.hub.handled.wait_for(lambda: len(stored()) >= n, 30), "windows not stored"
    return stored()


def test_labels_come_back_three_ways_and_the_hub_reports_the_models_own_accuracy(
    labelled_fleet: LabelledFleet,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fleet = labelled_fleet
    boot = fleet.agent.boot
    n = len(IRIS_X)
    row_ids = [prediction_id(DEVICE, boot, i) for i in range(n)]
    truth = {row_ids[i]: int(IRIS_Y[i]) for i in range(n)}
    # late: labels of the first rows reach the hub before the agent has inferred them
    late = row_ids[:20]
    early = [(i, truth[i]) for i in late]
    assert fleet.hub.store.add_labels(early, FROM_API, time.time()) == Counter(late=20)
    feed(fleet, IRIS_X)
    predictions = sent_predictions(fleet, n)
    # 1. the device topic: something on the device learns the truth and tells the agent on its
    # local labels topic; the agent keeps them as records and sends them on dev/pi-01/labels
    topic_ids = row_ids[20:70]
    for part in (topic_ids[:1], topic_ids[1:30], topic_ids[30:]):
        items = [{"prediction": i, "label": truth[i]} for i in part]
        local = items[0] if len(items) == 1 else {"labels": items} if len(part) > 20 else items
        _publish(fleet.broker, LOCAL_LABELS, json.dumps(local).encode())
    _publish(fleet.broker, LOCAL_LABELS, b"not labels")  # refused on the device, counted
    # 2. the API, behind the token
    from cloud_hub.web.api import WebAuth, create_app
    from cloud_hub.web.server import WebServer

    web = WebServer(create_app(fleet.hub.store, WebAuth(TOKEN)), "127.0.0.1", 0)
    web.start()
    try:
        api_ids = row_ids[70:110]
        payload = [{"prediction": i, "label": truth[i]} for i in api_ids]
        payload += [{"prediction": api_ids[0], "label": 0}]  # a duplicate
        payload += [{"prediction": "nonsense", "label": 1}, {"prediction": "pi-77/1/1", "label": 1}]
        status, _, answer = http(web.url + "api/labels", "POST", body=json.dumps(payload))
        assert status == 200, answer
        assert json.loads(answer)["outcomes"] == {
            "joined": 40,
            "duplicate": 1,
            "malformed": 1,
            "unknown": 1,
        }
        assert http(web.url + "api/labels", "POST", token=None, body="[]")[0] == 401
    finally:
        web.stop()
    # 3. a CSV file through the CLI, one bad line among good ones
    csv_ids = row_ids[110:]
    path = tmp_path / "labels.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prediction", "label"])
        for i in csv_ids[:10]:
            writer.writerow([i, truth[i]])
        writer.writerow([csv_ids[10], ""])  # line 12: no label
        for i in csv_ids[10:]:
            writer.writerow([i, truth[i]])
    assert hub_cli.main(["--home", str(fleet.home), "labels", "import", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:12: " in err and "label" in err
    with fleet.hub.handled:  # the device's labels: stored on arrival; the late ones: join pass
        assert fleet.hub.handled.wait_for(lambda: len(fleet.hub.store.joined_labels()) == n, 30)
    joined = fleet.hub.store.joined_labels(MODEL)
    assert sorted(j.id for j in joined) == sorted(row_ids)
    assert all(j.prediction == predictions[j.id] for j in joined)

    # the accuracy the hub reports is the model's own on these rows, computed here
    bundle = read_bundle(fleet.bundle.read_bytes(), None, 10**8)
    own = load_runtime(bundle.card, bundle.model_bytes).predict(IRIS_X.astype(np.float32))
    assert [predictions[i] for i in row_ids] == own.tolist()  # what the agent sent is its own
    expected_acc = accuracy_score(IRIS_Y, own)
    expected_f1 = f1_score(IRIS_Y, own, average="macro")
    assert hub_cli.main(["--home", str(fleet.home), "metrics", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (row,) = report["rows"]
    assert (row["model"], row["version"], row["group"], row["labels"]) == ("iris", 1, "fleet", n)
    assert row["accuracy"]["value"] == pytest.approx(expected_acc)
    assert row["f1"]["value"] == pytest.approx(expected_f1)
    assert row["accuracy"]["low"] < expected_acc < row["accuracy"]["high"]
    counts = report["labels"]["counts"]
    api_counts = {"late": 20, "joined": 60, "duplicate": 1, "malformed": 1, "unknown": 1}
    assert counts[FROM_API] == api_counts
    assert counts[FROM_DEVICE] == {"joined": 50}
    assert fleet.agent.results is not None
    assert (fleet.agent.results.labels, fleet.agent.results.bad_labels) == (50, 1)
    stored = fleet.hub.store.records("labels", DEVICE)
    assert sum(len(r.body["labels"]) for r in stored) == 50  # three records, each stored once
    assert counts[FROM_CSV] == {"joined": n - 110, "malformed": 1}


def test_labels_import_says_what_is_wrong_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloud_hub.rollout.operations import init_hub

    home = tmp_path / "hub"
    init_hub(home)
    Store(store_url(home)).register(DEVICE)
    cases = {
        "missing.csv": None,
        "columns.csv": "id,value\npi-01/1/0,1\n",
        "empty.csv": "",
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        assert hub_cli.main(["--home", str(home), "labels", "import", str(path)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0], err
        assert "Traceback" not in err[0]
    assert "expected a file" in _err_of(home, tmp_path / "missing.csv", capsys)
    assert "expected columns prediction,label" in _err_of(home, tmp_path / "columns.csv", capsys)
    # bad lines: each one named, the good ones kept
    path = tmp_path / "mixed.csv"
    path.write_text(
        "prediction,label\npi-01/1/0,1\nnot-an-id,1\npi-01/1/1,\npi-01/1/2,2,extra\npi-01/1/3,0\n"
    )
    assert hub_cli.main(["--home", str(home), "labels", "import", str(path)]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == [f"{path}:3", f"{path}:4", f"{path}:5"]
    assert "2 labels kept" in captured.out
    assert Store(store_url(home)).label_states() == {"pending": 2}


def _err_of(home: Path, path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    hub_cli.main(["--home", str(home), "labels", "import", str(path)])
    return capsys.readouterr().err


def test_the_join_runs_on_a_thread_safe_store(store: Store) -> None:
    """The hub ingests while the CLI imports: both write the same store at once."""
    Records(store).send("telemetry", window(1, 0, list(range(200))))
    errors: list[BaseException] = []

    def add(part: list[int]) -> None:
        try:
            store.add_labels([(ids(r)[0], r) for r in part], FROM_CSV, NOW)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(list(range(i, 200, 4)),)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(store.joined_labels()) == 200


# ---- the device side ------------------------------------------------------------------------
def test_a_device_takes_labels_in_three_shapes_and_refuses_the_rest() -> None:
    one = {"prediction": "pi-01/1/0", "label": 2}
    for payload in (one, [one, one], {"labels": [one]}):
        assert local_labels(json.dumps(payload).encode()).labels[0] == ("pi-01/1/0", 2)
    for bad, says in (
        (b"nope", "expected JSON labels"),
        (b'{"x": 1}', "expected {prediction, label}"),
        (b'[{"prediction": 1, "label": 2}]', "labels[0].prediction: expected a string"),
        (b'[{"prediction": "a", "label": NaN}]', "expected a finite number"),
        (json.dumps([one] * (MAX_LABELS + 1)).encode(), "at most 10000 labels"),
    ):
        with pytest.raises(MessageError) as info:
            local_labels(bad)
        assert says in str(info.value)


def test_labels_leave_the_buffer_before_telemetry_and_outlast_it(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path / "b", boot=1, max_rows=3, caps={"labels": Cap(2)})
    buffer.append("telemetry", {"n": 0})
    buffer.append("labels", Labels((("pi-01/1/0", 1),)).to_body())
    buffer.append("telemetry", {"n": 1})
    assert [p.kind for p in buffer.take(10, set())] == ["labels"]
    buffer.append("telemetry", {"n": 2})  # past the buffer's cap: the oldest telemetry goes
    assert buffer.dropped() == {"telemetry": 1}
    buffer.append("labels", {"labels": []})
    buffer.append("labels", {"labels": []})  # past the labels' own cap: the oldest labels go
    assert buffer.dropped() == {"telemetry": 2, "labels": 1}
    buffer.close()


def test_labels_need_the_results_feeds_broker(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[device]\nid = "d1"\n[results]\nlabels = true\n')
    with pytest.raises(ConfigError, match=r"results\.labels = true expected results\.enabled"):
        load_config(path)
    path.write_text('[device]\nid = "d1"\n[results]\nenabled = true\nlabels = true\n')
    assert load_config(path).results.labels_topic == "edgefleet/local/{device_id}/labels"
