"""Sampled raw records: off by default, the seeded choice of rows, and what a sample holds
when it comes out of the real pipeline (a real bundle, real onnxruntime)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from cloud_hub.rollout.operations import enroll_device, init_hub
from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.errors import ConfigError
from edge_agent.inference.pipeline import ActiveModel, Pipeline
from edge_agent.protocol.messages import Batch, Record, decode_batch, encode
from edge_agent.uplink.sampling import RawSampler, pick_rows, raw_body
from tests.support.models import active_model, csv_line


@pytest.fixture(scope="module")
def iris_model(tmp_path_factory: pytest.TempPathFactory) -> ActiveModel:
    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=1000).fit(x, y)
    return active_model(clf, x, y, "iris", tmp_path_factory.mktemp("iris") / "iris-3.zip")


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5, 1.0])
def test_each_row_is_kept_with_the_configured_probability(rate: float) -> None:
    n = 20_000
    picked = pick_rows(n, rate, random.Random(1))
    sd = (n * rate * (1 - rate)) ** 0.5
    assert abs(len(picked) - n * rate) <= 5 * sd  # binomial: five standard deviations
    assert picked == sorted(set(picked)) and all(0 <= i < n for i in picked)
    assert picked == pick_rows(n, rate, random.Random(1))  # replayable from its seed


@pytest.mark.parametrize("rate", [0, -0.5, 1.01, float("nan")])
def test_a_sampler_refuses_a_rate_outside_0_1(rate: float) -> None:
    with pytest.raises(ConfigError, match="raw_sample_rate expected a probability"):
        RawSampler(rate, lambda body: None)


def test_samples_out_of_the_pipeline_are_the_rows_and_their_predictions(
    iris_model: ActiveModel,
) -> None:
    samples: list[dict[str, Any]] = []
    pipeline = Pipeline(on_drift=lambda r: None, on_window=lambda r: None)
    pipeline.active = iris_model
    pipeline.sampler = RawSampler(0.3, samples.append, random.Random(7))
    x = load_iris().data.astype(np.float32)
    for start in range(0, 150, 10):
        pipeline.process([("csv", csv_line(row)) for row in x[start : start + 10]])
    rng = random.Random(7)  # replayed batch by batch, as the sampler drew
    expected_rows = [s + i for s in range(0, 150, 10) for i in pick_rows(10, 0.3, rng)]
    assert len(samples) == len(expected_rows) == pipeline.sampler.sampled > 0
    names = iris_model.card.feature_names
    predictions = iris_model.runtime.predict(x[expected_rows]).tolist()
    for sample, row, prediction in zip(samples, expected_rows, predictions, strict=True):
        raw = sample["raw"]
        assert raw["model"] == {"name": "iris", "version": 3}
        assert list(raw["features"]) == names
        assert raw["features"] == dict(zip(names, x[row].tolist(), strict=True))
        assert raw["prediction"] == prediction
        # it travels as a telemetry record, as JSON
        batch = decode_batch(encode(Batch("pi-01", (Record(1, 0, 0.0, sample),))), "telemetry")
        assert batch.records[0].body == json.loads(json.dumps(sample))


def test_a_value_json_cannot_carry_becomes_null(iris_model: ActiveModel) -> None:
    row = np.array([5.1, np.nan, np.inf, 0.2], dtype=np.float32)
    body = raw_body(iris_model.card, row, 0)
    assert list(body["raw"]["features"].values())[1:3] == [None, None]
    json.dumps(body, allow_nan=False)


def _agent(tmp_path: Path, extra: str = "") -> Agent:
    init_hub(tmp_path / "hub")
    enroll_device(tmp_path / "hub", "pi-01", tmp_path / "state-pi-01")
    path = tmp_path / "agent.toml"
    path.write_text(f'[device]\nid = "pi-01"\n{extra}')
    return Agent(load_config(path))


def test_sampling_is_off_unless_the_profile_turns_it_on(
    tmp_path: Path, iris_model: ActiveModel
) -> None:
    agent = _agent(tmp_path / "off")
    assert agent.pipeline.sampler is None
    agent.buffer.close()
    agent = _agent(tmp_path / "on", "[telemetry]\nraw_sample_rate = 0.25\n")
    assert agent.pipeline.sampler is not None and agent.pipeline.sampler.rate == 0.25
    agent.pipeline.sampler.sink(raw_body(iris_model.card, np.zeros(4, dtype=np.float32), 1))
    (pending,) = agent.buffer.take(10, set())  # straight into the buffer, as telemetry
    assert pending.kind == "telemetry" and "raw" in pending.record.body
    agent.buffer.close()
