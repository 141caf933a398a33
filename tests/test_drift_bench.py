"""bench/drift_bench.py --quick runs end to end and reports every data set, window and detector.

Only that the bench runs and its tables have the expected rows: the statistical promises (false
alarm rates, detection delays) are tested in tests/test_drift.py and measured by `make bench`.
The bench runs in a subprocess: it hides TensorFlow from alibi-detect's import, which must not
leak into this test process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from make_benchmarks import DESIGN_TARGETS, parse_output, render, target_rows

ROOT = Path(__file__).resolve().parent.parent

DATASETS = ["breast_cancer", "digits", "wine", "diabetes"]
WINDOWS = [50, 200, 1000]
DETECTORS = ["ours warn", "ours alert", "PSI>=0.1 warn", "PSI>=0.25 alert", "alibi KSDrift"]
SCENARIOS = ["+0.25 sd", "+0.5 sd", "+1 sd", "x1.3", "missing"]
DRIFT_TARGET = "drift monitor on unshifted data, default window"


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "drift_bench.py"), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.mark.skipif(
    importlib.util.find_spec("alibi_detect") is None,
    reason="alibi-detect is not installed (the Makefile installs it with --no-deps; see setup.cfg)",
)
def test_quick_run_reports_every_dataset_window_and_detector() -> None:
    proc = run_bench("--quick", "--json", "--jobs", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = parse_output(proc.stdout)
    rows = report["detectors"]
    assert [(r["dataset"], r["window"], r["detector"]) for r in rows] == [
        (d, w, det) for d in DATASETS for w in WINDOWS for det in DETECTORS
    ]
    for r in rows:
        assert 0.0 <= r["false_alarm_rate"] <= 1.0
        per_hour = r["false_alarm_rate"] * 20 * 3600 / r["window"]  # the rate is rounded
        assert r["false_alarms_per_hour"] == pytest.approx(per_hour, abs=1e-4 * 1440)
        for sc in SCENARIOS:
            assert {f"{sc} median", f"{sc} mean", f"{sc} missed"} <= set(r)
    assert [(r["dataset"], r["window"]) for r in report["cost"]] == [
        (d, w) for d in DATASETS for w in WINDOWS
    ]
    assert [r["dataset"] for r in report["setup"]] == DATASETS
    # two targets per data set, each a PASS or MISS of the DESIGN.md drift row
    targets = report["targets"]
    assert len(targets) == 2 * len(DATASETS)
    assert all(t["target"].startswith(DRIFT_TARGET) for t in targets)
    assert {t["verdict"] for t in targets} <= {"PASS", "MISS"}
    # and make bench renders it: a drift section, and the DESIGN.md row measured
    assert DRIFT_TARGET in {what for what, _ in DESIGN_TARGETS}
    measured = [r for r in target_rows({"drift": report}) if r["what"] == DRIFT_TARGET]
    assert len(measured) == 2 * len(DATASETS)
    assert all(r["bench"] == "drift" for r in measured)
    text = render({"drift": report}, {"cpu": "x"}, {"drift": "drift_bench.py --json"}, {}, "now")
    assert "## drift" in text and "### detectors" in text and "### cost" in text


def test_a_wrong_jobs_count_is_refused_in_one_line() -> None:
    proc = run_bench("--jobs", "0")
    assert proc.returncode == 2
    assert "--jobs: expected a whole number of processes >= 1, got 0" in proc.stderr
    assert proc.stdout == ""
