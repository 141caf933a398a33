"""No-drift distributions of the drift statistics, as p-values (pure Python and numpy).

A drift decision is a hypothesis test: "the window was drawn from the distribution the card's
reference was drawn from". Each statistic's p-value comes from its distribution under that
hypothesis, for the actual window size, reference size and number of bins, so a level (say 1%)
means the same thing for a 50-row window with 10 bins as for a 1,000-row one with 3. All three
are two-sample tests: the reference is itself a sample, and its own noise is accounted for.

- `homogeneity`: Pearson's chi-square test of a 2 x k table (reference counts, live counts over
  the same bins), chi-square with k - 1 degrees of freedom under no drift. Adjacent bins are
  merged first (`merge_bins`) until each holds enough reference mass that the window expects
  at least MIN_EXPECTED values in it: a bin where the window expects half a value makes the
  chi-square tail far too light (a false alarm machine on discrete features).
- `ks_p`: the two-sample Kolmogorov-Smirnov statistic's asymptotic distribution with Stephens'
  small-sample correction (what `scipy.stats.ks_2samp` used in its asymptotic mode), on the
  effective size n*m/(n+m). On tied (discrete) data the test is conservative.
- `beyond_p`: exact chance that at least k of n new values fall above the largest (or below the
  smallest) of m reference values when all n + m are exchangeable: C(n, k) / C(n + m, k).
- `more_missing_p`: Fisher's exact one-sided test that the window has more missing rows than
  the reference's share (hypergeometric tail); the same test for more anomalous rows.

Many tests of one window form a family: `simes` gives the family's p-value (Simes 1986, the
test behind Benjamini-Hochberg), `bh_adjust` the per-test adjusted values (q), so the chance
that a drift-free window warns is the level whatever the number of features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

EPSILON = 1e-4  # the smallest bin share PSI uses (an empty bin would make it infinite)
MIN_EXPECTED = 5.0  # values a window should expect in every bin of the chi-square test
KS_TERMS = np.arange(1, 21, dtype=np.float64)  # past lambda 0.3 the 21st term is below 1e-70


def psi(reference_counts: np.ndarray, live_counts: np.ndarray) -> float:
    """Population stability index of two histograms over the same bins (an effect size)."""
    ref = np.asarray(reference_counts, dtype=np.float64)
    live = np.asarray(live_counts, dtype=np.float64)
    p = np.clip(ref / max(ref.sum(), 1.0), EPSILON, None)
    q = np.clip(live / max(live.sum(), 1.0), EPSILON, None)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(reference_counts: np.ndarray, live_counts: np.ndarray) -> float:
    """Jensen-Shannon distance (square root of the divergence, base 2) of two histograms."""
    ref = np.asarray(reference_counts, dtype=np.float64)
    live = np.asarray(live_counts, dtype=np.float64)
    if ref.sum() <= 0 or live.sum() <= 0:
        return 0.0
    p, q = ref / ref.sum(), live / live.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


def chi2_sf(x: np.ndarray, dof: np.ndarray) -> np.ndarray:
    """P(X >= x) for X chi-square with integer `dof` degrees of freedom (elementwise; dof 0
    gives 1). Exact closed forms of the regularized upper incomplete gamma Q(dof/2, x/2), with
    y = x/2: for even dof = 2a, e^-y * sum_{i<a} y^i / i!; for odd dof = 2a + 1,
    erfc(sqrt y) + e^-y * sum_{1<=i<=a} y^(i - 1/2) / Gamma(i + 1/2). Sums term by term."""
    y = np.maximum(np.asarray(x, dtype=np.float64), 0.0) / 2
    dof = np.asarray(dof, dtype=np.int64)
    out = np.ones(y.shape)
    even, odd = (dof > 0) & (dof % 2 == 0), dof % 2 == 1
    if even.any():
        ye, terms = y[even], dof[even] // 2
        term = np.exp(-ye)
        total = term.copy()
        for i in range(1, int(terms.max())):
            term = term * ye / i
            total += np.where(i < terms, term, 0.0)
        out[even] = total
    if odd.any():
        yo, terms = y[odd], dof[odd] // 2
        root = np.sqrt(yo)
        total = erfc(root)
        term = np.exp(-yo) * root / math.gamma(1.5)
        for i in range(1, int(terms.max()) + 1):
            total += np.where(i <= terms, term, 0.0)
            term = term * yo / (i + 0.5)
        out[odd] = total
    return np.clip(out, 0.0, 1.0)


ERFC_FIT = (  # Numerical Recipes' erfcc: erfc(x) = t * exp(-x^2 + sum_k c_k t^k), t = 1/(1 + x/2)
    -1.26551223,
    1.00002368,
    0.37409196,
    0.09678418,
    -0.18628806,
    0.27886807,
    -1.13520398,
    1.48851587,
    -0.82215223,
    0.17087277,
)


def erfc(x: np.ndarray) -> np.ndarray:
    """The complementary error function of x >= 0, to a relative error below 1.2e-7, vectorized
    (math.erfc is per element)."""
    t = 1.0 / (1.0 + 0.5 * x)
    acc = np.full(np.shape(x), ERFC_FIT[-1])
    for c in ERFC_FIT[-2::-1]:  # Horner
        acc = c + t * acc
    return t * np.exp(acc - x * x)


def merge_bins(ref_counts: np.ndarray, min_mass: float) -> np.ndarray:
    """Group labels for adjacent bins, merged left to right until each group holds at least
    `min_mass` of the reference (a short last group joins the one before it)."""
    ref = np.asarray(ref_counts, dtype=np.float64)
    total = ref.sum()
    groups = np.zeros(len(ref), dtype=np.int64)
    if total <= 0:
        return groups
    group, mass = 0, 0.0
    for i, c in enumerate(ref / total):
        groups[i] = group
        mass += c
        if mass >= min_mass:
            group, mass = group + 1, 0.0
    if mass < min_mass and group > 0:  # the leftover is too small: it joins the previous group
        groups[groups == group] = group - 1
    return groups


def homogeneity(
    ref_counts: np.ndarray, live_counts: np.ndarray, groups: np.ndarray | None = None
) -> tuple[float, int]:
    """Pearson's chi-square statistic of the 2 x k table and its degrees of freedom, over the
    bins merged by `groups` (labels 0..g-1, in runs, as `merge_bins` gives them; None: as they
    are). Empty columns do not count."""
    starts = None if groups is None else group_starts(groups)
    stats, dofs = homogeneity_rows(ref_counts, np.asarray(live_counts)[None], starts)
    return float(stats[0]), int(dofs[0])


def group_starts(groups: np.ndarray) -> np.ndarray:
    """Where each run of `merge_bins`' labels starts."""
    return np.flatnonzero(np.diff(groups, prepend=-1))


def homogeneity_rows(
    ref_counts: np.ndarray, live_rows: np.ndarray, starts: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`homogeneity` of several live histograms (rows) against one reference at once, the bins
    merged in the runs that start at `starts` (`group_starts`; None: as they are): the
    statistics and the degrees of freedom, per row."""
    ref = np.asarray(ref_counts, dtype=np.float64)
    live = np.asarray(live_rows, dtype=np.float64).reshape(-1, len(ref))
    if starts is not None and len(ref):  # a run's sums are reduceat's
        ref, live = np.add.reduceat(ref, starts), np.add.reduceat(live, starts, axis=1)
    m, n = ref.sum(), live.sum(axis=1)
    both = ref + live
    used = both > 0
    k = used.sum(axis=1)
    valid = (m > 0) & (n > 0) & (k >= 2)
    dofs = np.where(valid, k - 1, 0)
    with np.errstate(divide="ignore", invalid="ignore"):  # unused columns: 0 / 0, not summed
        terms = (live * m - ref * n[:, None]) ** 2 / both
    stats = np.zeros(len(live))
    full = valid & (k == live.shape[1])  # every column used (the reference fills each group)
    stats[full] = terms[full].sum(axis=1) / (n[full] * m)
    for i in np.flatnonzero(valid & ~full):  # the sum over the used columns alone
        stats[i] = np.sum(terms[i][used[i]]) / (n[i] * m)
    return stats, dofs


def homogeneity_p(
    ref_counts: np.ndarray, live_counts: np.ndarray, groups: np.ndarray | None = None
) -> float:
    """The p-value of `homogeneity`'s statistic (chi-square with its degrees of freedom)."""
    stat, dof = homogeneity(ref_counts, live_counts, groups)
    return float(chi2_sf(np.array([stat]), np.array([dof]))[0])


def ks_p(d: np.ndarray, n: np.ndarray, m: np.ndarray) -> np.ndarray:
    """P(D >= d) for the two-sample KS statistic of samples of n and m values (elementwise)."""
    d = np.asarray(d, dtype=np.float64)
    n, m = np.asarray(n, dtype=np.float64), np.asarray(m, dtype=np.float64)
    en = np.sqrt(np.where((n > 0) & (m > 0), n * m / np.maximum(n + m, 1.0), 0.0))
    lam = (en + 0.12 + 0.11 / np.maximum(en, 1e-12)) * d
    terms = 2 * (-1) ** (KS_TERMS - 1) * np.exp(-2 * np.outer(lam**2, KS_TERMS**2))
    q = terms.sum(axis=1).reshape(d.shape)
    # the alternating series is accurate above lambda ~ 0.3; below it the tail is 1
    return np.where((en == 0) | (lam < 0.3), 1.0, np.clip(q, 0.0, 1.0))


def _log_choose(n: float, k: float) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def beyond_p(k: int, n: int, m: int) -> float:
    """P(at least k of n new values lie above the largest of m reference values), all n + m
    exchangeable: the top k of the n + m are all new."""
    if k <= 0 or m <= 0:
        return 1.0
    if k > n:
        return 0.0
    return math.exp(_log_choose(n, k) - _log_choose(n + m, k))


def more_missing_p(k: int, n: int, r: int, m: int) -> float:
    """P(at least k missing rows among n) when k + r missing rows are spread at random over
    n live and m reference rows (Fisher's exact test, one-sided: more missing than before)."""
    total, missing = n + m, k + r
    if k <= 0 or n <= 0:
        return 1.0
    norm = _log_choose(total, missing)
    return min(
        1.0,
        sum(
            math.exp(_log_choose(n, i) + _log_choose(m, missing - i) - norm)
            for i in range(k, min(n, missing) + 1)
            if missing - i <= m
        ),
    )


def bh_adjust(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q): the smallest level at which each test would be
    among the discoveries. min(q) is the Simes p-value of the whole family. Of several families
    at once, one per row, along the last axis."""
    p = np.asarray(p, dtype=np.float64)
    if not p.size:
        return p
    k = p.shape[-1]
    rows = p.reshape(-1, k)
    order = np.argsort(rows, axis=1)
    at = np.arange(len(rows))[:, None], order
    scaled = rows[at] * k / np.arange(1, k + 1)
    q = np.minimum.accumulate(scaled[:, ::-1], axis=1)[:, ::-1]
    out = np.empty_like(rows)
    out[at] = np.minimum(q, 1.0)
    return out.reshape(p.shape)


def round_p(p: float) -> float:
    """A p-value kept to 3 significant digits (a tiny one stays distinguishable from zero)."""
    return float(f"{p:.3g}")


def simes(p: Sequence[float] | np.ndarray) -> float:
    """The family's p-value: min over i of p_(i) * K / i (1.0 for no tests)."""
    q = bh_adjust(p)
    return float(q.min()) if q.size else 1.0
