"""Promise 1 against the hardest moment: the agent SIGKILLed in the middle of a drain. A real
`edge-agent run` process, a private mosquitto and the hub in-process (the Rig of
tests/support/agent_process.py). With every inferred row also sampled raw
(`raw_sample_rate = 1`), the file source at 200 rows/s fills the buffer quickly while the broker
is down; the broker comes back, the drain (paced by `drain_rate`) is under way, and the agent is
killed once the broker acknowledged part of the backlog and the rest is still in the buffer (some
of it on the wire). The next boot finishes the drain: the hub holds every record once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.agent_process import (  # noqa: F401  (bundles and rig are fixtures)
    DEVICE,
    Rig,
    _buffer_rows,
    _pending_count,
    _until,
    bundles,
    every_record_once,
    rig,
)

BACKLOG = 600  # records buffered during the outage
DRAIN_RATE = 300  # records/s the agent may send: above the 200 rows/s it keeps producing
MAX_INFLIGHT = 2  # batches of 20 unconfirmed at once


def _tuned(config: Path) -> None:
    text = config.read_text()
    config.write_text(
        text.replace(
            "[telemetry]\n",
            f"[telemetry]\nraw_sample_rate = 1.0\ndrain_rate = {DRAIN_RATE}\nbatch_size = 20\n"
            # a small delivery window: when the hub comes back it confirms at most 40 records
            # at once, so "the middle of the drain" lasts seconds, not one burst of 400
            f"max_inflight = {MAX_INFLIGHT}\n",
        )
    )


@pytest.mark.broker
def test_sigkill_in_the_middle_of_a_drain_loses_and_repeats_nothing(
    rig: Rig,  # noqa: F811
    bundles: dict[int, Path],  # noqa: F811
) -> None:
    _tuned(rig.config)
    rig.preinstall(bundles[1], 1)
    agent = rig.start_agent()
    rig.hub_wait("boot 1 records at the hub", lambda: len(rig.hub_keys()) >= 50)

    rig.broker.stop()
    _until("a backlog while the broker is down", lambda: _pending_count(rig.state) >= BACKLOG)
    backlog, _ = _buffer_rows(rig.state)
    rig.broker.restart()

    def drained() -> int:  # backlog records the broker acknowledged (deleted from the buffer)
        return len(backlog - _buffer_rows(rig.state)[0])

    # the device's view of "in the middle": part of the backlog acknowledged, part still held
    _until("the drain under way", lambda: drained() >= 100)
    rig.sigkill(agent)
    left, _ = _buffer_rows(rig.state)
    assert left & backlog, "the drain was over before the kill"
    assert len(backlog - left) >= 100

    # Boot 2 reads the readings once more (150 rows) and stops producing: a source that kept
    # adding 200 records/s against a 300/s drain could leave, on a loaded machine, more than the
    # SIGTERM drain (bounded at 5 s) clears, and this test starts no boot 3 to send the rest.
    rig.config.write_text(rig.config.read_text().replace("loop = true", "loop = false"))
    agent = rig.start_agent()  # boot 2 finishes the drain, resending what was in flight
    rig.hub_wait("the whole backlog at the hub", lambda: backlog <= set(rig.hub_keys()))
    # and boot 2's own readings, each sampled raw: what the SIGTERM drain (bounded at 5 s) is
    # then left with is its last window, not a backlog a loaded machine may not clear in time
    readings = len((rig.tmp / "readings.csv").read_text().splitlines())
    rig.hub_wait("boot 2's readings at the hub", lambda: _raw_samples(rig, boot=2) >= readings)
    code, _ = rig.stop_agent(agent)
    assert code == 0, rig.logs()

    every_record_once(rig, boots=(1, 2))

    # what the records say: raw samples of the rows, and windows with the agent's resources
    telemetry = [r.body for r in rig.hub.store.records("telemetry", DEVICE)]
    raw = [b["raw"] for b in telemetry if "raw" in b]
    windows = [b for b in telemetry if "raw" not in b]
    assert len(raw) >= BACKLOG and windows
    assert {r["model"]["version"] for r in raw} == {1} and len(raw[0]["features"]) == 4
    assert all(w["resources"]["rss_mb"] > 0 for w in windows)
    assert any("cpu_pct" in w["resources"] for w in windows)
    assert rig.hub.store.telemetry_totals(DEVICE)["inferences"] > 0  # samples count none


def _raw_samples(at: Rig, boot: int) -> int:
    """The raw samples of `boot` the hub stored."""
    records = at.hub.store.records("telemetry", DEVICE)
    return sum(1 for r in records if r.boot == boot and "raw" in r.body)
