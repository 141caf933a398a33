"""Drift detectors side by side on the same streams: ours (`edge_agent.drift.DriftMonitor`, warn
and alert), the old fixed PSI bands, and alibi-detect's `KSDrift` with FDR correction.

Data: four data sets shipped with scikit-learn (breast_cancer 30 features, digits 64, wine 13,
diabetes 10), as float32 (what the agent parses a sensor line to). The reference is a seeded 60%
subsample without replacement; ours gets a card built from it (`feature_profiles`, 10 bins, the
card's bounded KS sample), alibi-detect gets the reference rows themselves (`x_ref`). Streams
are drawn with replacement from the whole data set, the population the reference was sampled
from, and cut into windows of 50, 200 and 1,000 rows.

Detectors, each judging every window of a stream:

- **ours warn / ours alert**: the report's status (`warn` or `alert` / `alert`), the profile's
  defaults (warn_every 100, alert_every 10,000: 1% and 0.01% of drift-free windows), rows fed
  in micro-batches of 16 (the base profile's batch_max), one monitor per stream, so its tests
  pool the last 1, 2 and 4 windows as on a device;
- **PSI bands warn / alert**: what the monitor decided before calibration: the largest
  per-feature PSI of the same report (`psi`, over the card's bins) at or above 0.1 / 0.25;
- **alibi KSDrift**: `KSDrift(x_ref, p_val=0.01, correction="fdr").predict(window)["is_drift"]`,
  one two-sample KS test per feature, Benjamini-Hochberg across features; one level only.

Scenarios: unshifted; every feature's mean moved by 0.25, 0.5 and 1 times its reference
standard deviation; every feature scaled x1.3 about its reference mean; a missing-feature burst
(a quarter of the lines arrive with one feature missing: the agent rejects such a line and
counts it with `DriftMonitor.missing(j)`, so ours sees the rejections; alibi-detect sees the
same lines with the feature imputed by its reference mean: its KSDrift has no missing-value
handling and scipy's KS test returns NaN for a NaN column). The feature is the one with the
most distinct reference values. A window is `window` valid rows; in the burst, the rejected
lines that arrived meanwhile belong to it (alibi-detect's window holds them, imputed).

Figures per data set, window and detector:

- false alarms: the share of windows of one long drift-free stream that fire, and that rate
  per hour at 20 rows a second;
- detection delay: streams that run PRE_WINDOWS unshifted windows (ours' pooled history then
  holds only drift-free windows), then shifted: windows from the shift's start to the first
  firing (1 = the first shifted window), median and mean over seeded trials, watching at most
  MAX_DELAY shifted windows; a trial with no firing by then counts as missed (the median is
  then None, shown as ">MAX_DELAY", when half or more missed; the mean counts a miss as
  MAX_DELAY + 1, a lower bound).
  alibi-detect is stateless, so it is not run on the unshifted lead-in;
- cost: median ms per window of ours (every `add` of the window, report included) and of
  alibi-detect's `predict` (informational; measured while the bench's workers share the CPU).
  The PSI bands read ours' report.

The DESIGN.md target checked: at the default window (200), at most 1% of drift-free windows
warn, and a 0.5 sd mean shift alerts within 3 windows (every trial).

    .venv/bin/python bench/drift_bench.py              # tables (about 5 minutes on 2 cores)
    .venv/bin/python bench/drift_bench.py --json       # the same figures as JSON
    .venv/bin/python bench/drift_bench.py --quick      # a smoke run of a few windows

alibi-detect 0.13 (the newest) pins numpy<2 and numba<0.60 and imports TensorFlow modules that
need tensorflow<2.19 when TensorFlow is installed; its KSDrift itself is numpy and scipy. The
dev extra installs it without those pins (see setup.cfg), and this bench imports it with
TensorFlow hidden from it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import cache
from importlib.metadata import version
from typing import Any

import numpy as np
import sklearn
from bench_machine import help_line, machine
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine

from converters.card import reference_card
from edge_agent.drift import DriftMonitor
from edge_agent.protocol.card import ModelCard, parse_card
from edge_agent.protocol.frozen import frozen

SEED = 0
REFERENCE_SHARE = 0.6
BINS = 10  # the converter's REFERENCE_BINS
WINDOWS = (50, 200, 1000)
DEFAULT_WINDOW = 200  # firmware_configs/base.toml [drift] window
BATCH = 16  # rows per DriftMonitor.add: the base profile's batch_max
ROWS_PER_S = 20.0  # the row rate the per-hour figures assume
PRE_WINDOWS = 4  # unshifted windows before a shift: ours' pooled history is then drift-free
MISSING_SHARE = 0.25  # lines with the feature missing, in the burst
PSI_WARN, PSI_ALERT = 0.1, 0.25  # the old fixed bands
ALIBI_P_VAL = 0.01
TARGET_WARN_RATE = 0.01
TARGET_DELAY = 3
TARGET_SHIFT = "+0.5 sd"
TARGET_WHAT = "drift monitor on unshifted data, default window"
MIN_PIPED_WIDTH = 150

DATASETS: dict[str, Callable[..., Any]] = {
    "breast_cancer": load_breast_cancer,
    "digits": load_digits,
    "wine": load_wine,
    "diabetes": load_diabetes,
}
DETECTORS = ("ours warn", "ours alert", "PSI>=0.1 warn", "PSI>=0.25 alert", "alibi KSDrift")
ALIBI = "alibi KSDrift"


@frozen
class Scenario:
    name: str
    shift_sd: float = 0.0
    scale: float = 1.0
    missing_share: float = 0.0

    @property
    def moves(self) -> bool:
        return self.shift_sd != 0.0 or self.scale != 1.0


UNSHIFTED = Scenario("unshifted")
SCENARIOS = (
    Scenario("+0.25 sd", shift_sd=0.25),
    Scenario("+0.5 sd", shift_sd=0.5),
    Scenario("+1 sd", shift_sd=1.0),
    Scenario("x1.3", scale=1.3),
    Scenario("missing", missing_share=MISSING_SHARE),
)


@frozen
class Plan:
    """How many windows: of the drift-free stream, and shifted trials per scenario."""

    unshifted: dict[int, int]
    trials: dict[int, int]
    max_delay: int


FULL = Plan(
    unshifted={50: 1200, 200: 2000, 1000: 150}, trials={50: 20, 200: 20, 1000: 10}, max_delay=8
)
QUICK = Plan(unshifted={50: 5, 200: 3, 1000: 2}, trials={50: 1, 200: 1, 1000: 1}, max_delay=2)


# --- data, reference and card ----------------------------------------------------------------


@frozen
class Setup:
    name: str
    x: np.ndarray  # the whole data set, float32: the population streams are drawn from
    ref: np.ndarray  # the reference subsample
    mean: np.ndarray  # per feature, of the reference
    std: np.ndarray
    card: ModelCard
    missing_feature: int
    feature_names: list[str]


def monitor_card(name: str, ref: np.ndarray, names: list[str]) -> ModelCard:
    """A card carrying only what the monitor reads: the reference's feature profiles and size
    (input drift only: no predictions are fed, so the prediction test never runs)."""
    return parse_card(reference_card(ref, names, name=name, bins=BINS))


@cache
def setup(name: str) -> Setup:
    data = DATASETS[name]()
    x = np.asarray(data.data, dtype=np.float32)
    names = [str(n) for n in data.feature_names]
    rng = np.random.default_rng([SEED, list(DATASETS).index(name)])
    ref = x[np.sort(rng.permutation(len(x))[: round(REFERENCE_SHARE * len(x))])]
    ref64 = ref.astype(np.float64)
    distinct = [len(np.unique(ref[:, j])) for j in range(ref.shape[1])]
    return Setup(
        name=name,
        x=x,
        ref=ref,
        mean=ref64.mean(axis=0),
        std=ref64.std(axis=0),
        card=monitor_card(name, ref64, names),
        missing_feature=int(np.argmax(distinct)),
        feature_names=names,
    )


def draw(
    s: Setup, window: int, scenario: Scenario, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One window of a stream: (`window` valid rows, the lines rejected meanwhile with the
    burst's feature imputed by its reference mean)."""
    rows = s.x[rng.integers(0, len(s.x), window)]
    if scenario.moves:
        moved = s.mean + scenario.scale * (rows - s.mean) + scenario.shift_sd * s.std
        rows = moved.astype(np.float32)
    lost = 0
    if scenario.missing_share:
        lost = int(rng.negative_binomial(window, 1 - scenario.missing_share))
    imputed = s.x[rng.integers(0, len(s.x), lost)].copy()
    imputed[:, s.missing_feature] = s.mean[s.missing_feature]
    return rows, imputed


# --- the detectors ---------------------------------------------------------------------------


def load_ksdrift() -> Any:
    """alibi-detect's KSDrift class. alibi-detect 0.13 imports its TensorFlow backend whenever
    TensorFlow is importable, and that backend needs tensorflow<2.19 and tensorflow-probability;
    hidden from it (the bench itself never uses TensorFlow), it loads its numpy/scipy detectors."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # "no PyTorch/TensorFlow" notice
    if "tensorflow" not in sys.modules:
        sys.modules["tensorflow"] = None  # type: ignore[assignment]
    try:
        from alibi_detect.cd import KSDrift
    except ImportError as exc:
        raise SystemExit(
            f"drift_bench: alibi-detect is needed for the comparison and did not import ({exc}); "
            "install the dev extra's alibi-detect as setup.cfg describes"
        ) from exc
    return KSDrift


class Judges:
    """Every detector on one stream: ours (one monitor for the whole stream), the PSI bands
    (from ours' report), alibi-detect's KSDrift (stateless)."""

    def __init__(self, s: Setup, window: int, ksdrift: Any) -> None:
        self.setup = s
        self.monitor = DriftMonitor(s.card, window=window)
        self.ksdrift = ksdrift
        self.ours_ms: list[float] = []
        self.alibi_ms: list[float] = []

    def ours(self, rows: np.ndarray, lost: int) -> dict[str, bool]:
        started = time.perf_counter()
        for _ in range(lost):
            self.monitor.missing(self.setup.missing_feature)
        report = None
        for start in range(0, len(rows), BATCH):
            report = self.monitor.add(rows[start : start + BATCH]) or report
        self.ours_ms.append((time.perf_counter() - started) * 1e3)
        assert report is not None, "a window of `window` rows closes the monitor's window"
        status, max_psi = report["status"], report["max_psi"]
        return {
            "ours warn": status != "ok",
            "ours alert": status == "alert",
            "PSI>=0.1 warn": max_psi >= PSI_WARN,
            "PSI>=0.25 alert": max_psi >= PSI_ALERT,
        }

    def alibi(self, rows: np.ndarray, imputed: np.ndarray) -> bool:
        batch = np.concatenate([rows, imputed]) if len(imputed) else rows
        started = time.perf_counter()
        out = self.ksdrift.predict(batch, return_p_val=False, return_distance=False)
        self.alibi_ms.append((time.perf_counter() - started) * 1e3)
        return bool(out["data"]["is_drift"])


# --- one (data set, window): the drift-free stream and the shifted trials ----------------------


def _progress(message: str) -> None:
    print(f"drift_bench: {message}", file=sys.stderr, flush=True)


def false_alarms(s: Setup, window: int, n: int, ksdrift: Any) -> tuple[dict[str, int], Judges]:
    rng = np.random.default_rng([SEED, list(DATASETS).index(s.name), window, 0])
    judges = Judges(s, window, ksdrift)
    fired = dict.fromkeys(DETECTORS, 0)
    for i in range(n):
        rows, imputed = draw(s, window, UNSHIFTED, rng)
        verdicts = judges.ours(rows, len(imputed))
        verdicts[ALIBI] = judges.alibi(rows, imputed)
        for name, hit in verdicts.items():
            fired[name] += hit
        if (i + 1) % 500 == 0:
            _progress(f"{s.name} window {window}: {i + 1}/{n} drift-free windows")
    return fired, judges


def first_firings(
    s: Setup, window: int, scenario_index: int, trial: int, max_delay: int, ksdrift: Any
) -> dict[str, int | None]:
    """Shifted windows (1-based) until each detector first fired, None if not by max_delay."""
    scenario = SCENARIOS[scenario_index]
    rng = np.random.default_rng(
        [SEED, list(DATASETS).index(s.name), window, scenario_index + 1, trial]
    )
    judges = Judges(s, window, ksdrift)
    for _ in range(PRE_WINDOWS):
        rows, imputed = draw(s, window, UNSHIFTED, rng)
        judges.ours(rows, len(imputed))
    first: dict[str, int | None] = dict.fromkeys(DETECTORS)
    for k in range(1, max_delay + 1):
        rows, imputed = draw(s, window, scenario, rng)
        verdicts = judges.ours(rows, len(imputed))
        if first[ALIBI] is None:
            verdicts[ALIBI] = judges.alibi(rows, imputed)
        for name, hit in verdicts.items():
            if hit and first[name] is None:
                first[name] = k
        if all(v is not None for v in first.values()):
            break
    return first


def measure(name: str, window: int, plan: Plan) -> dict[str, Any]:
    """Everything about one data set at one window size (one worker's job)."""
    ksdrift_class = load_ksdrift()
    s = setup(name)
    ksdrift = ksdrift_class(s.ref, p_val=ALIBI_P_VAL, correction="fdr")
    started = time.monotonic()
    n = plan.unshifted[window]
    fired, judges = false_alarms(s, window, n, ksdrift)
    delays: dict[str, dict[str, list[int | None]]] = {}
    for i, scenario in enumerate(SCENARIOS):
        trials = [
            first_firings(s, window, i, t, plan.max_delay, ksdrift)
            for t in range(plan.trials[window])
        ]
        delays[scenario.name] = {d: [t[d] for t in trials] for d in DETECTORS}
    _progress(f"{name} window {window}: done in {time.monotonic() - started:.0f} s")
    return {
        "dataset": name,
        "window": window,
        "windows": n,
        "fired": fired,
        "delays": delays,
        "ours_ms": statistics.median(judges.ours_ms),
        "alibi_ms": statistics.median(judges.alibi_ms),
    }


def run_all(plan: Plan, datasets: list[str], jobs: int) -> list[dict[str, Any]]:
    load_ksdrift()  # fail in one line before any worker starts
    work = [(name, w) for name in datasets for w in WINDOWS]
    # the slowest jobs first (alibi-detect's cost grows with features and windows)
    work.sort(key=lambda nw: -setup(nw[0]).x.shape[1] * plan.unshifted[nw[1]] * nw[1] ** 0.3)
    if jobs <= 1:
        results = [measure(name, w, plan) for name, w in work]
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(measure, name, w, plan) for name, w in work]
            results = [f.result() for f in futures]
    order = {(name, w): i for i, (name, w) in enumerate((n, w) for n in datasets for w in WINDOWS)}
    return sorted(results, key=lambda r: order[(r["dataset"], r["window"])])


# --- figures ---------------------------------------------------------------------------------


def summarize(delays: list[int | None], max_delay: int) -> dict[str, Any]:
    """Median (None when half or more missed) and mean (a miss counts as max_delay + 1)."""
    caught = sorted(d for d in delays if d is not None)
    missed = len(delays) - len(caught)
    ranked = caught + [max_delay + 1] * missed
    median = statistics.median(ranked) if missed < len(delays) / 2 else None
    return {
        "median": median,
        "mean": round(statistics.fmean(ranked), 2) if ranked else None,
        "missed": missed,
    }


def detector_rows(results: list[dict[str, Any]], plan: Plan) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        per_hour = ROWS_PER_S * 3600 / r["window"]
        for d in DETECTORS:
            rate = r["fired"][d] / r["windows"]
            row: dict[str, Any] = {
                "dataset": r["dataset"],
                "window": r["window"],
                "detector": d,
                "drift_free_windows": r["windows"],
                "false_alarm_rate": round(rate, 4),
                "false_alarms_per_hour": round(rate * per_hour, 2),
                "trials": plan.trials[r["window"]],
            }
            for sc in SCENARIOS:
                summary = summarize(r["delays"][sc.name][d], plan.max_delay)
                row[f"{sc.name} median"] = summary["median"]
                row[f"{sc.name} mean"] = summary["mean"]
                row[f"{sc.name} missed"] = summary["missed"]
            rows.append(row)
    return rows


def cost_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "dataset": r["dataset"],
            "window": r["window"],
            "ours_ms": round(r["ours_ms"], 3),
            "alibi_ms": round(r["alibi_ms"], 3),
            "alibi_over_ours": round(r["alibi_ms"] / r["ours_ms"], 1),
        }
        for r in results
    ]


def setup_rows(datasets: list[str]) -> list[dict[str, Any]]:
    out = []
    for name in datasets:
        s = setup(name)
        out.append(
            {
                "dataset": name,
                "rows": len(s.x),
                "features": s.x.shape[1],
                "reference_rows": len(s.ref),
                "missing_feature": s.feature_names[s.missing_feature],
            }
        )
    return out


def targets(
    rows: list[dict[str, Any]], results: list[dict[str, Any]], plan: Plan
) -> list[dict[str, Any]]:
    shifted = {
        r["dataset"]: r["delays"][TARGET_SHIFT]["ours alert"]
        for r in results
        if r["window"] == DEFAULT_WINDOW
    }
    at = {
        (r["dataset"], r["detector"]): r
        for r in rows
        if r["window"] == DEFAULT_WINDOW and r["detector"] in ("ours warn", "ours alert", ALIBI)
    }
    out = []
    for name in dict.fromkeys(r["dataset"] for r in rows):
        warn, alert, alibi = at[(name, "ours warn")], at[(name, "ours alert")], at[(name, ALIBI)]
        rate = warn["false_alarm_rate"]
        out.append(
            {
                "target": f"{TARGET_WHAT}: at most 1% of windows warn",
                "subject": f"{name}, share of {warn['drift_free_windows']} drift-free "
                f"{DEFAULT_WINDOW}-row windows that warn",
                "value": rate,
                "limit": f"<= {TARGET_WARN_RATE}",
                "verdict": "PASS" if rate <= TARGET_WARN_RATE else "MISS",
                "note": f"{name}: ours alerts on {alert['false_alarm_rate']:.2%} of them; "
                f"alibi-detect's KSDrift (fdr, p_val {ALIBI_P_VAL}) fires on "
                f"{alibi['false_alarm_rate']:.2%}",
            }
        )
        trials = plan.trials[DEFAULT_WINDOW]
        delays = shifted[name]
        worst = plan.max_delay + 1 if None in delays else max(d for d in delays if d is not None)
        out.append(
            {
                "target": f"{TARGET_WHAT}: a 0.5 standard deviation mean shift alerted "
                f"within {TARGET_DELAY} windows",
                "subject": f"{name}, windows to the first alert, worst of {trials} trials",
                "value": worst,
                "limit": f"<= {TARGET_DELAY}",
                "verdict": "PASS" if worst <= TARGET_DELAY else "MISS",
                "note": f"{name}: median {alert[f'{TARGET_SHIFT} median']} windows to ours' "
                f"first alert; alibi-detect's KSDrift: median "
                f"{alibi[f'{TARGET_SHIFT} median']}, mean {alibi[f'{TARGET_SHIFT} mean']}",
            }
        )
    return out


# --- report ----------------------------------------------------------------------------------


def _delay_cell(row: dict[str, Any], sc: str, max_delay: int) -> str:
    median, mean, missed = row[f"{sc} median"], row[f"{sc} mean"], row[f"{sc} missed"]
    med = f">{max_delay}" if median is None else f"{median:g}"
    text = f"{med} / {'≥' if missed else ''}{mean:g}"
    return text + (f" ({missed} missed)" if missed else "")


def print_report(report: dict[str, Any], plan: Plan) -> None:
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, MIN_PIPED_WIDTH)
    info = report["machine"]
    console.print(
        f"[bold]machine[/bold]  {info['cpu']}, {info['cores']} cores, Python {info['python']}, "
        f"numpy {info['numpy']}, scikit-learn {info['scikit-learn']}, "
        f"alibi-detect {info['alibi-detect']}"
    )
    console.print(
        f"[bold]streams[/bold]  reference {REFERENCE_SHARE:.0%} of each data set (seed {SEED}); "
        f"rows drawn with replacement from the whole set; false alarms per hour at "
        f"{ROWS_PER_S:g} rows/s; delays after {PRE_WINDOWS} unshifted windows, watching "
        f"{plan.max_delay} shifted windows"
    )
    grid = Table(
        title="false alarms on drift-free windows, and windows to the first firing after a shift "
        "(median / mean over trials)",
        title_justify="left",
    )
    for col in ("data set", "window", "detector", "false alarms", "per hour", "trials"):
        grid.add_column(col, justify="left" if col in ("data set", "detector") else "right")
    for sc in SCENARIOS:
        grid.add_column(sc.name, justify="right")
    rows = report["detectors"]
    for i, r in enumerate(rows):
        last = i + 1 == len(rows) or rows[i + 1]["window"] != r["window"]
        grid.add_row(
            r["dataset"],
            str(r["window"]),
            r["detector"],
            f"{r['false_alarm_rate']:.2%} of {r['drift_free_windows']}",
            f"{r['false_alarms_per_hour']:g}",
            str(r["trials"]),
            *[_delay_cell(r, sc.name, plan.max_delay) for sc in SCENARIOS],
            end_section=last,
        )
    console.print(grid)
    cost = Table(title="cost per window (median ms; informational)", title_justify="left")
    for col in report["cost"][0]:
        cost.add_column(col, justify="left" if col == "dataset" else "right")
    for r in report["cost"]:
        cost.add_row(*[str(v) for v in r.values()])
    console.print(cost)
    for t in report["targets"]:
        style = "green" if t["verdict"] == "PASS" else "red"
        console.print(
            f"{t['target']}: {t['subject']} = {t['value']} (limit {t['limit']}) -> "
            f"[bold {style}]{t['verdict']}[/bold {style}]; {t['note']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=help_line(__doc__))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="a few windows only (smoke run)")
    parser.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs: expected a whole number of processes >= 1, got {args.jobs}")
    plan = QUICK if args.quick else FULL
    datasets = list(DATASETS)
    started = time.monotonic()
    results = run_all(plan, datasets, args.jobs)
    rows = detector_rows(results, plan)
    report = {
        "bench": "drift",
        "machine": machine(
            **{"scikit-learn": sklearn.__version__, "alibi-detect": version("alibi-detect")}
        ),
        "setup": setup_rows(datasets),
        "detectors": rows,
        "cost": cost_rows(results),
        "targets": targets(rows, results, plan),
    }
    _progress(f"all done in {time.monotonic() - started:.0f} s")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
