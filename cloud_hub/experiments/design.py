"""The statistics of an experiment: who is in which cohort, how many samples each cohort needs,
and the one comparison made once they are there. Plain values in, plain values out.

Cohorts. A device is in cohort A (the candidate model) when a hash of the experiment id and
its device id, read as a number u in [0, 1), is below the split, else in cohort B (the model
it is compared with): `assign`. Nothing else decides, so a device's cohort never changes, a
restarted hub computes the same, and a device that starts matching the target later is
assigned by the same rule.

Metrics. `accuracy` (labels that match the prediction), `agreement` (rows on which the model
agreed with the device's serving model, from shadow reports) and `error-rate` (rows the model
failed on, of the rows it handled) are proportions; `p95` is the inference-weighted mean of
the telemetry windows' p95 latency. Higher is better for accuracy and agreement, lower for
error-rate and p95.

Tests, at level 1 - alpha:
- a proportion: the Newcombe hybrid score interval (Wilson intervals of each cohort combined,
  Newcombe 1998, method 10) on the difference A - B; the two-proportion z-test's p-value is
  given beside it for reference;
- p95: a percentile bootstrap interval on the difference A - B, resampling each cohort's
  windows (`RESAMPLES` times, with the experiment's seed: the same data give the same
  interval).

The decision is made once (fixed horizon): when both cohorts hold the minimum sample size, the
better model wins if the interval excludes 0, else there is no difference. Looking at the
sample counts in between says nothing about the outcome, so the chance of naming a winner
between two equal models stays alpha.

Sample units are rows (inferences, labels, shadowed rows) for a proportion and windows for
p95, taken as independent; rows of one device resemble each other more than rows of two, so
with few devices the real uncertainty is larger than the interval says.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

import numpy as np

from edge_agent.errors import ConfigError
from edge_agent.protocol.frozen import frozen

A, B = "a", "b"  # cohort A runs the candidate, cohort B the model it is compared with
COHORTS = (A, B)
RATE, LATENCY = "rate", "latency"
RESAMPLES = 2000
_CHUNK = 250  # bootstrap resamples drawn at once (bounds the memory to _CHUNK x n)


@frozen
class Metric:
    name: str
    kind: str  # RATE or LATENCY
    higher_is_better: bool
    default_effect: float
    unit: str  # how --effect reads for it

    @property
    def better(self) -> str:
        return "higher" if self.higher_is_better else "lower"


METRICS = {
    m.name: m
    for m in (
        Metric("accuracy", RATE, True, 0.05, "a difference in accuracy (0.05 = 5 points)"),
        Metric("agreement", RATE, True, 0.05, "a difference in agreement (0.05 = 5 points)"),
        Metric("error-rate", RATE, False, 0.05, "a difference in error rate (0.05 = 5 points)"),
        Metric(
            "p95",
            LATENCY,
            False,
            0.5,
            "a standardized difference in p95 (Cohen's d: 0.5 = half the windows' standard "
            "deviation)",
        ),
    )
}


def metric(name: str) -> Metric:
    found = METRICS.get(name)
    if found is None:
        raise ConfigError(f"--metric: expected one of {', '.join(METRICS)}, got {name!r}")
    return found


# ---- cohorts --------------------------------------------------------------------------------
def unit_hash(experiment_id: str, device: str) -> float:
    """A number in [0, 1) from the experiment id and the device id (sha256)."""
    digest = hashlib.sha256(f"{experiment_id}\0{device}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def seed_of(experiment_id: str) -> int:
    """The bootstrap's seed: from the experiment id, so a restarted hub draws the same."""
    return int.from_bytes(hashlib.sha256(experiment_id.encode()).digest()[:4], "big")


def assign(experiment_id: str, device: str, split: float) -> str:
    """A (the candidate) when the device's hash is below `split` (the candidate's share), else B."""
    return A if unit_hash(experiment_id, device) < split else B


def balanced(counts: dict[str, int], split: float) -> bool:
    """Cohorts fit to start: both hold a device, and A holds about `split` of them: within half a
    binomial standard deviation of split x n, or as near as n devices allow (2 of 4 at 50%, 1
    of 3 at 10%). Only the experiment id is drawn again, never a device's rule."""
    n = counts[A] + counts[B]
    if counts[A] == 0 or counts[B] == 0:
        return False
    target = split * n
    nearest = (min(max(c, 1), n - 1) for c in (math.floor(target), math.ceil(target)))
    best = min(abs(c - target) for c in nearest)
    spread = max(best, math.sqrt(n * split * (1 - split)) / 2)
    return abs(counts[A] - target) <= spread + 1e-9


# ---- how many samples -----------------------------------------------------------------------
def _z(alpha: float, power: float) -> tuple[float, float]:
    unit = NormalDist()
    return unit.inv_cdf(1 - alpha / 2), unit.inv_cdf(power)


def check_design(effect: float, alpha: float, power: float) -> None:
    if not 0 < alpha < 0.5:
        raise ConfigError(f"--alpha: expected a number above 0 and below 0.5, got {alpha!r}")
    if not 0.5 < power < 1:
        raise ConfigError(f"--power: expected a number above 0.5 and below 1, got {power!r}")
    if not 0 < effect < math.inf:
        raise ConfigError(f"--effect: expected a number above 0, got {effect!r}")


def needed(m: Metric, effect: float, alpha: float, power: float) -> int:
    """The minimum sample size per cohort for a two-sided test at level alpha to find a true
    difference of `effect` with probability `power`.

    A proportion (rows): n = ceil((z_{1-alpha/2} + z_{power})^2 * (p1 q1 + p2 q2) / effect^2)
    with p1 q1 + p2 q2 at its largest, 1/2 (rates near 50%): n = ceil((z_{1-alpha/2} +
    z_{power})^2 / (2 effect^2)). 0.05 at alpha 0.05 and power 0.8 gives 1570, Cohen's (1988,
    table 6.4.1) value for h = 0.10, the same difference around 50%. Far from 50% it finds
    the difference with more than `power`.

    p95 (windows), `effect` a standardized difference d: n = ceil(2 (z_{1-alpha/2} +
    z_{power})^2 / d^2 + z_{1-alpha/2}^2 / 4) (the normal formula with Guenther's correction
    for an estimated variance): d = 0.5 gives 64, Cohen's table 2.4.1 value.
    """
    check_design(effect, alpha, power)
    za, zb = _z(alpha, power)
    if m.kind == RATE:
        if effect >= 1:
            raise ConfigError(f"--effect: expected a difference of rates below 1, got {effect!r}")
        return math.ceil((za + zb) ** 2 / (2 * effect**2) - 1e-9)
    return math.ceil(2 * (za + zb) ** 2 / effect**2 + za**2 / 4 - 1e-9)


# ---- samples --------------------------------------------------------------------------------
@frozen
class Rate:
    """A proportion: `successes` of `trials` (labels right, rows agreeing, rows failed)."""

    successes: int
    trials: int

    def __post_init__(self) -> None:
        if not 0 <= self.successes <= self.trials:
            raise ValueError(f"rate: expected 0 <= successes <= trials, got {self}")

    @property
    def n(self) -> int:
        return self.trials

    @property
    def value(self) -> float | None:
        return self.successes / self.trials if self.trials else None


@frozen
class Windows:
    """Latency windows: each window's p95 (ms) and the inferences it holds (its weight)."""

    p95: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()

    @property
    def n(self) -> int:
        return len(self.p95)

    @property
    def value(self) -> float | None:
        total = sum(self.weights)
        if not total:
            return None
        return float(sum(v * w for v, w in zip(self.p95, self.weights, strict=True)) / total)


Sample = Rate | Windows


@frozen
class Estimate:
    value: float | None
    low: float | None = None
    high: float | None = None


@frozen
class Comparison:
    """Each cohort's estimate with its interval, and the difference A - B with its interval."""

    a: Estimate
    b: Estimate
    difference: float
    low: float
    high: float
    method: str
    p_value: float | None = None  # the two-proportion z-test's, for reference

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def compare(m: Metric, a: Sample, b: Sample, alpha: float, seed: int) -> Comparison:
    """The stated test of the metric on the two cohorts' samples (both non-empty)."""
    if isinstance(a, Rate) and isinstance(b, Rate):
        return _compare_rates(a, b, alpha)
    if isinstance(a, Windows) and isinstance(b, Windows):
        return _bootstrap(a, b, alpha, seed)
    raise TypeError(f"{m.name}: expected two samples of one kind, got {a!r} and {b!r}")


def wilson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """The Wilson score interval of a proportion at level 1 - alpha."""
    z = NormalDist().inv_cdf(1 - alpha / 2)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = (
        z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    )
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the bounds
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def newcombe(a: Rate, b: Rate, alpha: float) -> tuple[float, float, float]:
    """The difference p_a - p_b and its Newcombe hybrid score interval at level 1 - alpha."""
    pa, pb = a.successes / a.trials, b.successes / b.trials
    la, ua = wilson(a.successes, a.trials, alpha)
    lb, ub = wilson(b.successes, b.trials, alpha)
    d = pa - pb
    low = d - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2)
    high = d + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)
    return d, low, high


def z_test(a: Rate, b: Rate) -> float:
    """The two-sided p-value of the pooled two-proportion z-test."""
    pooled = (a.successes + b.successes) / (a.trials + b.trials)
    se = math.sqrt(pooled * (1 - pooled) * (1 / a.trials + 1 / b.trials))
    if se == 0:
        return 1.0
    z = (a.successes / a.trials - b.successes / b.trials) / se
    return 2 * (1 - NormalDist().cdf(abs(z)))


def _compare_rates(a: Rate, b: Rate, alpha: float) -> Comparison:
    d, low, high = newcombe(a, b, alpha)
    level = f"{100 * (1 - alpha):g}%"
    return Comparison(
        Estimate(a.value, *wilson(a.successes, a.trials, alpha)),
        Estimate(b.value, *wilson(b.successes, b.trials, alpha)),
        d,
        low,
        high,
        f"Newcombe {level} interval on the difference of proportions (z-test p for reference)",
        z_test(a, b),
    )


def _bootstrap(a: Windows, b: Windows, alpha: float, seed: int) -> Comparison:
    rng = np.random.default_rng(seed)
    ma, mb = _resampled_means(a, rng), _resampled_means(b, rng)
    diffs = ma - mb
    q = (alpha / 2, 1 - alpha / 2)
    low, high = (float(x) for x in np.quantile(diffs, q))
    a_low, a_high = (float(x) for x in np.quantile(ma, q))
    b_low, b_high = (float(x) for x in np.quantile(mb, q))
    va, vb = a.value, b.value
    assert va is not None and vb is not None
    return Comparison(
        Estimate(va, a_low, a_high),
        Estimate(vb, b_low, b_high),
        va - vb,
        low,
        high,
        f"percentile bootstrap {100 * (1 - alpha):g}% interval on the difference of mean "
        f"window p95 ({RESAMPLES} resamples of the windows, seed {seed})",
    )


def _resampled_means(w: Windows, rng: np.random.Generator) -> np.ndarray:
    """RESAMPLES inference-weighted means of windows drawn with replacement."""
    values = np.asarray(w.p95, dtype=np.float64)
    weights = np.asarray(w.weights, dtype=np.float64)
    out = []
    for start in range(0, RESAMPLES, _CHUNK):
        idx = rng.integers(0, len(values), size=(min(_CHUNK, RESAMPLES - start), len(values)))
        wt = weights[idx]
        out.append((values[idx] * wt).sum(axis=1) / np.maximum(wt.sum(axis=1), 1e-300))
    return np.concatenate(out)


# ---- the decision ---------------------------------------------------------------------------
WINNER, NO_DIFFERENCE, UNDERPOWERED = "winner", "no-difference", "underpowered"


@frozen
class Decision:
    outcome: str  # WINNER, NO_DIFFERENCE or UNDERPOWERED
    winner: str | None  # the cohort, A or B
    text: str


def decide(m: Metric, c: Comparison, models: dict[str, str], alpha: float) -> Decision:
    """The better model wins when the interval on the difference excludes 0."""
    shown = _shown(m)
    values = f"{m.name} {shown(c.a.value)} vs {shown(c.b.value)}"
    level = f"{100 * (1 - alpha):g}%"
    interval = (
        f"difference {shown(c.difference)} ({level} interval {shown(c.low)} to {shown(c.high)})"
    )
    if not c.excludes_zero:
        return Decision(NO_DIFFERENCE, None, f"no difference: {values}, {interval} holds 0")
    a_higher = c.low > 0
    winner = A if a_higher == m.higher_is_better else B
    return Decision(WINNER, winner, f"{models[winner]} wins: {values}, {interval}")


def underpowered(n: Sequence[int], need: int) -> Decision:
    return Decision(UNDERPOWERED, None, f"no difference (underpowered: {min(n)} of {need})")


def _shown(m: Metric) -> Callable[[float | None], str]:
    def show(x: float | None) -> str:
        if x is None:
            return "-"
        return f"{x:.4g} ms" if m.kind == LATENCY else f"{x:.4f}"

    return show
