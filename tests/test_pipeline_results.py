"""Inference results for local actuators: the pipeline's on_result hook, the ResultPublisher
against a real mosquitto, and the [results] config section."""

from __future__ import annotations

import json
import math
import queue
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression

from cloud_hub.broker.local import RunningBroker
from edge_agent.config import keys_of, load_config, load_profile
from edge_agent.errors import ConfigError
from edge_agent.inference.pipeline import ActiveModel, Pipeline
from edge_agent.inference.results import DEFAULT_TOPIC, ResultPublisher
from edge_agent.mqtt.options import results_topic
from edge_agent.settings import ResultsSettings
from tests.support.models import active_model, csv_line

WAIT_S = 5.0  # upper bound for every wait on another thread; never reached when things work
RECONNECT_WAIT_S = 20.0  # retries wait under a ceiling of 1 s, then 2 s, 4 s... (jittered)
RESULT_KEYS = {"ts", "model", "prediction", "latency_ms", "id"}


@pytest.fixture(scope="module")
def iris() -> Any:
    return load_iris()


@pytest.fixture(scope="module")
def iris_clf(iris: Any) -> LogisticRegression:
    return LogisticRegression(max_iter=1000).fit(iris.data, iris.target)


@pytest.fixture(scope="module")
def iris_model(
    iris: Any, iris_clf: LogisticRegression, tmp_path_factory: pytest.TempPathFactory
) -> ActiveModel:
    out = tmp_path_factory.mktemp("iris") / "iris-3.zip"
    return active_model(iris_clf, iris.data, iris.target, "iris", out)


def make_pipeline(model: ActiveModel | None, on_result: Any = None) -> Pipeline:
    pipeline = Pipeline(on_drift=lambda r: None, on_window=lambda r: None, on_result=on_result)
    pipeline.active = model
    return pipeline


# ---- the pipeline's on_result ----------------------------------------------------------------


def test_on_result_gets_one_dict_per_inferred_row(
    iris: Any, iris_clf: LogisticRegression, iris_model: ActiveModel
) -> None:
    results: list[dict[str, Any]] = []
    pipeline = make_pipeline(iris_model, results.append)
    rows = iris.data[::5]  # 30 rows, all three classes
    batch = [("csv", csv_line(r)) for r in rows]
    batch.insert(3, ("csv", b"1,2,3"))  # rejected lines give no result
    batch.insert(7, ("csv", b"5.1,nan,1.4,0.2"))
    began = time.time()
    pipeline.process(batch)
    ended = time.time()

    assert len(results) == len(rows)
    assert pipeline.stats.rejected == {"field-count": 1, "non-finite": 1}
    expected = iris_model.runtime.predict(rows.astype(np.float32)).tolist()
    assert [r["prediction"] for r in results] == expected
    agreement = np.mean(np.array(expected) == iris_clf.predict(rows))
    assert agreement >= 0.95, agreement  # and the bundle answers as the sklearn model does
    assert set(expected) == {0, 1, 2}
    for result in results:
        assert set(result) == RESULT_KEYS
        assert result["model"] == "iris@3"
        assert type(result["prediction"]) is int  # a JSON type, not a numpy scalar
        assert began <= result["ts"] <= ended
        assert result["latency_ms"] >= 0
        assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert len({r["latency_ms"] for r in results}) == 1  # one batch: equal shares
    batch_ms = pipeline.stats.recent_ms()[-1]
    # each share is rounded to 4 decimals: the sum may be off by half a unit per row
    rounding = 0.5e-4 * len(rows)
    assert math.isclose(results[0]["latency_ms"] * len(rows), batch_ms, abs_tol=rounding + 1e-9)


def test_on_result_with_json_lines_and_batches_of_one(iris: Any, iris_model: ActiveModel) -> None:
    results: list[dict[str, Any]] = []
    pipeline = make_pipeline(iris_model, results.append)
    names = iris_model.card.feature_names
    for row in iris.data[[0, 60, 120]]:
        line = json.dumps(dict(zip(names, map(float, row), strict=True))).encode()
        pipeline.process([("json", line)])
    expected = iris_model.runtime.predict(iris.data[[0, 60, 120]].astype(np.float32)).tolist()
    assert [r["prediction"] for r in results] == expected
    assert pipeline.stats.inferences == 3


def test_string_labels_and_regression_values_are_json_types(iris: Any, tmp_path: Path) -> None:
    labels = iris.target_names[iris.target]
    named = active_model(
        LogisticRegression(max_iter=1000).fit(iris.data, labels),
        iris.data,
        labels,
        "iris-names",
        tmp_path / "names.zip",
    )
    diabetes = load_diabetes()
    regressor = active_model(
        LinearRegression().fit(diabetes.data, diabetes.target),
        diabetes.data,
        diabetes.target,
        "diabetes",
        tmp_path / "diabetes.zip",
    )
    results: list[dict[str, Any]] = []
    make_pipeline(named, results.append).process([("csv", csv_line(iris.data[0]))])
    make_pipeline(regressor, results.append).process([("csv", csv_line(diabetes.data[0]))])
    assert results[0]["prediction"] == "setosa" and results[0]["model"] == "iris-names@3"
    assert type(results[1]["prediction"]) is float and results[1]["model"] == "diabetes@3"
    expected = regressor.runtime.predict(diabetes.data[:1].astype(np.float32))[0]
    assert results[1]["prediction"] == pytest.approx(float(expected))


def test_no_result_without_a_model_or_without_a_callback(
    iris: Any, iris_model: ActiveModel
) -> None:
    results: list[dict[str, Any]] = []
    pipeline = make_pipeline(None, results.append)
    pipeline.process([("csv", csv_line(iris.data[0]))])
    assert results == [] and pipeline.stats.rejected == {"no-model": 1}
    plain = make_pipeline(iris_model)  # on_result defaults to None
    plain.process([("csv", csv_line(iris.data[0]))])
    assert plain.stats.inferences == 1


def test_a_raising_callback_does_not_stop_inference(iris: Any, iris_model: ActiveModel) -> None:
    calls: list[dict[str, Any]] = []

    def on_result(result: dict[str, Any]) -> None:
        calls.append(result)
        raise RuntimeError("actuator bug")

    pipeline = make_pipeline(iris_model, on_result)
    pipeline.process([("csv", csv_line(r)) for r in iris.data[:4]])
    pipeline.process([("csv", csv_line(iris.data[4]))])
    assert len(calls) == 5  # every row was still offered
    assert pipeline.result_errors == 5
    assert pipeline.stats.inferences == 5


# ---- ResultPublisher against mosquitto -------------------------------------------------------


class Subscriber:
    """A plain paho client collecting JSON messages from one topic."""

    def __init__(self, broker: RunningBroker, topic: str) -> None:
        self.messages: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        subscribed = queue.Queue[bool]()
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        client.on_message = lambda _c, _u, msg: self.messages.put(
            (msg.topic, json.loads(msg.payload))
        )
        client.on_subscribe = lambda *_args: subscribed.put(True)
        client.connect(broker.host, broker.port)
        client.loop_start()
        client.subscribe(topic, 0)
        assert subscribed.get(timeout=WAIT_S)
        self.client = client

    def next(self) -> tuple[str, dict[str, Any]]:
        return self.messages.get(timeout=WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(broker: RunningBroker) -> Iterator[Subscriber]:
    sub = Subscriber(broker, "edgefleet/local/+/results")
    try:
        yield sub
    finally:
        sub.close()


@pytest.fixture
def publisher(broker: RunningBroker) -> Iterator[ResultPublisher]:
    topic = results_topic(DEFAULT_TOPIC, "pi-01")
    pub = ResultPublisher(topic, broker.host, broker.port)
    try:
        yield pub
    finally:
        pub.stop()


@pytest.mark.broker
def test_publisher_delivers_json_to_a_subscriber(
    publisher: ResultPublisher, subscriber: Subscriber
) -> None:
    publisher.start()
    assert publisher.wait_connected(WAIT_S)
    publisher({"ts": 1.5, "model": "iris@3", "prediction": 2, "latency_ms": 0.01})
    topic, message = subscriber.next()
    assert topic == "edgefleet/local/pi-01/results"
    assert message == {"v": 1, "ts": 1.5, "model": "iris@3", "prediction": 2, "latency_ms": 0.01}
    assert publisher.stats() == {"published": 1, "dropped": 0, "unencodable": 0}


@pytest.mark.broker
def test_pipeline_results_reach_a_local_subscriber(
    iris: Any, iris_model: ActiveModel, publisher: ResultPublisher, subscriber: Subscriber
) -> None:
    publisher.start()
    assert publisher.wait_connected(WAIT_S)
    pipeline = make_pipeline(iris_model, publisher)
    rows = iris.data[::15]
    pipeline.process([("csv", csv_line(r)) for r in rows])
    got = [subscriber.next()[1] for _ in rows]
    expected = iris_model.runtime.predict(rows.astype(np.float32)).tolist()
    assert [m["prediction"] for m in got] == expected
    assert all(m["model"] == "iris@3" and m["v"] == 1 for m in got)
    assert publisher.stats()["published"] == len(rows)


@pytest.mark.broker
def test_publisher_drops_and_counts_while_disconnected(
    broker: RunningBroker, publisher: ResultPublisher
) -> None:
    result = {"ts": 1.0, "model": "iris@3", "prediction": 0, "latency_ms": 0.01}
    publisher(result)  # not started: dropped, never blocks, never raises
    broker.stop()
    publisher.start()
    publisher(result)  # broker down
    assert publisher.stats() == {"published": 0, "dropped": 2, "unencodable": 0}
    broker.restart()
    assert publisher.wait_connected(RECONNECT_WAIT_S)  # reconnected on its own
    sub = Subscriber(broker, "#")
    try:
        publisher({**result, "prediction": float("nan")})  # not JSON: counted, not sent
        publisher(result)
        assert sub.next()[1]["prediction"] == 0
    finally:
        sub.close()
    assert publisher.stats() == {"published": 1, "dropped": 2, "unencodable": 1}


@pytest.mark.broker
def test_publisher_reconnects_after_the_broker_is_killed(broker: RunningBroker) -> None:
    """kill -9 while connected, backoff waits of up to 2 s against a 1 s keepalive: results are
    dropped and counted while the broker is gone, and flow again once it is back."""
    result = {"ts": 1.0, "model": "iris@3", "prediction": 0, "latency_ms": 0.01}
    pub = ResultPublisher(
        results_topic(DEFAULT_TOPIC, "pi-01"),
        broker.host,
        broker.port,
        keepalive=1,
        reconnect_delay=(2, 2),
    )
    pub.start()
    try:
        assert pub.wait_connected(WAIT_S)
        broker.kill()
        deadline = time.monotonic() + WAIT_S
        while pub.connected.is_set():  # the session notices the dead socket on its own
            assert time.monotonic() < deadline, "still connected to a killed broker"
            time.sleep(0.01)  # polling the flag another thread clears
        pub(result)
        assert pub.stats()["dropped"] == 1
        broker.restart()
        assert pub.wait_connected(RECONNECT_WAIT_S)
        sub = Subscriber(broker, "#")
        try:
            pub(result)
            assert sub.next()[1]["prediction"] == 0
        finally:
            sub.close()
    finally:
        pub.stop()
    assert pub.stats() == {"published": 1, "dropped": 1, "unencodable": 0}


def test_publisher_from_settings() -> None:
    settings = ResultsSettings(
        enabled=False,
        host="127.0.0.1",
        port=1883,
        topic=DEFAULT_TOPIC,
        qos=0,
        labels=False,
        labels_topic="edgefleet/local/{device_id}/labels",
    )
    assert ResultPublisher.from_settings(settings, "pi-01") is None
    pub = ResultPublisher.from_settings(
        replace(settings, enabled=True, port=1884, topic="plant/{device_id}/out", qos=1),
        "pi-01",
    )
    assert pub is not None
    assert (pub.topic, pub.host, pub.port, pub.qos) == ("plant/pi-01/out", "127.0.0.1", 1884, 1)
    pub.stop()  # never started: nothing to do


@pytest.mark.parametrize(
    ("template", "device_id", "needles"),
    [
        ("results/#", "pi-01", ["'topic'", "without wildcards", "'results/#'"]),
        ("a/+/{device_id}", "pi-01", ["'topic'", "without wildcards"]),
        ("a/{device}/b", "pi-01", ["'topic'", "{device_id}", "'a/{device}/b'"]),
        ("", "pi-01", ["'topic'", "topic name", "''"]),
        (DEFAULT_TOPIC, "a/b", ["device id", "'a/b'"]),
    ],
)
def test_results_topic_errors(template: str, device_id: str, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        results_topic(template, device_id)
    for needle in needles:
        assert needle in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"topic": "a/#"}, "'topic'"),
        ({"topic": "t", "port": 0}, "'port' expected a port number 1-65535, found 0"),
        ({"topic": "t", "qos": 2}, "'qos' expected 0 or 1, found 2"),
        ({"topic": "t", "host": " "}, "'host'"),
    ],
)
def test_publisher_argument_errors(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match="result publisher") as info:
        ResultPublisher(**kwargs)
    assert needle in str(info.value)


# ---- the [results] config section ------------------------------------------------------------


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "device.toml"
    path.write_text(f'[device]\nid = "pi-01"\n{body}\n', encoding="utf-8")
    return path


def test_results_defaults_come_from_base(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg.results == ResultsSettings(
        enabled=False,
        host="127.0.0.1",
        port=1883,
        topic="edgefleet/local/{device_id}/results",
        qos=0,
        labels=False,
        labels_topic="edgefleet/local/{device_id}/labels",
    )
    assert ResultPublisher.from_settings(cfg.results, cfg.device.id) is None
    assert set(load_profile("raspberry-pi-4")["results"]) == set(keys_of(ResultsSettings))


def test_results_section_in_a_device_file(tmp_path: Path) -> None:
    body = '[results]\nenabled = true\nport = 1884\ntopic = "plant/{device_id}/predictions"'
    cfg = load_config(write(tmp_path, body))
    results = cfg.results
    assert results.enabled is True and results.port == 1884 and results.qos == 0
    pub = ResultPublisher.from_settings(results, cfg.device.id)
    assert pub is not None and pub.topic == "plant/pi-01/predictions"
    assert cfg.results.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ('enabled = "yes"', ["results.enabled expected bool", "str 'yes'"]),
        ("enabled = 1", ["results.enabled expected bool", "int 1"]),
        ("port = 0", ["results.port expected a port number 1-65535", "found 0"]),
        ("port = 65536", ["results.port", "1-65535", "65536"]),
        ('port = "1883"', ["results.port expected int", "str '1883'"]),
        ("port = true", ["results.port expected int", "bool True"]),
        ("qos = 2", ["results.qos expected 0 or 1", "found 2"]),
        ("qos = -1", ["results.qos expected 0 or 1", "found -1"]),
        ('host = ""', ["results.host expected a host name", "''"]),
        ('topic = "a/#"', ["results.topic expected an MQTT topic name without wildcards", "a/#"]),
        ('topic = "a/{id}"', ["results.topic", "{device_id}", "'a/{id}'"]),
        ('topic = ""', ["results.topic", "''"]),
        ("enabeld = true", ["unknown key results.enabeld", "Did you mean 'enabled'?"]),
        ("topci = 'x'", ["unknown key results.topci", "Did you mean 'topic'?", "Known keys"]),
    ],
)
def test_results_section_errors_say_where_what_and_found(
    tmp_path: Path, body: str, needles: list[str]
) -> None:
    path = write(tmp_path, f"[results]\n{body}")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for needle in needles:
        assert needle in message, message


def test_results_misspelt_as_a_section_suggests_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'resluts'\. Did you mean 'results'\?"):
        load_config(write(tmp_path, "[resluts]\nenabled = true"))
