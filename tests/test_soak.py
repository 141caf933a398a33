"""The soak's fault schedule and promise checks (pure functions; `make soak` runs the rest)."""

from __future__ import annotations

import itertools

from cloud_hub.harness.soak import (
    FAULTS,
    LONG_FAULTS,
    count_mismatches,
    fault_schedule,
    gaps,
    long_fault_s,
    memory_growth,
    unverified,
)
from edge_agent.mqtt.session import Backoff


def test_schedule_is_seeded_inside_the_run_and_covers_every_fault() -> None:
    a = fault_schedule(600, seed=3)
    assert a == fault_schedule(600, seed=3)
    assert a != fault_schedule(600, seed=4)
    assert all(60 <= f.at_s <= 480 for f in a)  # first 10% and last 20% are for settling
    assert [f.at_s for f in a] == sorted(f.at_s for f in a)
    assert {f.kind for f in a} == set(FAULTS) | set(LONG_FAULTS)
    assert len(fault_schedule(60, seed=1)) >= 1


def test_long_faults_come_once_per_ten_minutes_spread_over_the_run() -> None:
    long = [f for f in fault_schedule(1800, seed=2) if f.kind in LONG_FAULTS]
    assert sorted(f.kind for f in long) == sorted(LONG_FAULTS * 3)
    gaps_s = [b.at_s - a.at_s for a, b in itertools.pairwise(long)]
    assert min(gaps_s) > 0.4 * (1800 * 0.7 / len(long)), "bunched together"
    assert long_fault_s("hub-away", 1800) == 180.0  # minutes, for a 30-minute soak
    assert long_fault_s("broker-away-long", 600) > 5 * Backoff().maximum  # past its ceiling


def test_gaps_find_a_lost_record_and_accept_a_whole_boot() -> None:
    assert gaps({("d1", 1): [0, 1, 2], ("d1", 2): [1, 0]}) == []
    found = gaps({("d1", 1): [0, 2, 3], ("d2", 4): [0]})
    assert found == ["d1 boot 1: seqs [1] missing of 0..3"]


def test_count_mismatches_catch_a_lost_tail_and_a_duplicate() -> None:
    assert count_mismatches({"a": 3, "b": 2}, {"a": 3, "b": 2}) == []
    assert count_mismatches({"a": 3, "b": 2}, {"a": 2, "b": 3}) == [
        "a: accepted 3 records, the hub stored 2",
        "b: accepted 2 records, the hub stored 3",
    ]
    assert count_mismatches({"c": 1}, {}) == ["c: accepted 1 records, the hub stored 0"]


def test_unverified_names_devices_off_the_rolled_out_model() -> None:
    assert unverified({"a": "m@1", "b": "m@1"}, "m@1") == []
    assert unverified({"a": None, "b": "m@0"}, "m@1") == [
        "a runs no model, expected m@1",
        "b runs m@0, expected m@1",
    ]


def test_memory_growth_tolerates_a_plateau_and_flags_a_leak() -> None:
    assert memory_growth([100, 120, 130, 130, 131, 129, 130, 131, 130]) is None
    assert memory_growth([100.0] * 3 + [150.0] * 3 + [260.0] * 3) == (
        "RSS grew from a peak of 100 MB to 260 MB"
    )
    assert memory_growth([1.0, 900.0]) is None  # too few samples to say
