"""Calibrating a classifier's confidence at conversion, so a device can estimate its accuracy.

Confidence-based performance estimation (CBPE, as NannyML calls it): on labeled rows the model
was not fit on, learn how often the model is right at each level of its confidence (its largest
class probability). On a device without labels, the mean of that probability over a window is
the window's expected accuracy, and it moves when the inputs move towards where the model is
less sure.

The map is histogram binning made monotone: the rows are cut into equal-mass bins of confidence
(at most MAX_BINS, at least ROWS_PER_BIN rows each), each bin's observed accuracy is taken, and
pool-adjacent-violators (PAV) pools neighbouring bins until accuracy never falls as confidence
rises; bins left with the same value merge, so the card carries only the steps. Pure numpy; the
applying side is `edge_agent.protocol.card.Calibration.expected`, which the device runs.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from edge_agent.errors import BadDataError
from edge_agent.protocol.card import Calibration, bucket_counts, confidence, quantile_edges

MAX_BINS = 20  # the card stays small; more bins than this buy little at a few hundred rows
ROWS_PER_BIN = 25  # each bin's accuracy is the mean of at least about this many rows


def pav(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted least-squares non-decreasing fit to `values` (pool adjacent violators)."""
    means: list[float] = []
    mass: list[float] = []
    sizes: list[int] = []
    for v, w in zip(values.tolist(), weights.tolist(), strict=True):
        means.append(v)
        mass.append(w)
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:  # pool the last two blocks
            w2 = mass[-2] + mass[-1]
            means[-2] = (means[-2] * mass[-2] + means[-1] * mass[-1]) / w2 if w2 else means[-1]
            mass[-2] = w2
            sizes[-2] += sizes[-1]
            del means[-1], mass[-1], sizes[-1]
    return np.repeat(np.asarray(means, dtype=np.float64), sizes)


def fit_calibration(
    scores: np.ndarray, correct: np.ndarray, reference_scores: np.ndarray
) -> Calibration:
    """The calibration of a classifier whose probabilities on labeled rows are `scores` and
    whose labels there were right where `correct`; its expected accuracy is taken over the
    rows whose probabilities are `reference_scores` (the card's drift reference rows)."""
    conf = confidence(scores).astype(np.float64)
    finite = np.isfinite(conf)
    conf, right = conf[finite], np.asarray(correct, dtype=np.float64)[finite]
    if len(conf) == 0:
        raise BadDataError(
            "calibration: expected at least one labeled row with finite probabilities, got none"
        )
    bins = int(np.clip(len(conf) // ROWS_PER_BIN, 1, MAX_BINS))
    edges = np.asarray(quantile_edges(conf, bins), dtype=np.float64)
    rows = bucket_counts(conf, edges)
    while (rows == 0).any():  # an edge on a value (a midpoint rounded onto it): drop it
        edges = np.delete(edges, min(int(np.argmin(rows)), len(edges) - 1))
        rows = bucket_counts(conf, edges)
    hits = np.bincount(np.searchsorted(edges, conf, side="left"), right, minlength=len(rows))
    fitted = pav(hits / rows, rows.astype(np.float64))
    keep = np.flatnonzero(np.diff(fitted) > 0)  # a step of the map: an edge worth keeping
    calibration = Calibration(
        edges=tuple(float(e) for e in edges[keep]),
        accuracy=tuple(float(a) for a in np.append(fitted[keep], fitted[-1])),
        expected_accuracy=0.0,
        rows=len(conf),
    )
    ref = np.asarray(reference_scores)
    ref = ref[np.isfinite(confidence(ref))] if len(ref) else ref
    expected = calibration.expected(ref) if len(ref) else fitted[np.searchsorted(edges, conf)]
    return replace(calibration, expected_accuracy=float(np.mean(expected)))
