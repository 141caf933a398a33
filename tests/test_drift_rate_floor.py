"""The drift monitor's rate floor ([drift] min_interval_s): a stream faster than `window` rows per
interval is sampled across time, so a device inferring tens of thousands of rows a second
sends about one drift report a second, not hundreds, and still sees a shift; a slower stream is
tested row by row as before. Time is the monitor's `now`, driven by the test."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.linear_model import LogisticRegression

from cloud_hub.rollout.operations import enroll_device, init_hub
from converters.card import reference_card
from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.drift import DriftMonitor
from edge_agent.drift.monitor import STAGE_ROWS
from edge_agent.errors import BadDataError
from edge_agent.protocol.card import ModelCard, parse_card
from edge_agent.protocol.records import DriftReport
from tests.support.models import csv_line, installed_model

WINDOW = 200
RATE = 50_000  # rows a second offered: 250 windows' worth, against a floor of one a second
BATCH = 50


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, ModelCard]:
    """breast_cancer as the card's reference profile, and as the stream's rows: a drift-free
    stream draws from the reference itself (a stream drawn over and over from a second sample
    of 284 rows would drift from the reference by that sample's own chance differences)."""
    x = np.asarray(load_breast_cancer().data, dtype=np.float64)
    names = [f"f{i}" for i in range(x.shape[1])]
    return x, parse_card(reference_card(x, names, name="cancer"))


def stream(live: np.ndarray, seconds: float, rate: float, seed: int) -> Iterator[tuple[float, Any]]:
    """(now, batch) of rows drawn from `live` at `rate` rows a second, BATCH at a time."""
    rng = np.random.default_rng(seed)
    batches = int(seconds * rate / BATCH)
    for i in range(batches):
        yield i * BATCH / rate, live[rng.integers(0, len(live), BATCH)]


def run(monitor: DriftMonitor, batches: Iterator[tuple[float, Any]]) -> list[dict[str, Any]]:
    reports = []
    for now, x in batches:
        report = monitor.add(x, now=now)
        if report is not None:
            reports.append(report)
    return reports


def test_a_fast_stream_gives_about_one_report_a_second_each_a_window_of_it(
    data: tuple[np.ndarray, ModelCard],
) -> None:
    live, card = data
    seconds = 10
    reports = run(
        DriftMonitor(card, WINDOW, min_interval_s=1.0), stream(live, seconds, RATE, seed=1)
    )
    # one window right away (the bucket starts full), then one per second of stream
    assert seconds <= len(reports) <= seconds + 1
    assert all(r["window"] == WINDOW for r in reports)
    assert "sampled_from" not in reports[0]  # the first 200 rows: every one taken
    later = [r["sampled_from"] for r in reports[1:]]
    # each later window was drawn from about a second of the stream
    assert all(0.9 * RATE <= n <= 1.1 * RATE for n in later), later
    offered = seconds * RATE
    assert WINDOW + sum(later) <= offered
    assert sum(r["status"] != "ok" for r in reports) <= 1  # drawn from the reference


def test_the_sample_follows_the_stream_a_shift_is_alerted_within_three_windows(
    data: tuple[np.ndarray, ModelCard],
) -> None:
    live, card = data
    monitor = DriftMonitor(card, WINDOW, min_interval_s=1.0)
    shifted = live.copy()
    shifted[:, 1] += 0.5 * live[:, 1].std()  # half a standard deviation of one feature
    before = run(monitor, stream(live, 5, RATE, seed=2))
    after = run(monitor, ((5 + t, x) for t, x in stream(shifted, 5, RATE, seed=3)))
    assert all(r["status"] == "ok" for r in before[-2:])
    first_alert = next(i for i, r in enumerate(after) if r["status"] == "alert")
    assert first_alert < 3
    assert "f1" in after[first_alert]["moved"]


def test_a_stream_slower_than_the_floor_is_tested_row_by_row(
    data: tuple[np.ndarray, ModelCard],
) -> None:
    """150 rows a second against a floor of 200: the reports are those of no floor at all."""
    live, card = data
    floored = run(DriftMonitor(card, WINDOW, min_interval_s=1.0), stream(live, 8, 150, seed=4))
    unfloored = run(DriftMonitor(card, WINDOW), stream(live, 8, 150, seed=4))
    assert len(floored) == 8 * 150 // WINDOW
    assert floored == unfloored


def test_missing_values_are_sampled_with_the_rows_so_their_share_is_the_streams(
    data: tuple[np.ndarray, ModelCard],
) -> None:
    """One line in ten is rejected for a missing value: the report's missing share stays about
    10%, not ten times the sampled rows' share (which would alarm on every window)."""
    live, card = data
    monitor = DriftMonitor(card, WINDOW, min_interval_s=1.0)
    reports = []
    for now, x in stream(live, 6, RATE, seed=5):
        for _ in range(BATCH // 10):  # the framer's rejects come before the batch's rows
            monitor.missing(3)
        report = monitor.add(x[: BATCH - BATCH // 10], now=now)
        if report is not None:
            reports.append(report)
    shares = [r["missing_rows"] / (r["window"] + r["missing_rows"]) for r in reports[1:]]
    assert shares and all(0.05 < s < 0.15 for s in shares), shares


def test_a_stream_of_rejects_alone_is_judged_as_it_comes_not_held(
    data: tuple[np.ndarray, ModelCard],
) -> None:
    """Rejects wait for the next batch's rows to be sampled with them; a sensor that sends only
    broken lines must not make them pile up."""
    _, card = data
    monitor = DriftMonitor(card, WINDOW, min_interval_s=1.0)
    for _ in range(10_000):
        monitor.missing(3)
    assert len(monitor._rejects) < STAGE_ROWS


def test_the_report_says_what_it_was_drawn_from_on_the_wire() -> None:
    body = DriftReport(window=200, sampled_from=51_234).to_body()
    assert DriftReport.from_body(body, "drift").sampled_from == 51_234
    assert "sampled_from" not in DriftReport(window=200).to_body()  # unsampled: as before
    with pytest.raises(BadDataError, match=r"drift\.sampled_from.*'many'"):
        DriftReport.from_body({**body, "sampled_from": "many"}, "drift")


def test_the_agent_keeps_about_one_drift_report_a_second_of_a_fast_stream(tmp_path: Path) -> None:
    """The device's defaults (base.toml): 20,000 iris lines through the agent's pipeline as
    fast as it takes them (thousands a second, 100 windows of 200 rows) leave in the agent's
    buffer about one drift report per second they took, each a window of 200 rows."""
    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=1000).fit(x, y)
    installed = installed_model(clf, x, y, "iris", tmp_path / "iris-3.zip")
    init_hub(tmp_path / "hub")
    enroll_device(tmp_path / "hub", "pi-01", tmp_path / "state-pi-01")
    config = tmp_path / "agent.toml"
    config.write_text('[device]\nid = "pi-01"\n')  # its state next to it
    agent = Agent(load_config(config))
    try:
        agent._activate(installed)
        lines = [("csv", csv_line(x[i % len(x)])) for i in range(20_000)]
        started = time.monotonic()
        for i in range(0, len(lines), 16):  # micro-batches, as the main loop takes them
            agent.pipeline.process(lines[i : i + 16])
        took = time.monotonic() - started
        drift = [p.record.body for p in agent.buffer.take(10_000, set()) if p.kind == "drift"]
    finally:
        agent.buffer.close()
    assert 1 <= len(drift) <= 2 + took  # the first window at once, then one a second at most
    assert all(r["window"] == 200 for r in drift)
    assert sum(r.get("sampled_from", r["window"]) for r in drift) <= len(lines)
