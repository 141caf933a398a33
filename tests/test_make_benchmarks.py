"""The BENCHMARKS.md writer on canned bench results: every DESIGN.md target gets a row."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from make_benchmarks import DESIGN_TARGETS, margin, parse_output, render, target_rows

CANNED = {
    "rollout": {
        "machine": {"cpu": "x"},
        "rows": [{"model_mb": 1, "ours_s": 16.9, "bare_s": 2.1, "nested": [1, 2]}],
        "targets": [
            {
                "target": "rollout of a 1 MB model to 100 simulated devices on loopback: under 5 s",
                "subject": "bundle to 100 devices (s)",
                "value": 16.9,
                "limit": "< 5",
                "verdict": "MISS",
                "note": "the fleet process is bound by its own CPU",
            }
        ],
    },
    "hub_capacity": {
        "levels": [{"store": "postgresql", "workers": 1, "devices": 2000, "held": True}],
        "targets": [
            {
                "target": "one hub on 2 cores, PostgreSQL store: devices each reporting once a "
                "second, stored exactly once: 5,000 devices (5x the load ThingsBoard reports for "
                "one 2-vCPU node), hub CPU under 70%",
                "subject": "largest fleet one hub held on PostgreSQL",
                "value": 2000,
                "limit": ">= 5000",
                "verdict": "MISS",
            }
        ],
    },
    "agent": {
        "throughput": [{"model": "LogReg", "batch": 1, "ratio": 0.8}],
        "targets": [
            {
                "target": "agent cold start to first inference: under 1 s",
                "subject": "agent daemon, spawn to first prediction (ms)",
                "value": 420.0,
                "limit": "< 1000",
                "verdict": "PASS",
            }
        ],
    },
    "drift": {
        "targets": [
            {
                "target": "drift monitor on unshifted data, default window: at most 1% of "
                "windows warn",
                "subject": "digits, share of 2000 drift-free 200-row windows that warn",
                "value": 0.0005,
                "limit": "<= 0.01",
                "verdict": "PASS",
            },
            {
                "target": "drift monitor on unshifted data, default window: a 0.5 standard "
                "deviation mean shift alerted within 3 windows",
                "subject": "digits, windows to the first alert, worst of 20 trials",
                "value": 4,
                "limit": "<= 3",
                "verdict": "MISS",
            },
        ]
    },
    "delta": {
        "targets": [
            {
                "target": "delta update of a fine-tuned model (same architecture, new weights): "
                "at most 30% of the full bundle's bytes",
                "subject": "MLP 256x256, fine-tune, int8 dynamic: delta bytes / full bundle bytes",
                "value": 0.265,
                "limit": "<= 0.3",
                "verdict": "PASS",
            }
        ]
    },
    "quantize": {
        "targets": [
            {
                "target": "int8 quantized MLP vs fp32: at most 30% of the size, accuracy drop "
                "at most 1 point",
                "mode": "dynamic",
                "size_ratio": 0.26,
                "accuracy_drop_points": 0.0,
                "verdict": "PASS",
            }
        ]
    },
}


def test_every_design_target_has_a_row_with_its_verdict() -> None:
    rows = target_rows(CANNED)
    assert {r["what"] for r in rows} == {w for w, _ in DESIGN_TARGETS}
    by_what = {r["what"]: r for r in rows}
    rollout = by_what["rollout of a 1 MB model to 100 simulated devices on loopback"]
    assert rollout["verdict"] == "MISS" and rollout["bench"] == "rollout"
    assert rollout["target"] == "under 5 s; 20 MB to 100 devices completes"
    assert rollout["margin"] == "238% over the limit (outside)"
    hub = by_what[
        "one hub on 2 cores, PostgreSQL store: devices each reporting once a second, stored "
        "exactly once"
    ]
    assert (hub["verdict"], hub["bench"]) == ("MISS", "hub_capacity")
    assert hub["measured"].startswith("2000 (largest fleet one hub held on PostgreSQL")
    assert hub["margin"] == "60% under the limit (outside)"
    cold = by_what["agent cold start to first inference"]
    assert cold["verdict"] == "PASS" and cold["margin"] == "58% under the limit (inside)"
    delta = by_what["delta update of a fine-tuned model (same architecture, new weights)"]
    assert (delta["verdict"], delta["bench"]) == ("PASS", "delta")
    assert delta["margin"] == "12% under the limit (inside)"
    quant = by_what["int8 quantized MLP vs fp32"]
    assert "size_ratio 0.26" in quant["measured"] and quant["verdict"] == "PASS"
    assert (
        by_what["agent resident memory with onnxruntime and a small model loaded"]["verdict"]
        == "NOT MEASURED"
    )
    drift = [r for r in rows if r["what"] == "drift monitor on unshifted data, default window"]
    assert [(r["verdict"], r["margin"], r["bench"]) for r in drift] == [
        ("PASS", "95% under the limit (inside)", "drift"),
        ("MISS", "33% over the limit (outside)", "drift"),
    ]


def test_render_writes_machine_figures_commands_and_failures() -> None:
    text = render(
        CANNED,
        {"cpu": "AMD EPYC", "cores": 2},
        {n: f".venv/bin/python bench/{n}_bench.py --json" for n in [*CANNED, "telemetry"]},
        {"telemetry": "exit status 1: boom"},
        "2025-01-01 00:00 UTC",
    )
    assert "| AMD EPYC | 2 |" in text
    assert "| 1 | 16.9 | 2.1 |" in text  # the rollout rows, lists left out
    assert "Command: `.venv/bin/python bench/rollout_bench.py --json`" in text
    assert "| LogReg | 1 | 0.8 |" in text
    assert "bench/telemetry_bench.py --json`: exit status 1: boom" in text
    assert text.count("NOT MEASURED") == 3  # pipeline, telemetry, memory: no canned figure
    assert (
        "- **rollout of a 1 MB model to 100 simulated devices on loopback** (rollout): "
        "the fleet process is bound by its own CPU" in text
    )


@pytest.mark.parametrize(
    ("value", "limit", "expected"),
    [
        (0.8, ">= 0.7", "14% over the limit (inside)"),
        (0.5, ">= 0.7", "29% under the limit (outside)"),
        ("n/a", "< 1", ""),
        (1.0, "about 1", ""),
    ],
)
def test_margin(value: object, limit: str, expected: str) -> None:
    assert margin(value, limit) == expected


def test_parse_output_skips_chatter_and_refuses_non_json() -> None:
    assert parse_output('warming up\n{\n "targets": []\n}\n') == {"targets": []}
    with pytest.raises(ValueError, match="no JSON object"):
        parse_output("Traceback: boom\n")


def test_the_benches_check_the_design_targets_in_their_words() -> None:
    """A bench's target line is its DESIGN.md row (what: target), not a copy that drifted."""
    import hub_capacity_bench
    import rollout_bench

    rows = {f"{what}: {target}" for what, target in DESIGN_TARGETS}
    capacity = f"{hub_capacity_bench.TARGET_WHAT}: {hub_capacity_bench.TARGET_TEXT}"
    assert capacity in rows
    assert any(row.startswith(rollout_bench.TARGET_LINE) for row in rows), rollout_bench.TARGET_LINE
