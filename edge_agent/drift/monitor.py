"""The drift monitor: windows of inputs (and predictions) in, one calibrated report per window.

A window accumulates counts, never rows (past a fixed staging buffer of STAGE_ROWS rows, so
counting costs a few numpy calls per STAGE_ROWS rows rather than per micro-batch): every staged
value is placed on the card's grid (`edge_agent.drift.layout`) and one `bincount` adds the batch
to the window. From those counts a report derives, per feature:

- ``psi``: population stability index over the card's quantile bins (an effect size, symmetric,
  bins floored at EPSILON), and ``js``, the Jensen-Shannon distance over the same bins,
- ``ks``: the two-sample Kolmogorov-Smirnov statistic against the card's sorted reference sample,
  exact for that sample (between two reference points the reference ECDF is flat and the
  window's is monotone, so the supremum is at a reference point or just before one),
- ``out_of_range``: share of the window's values below the card's min or above its max,
- ``missing``: share of rows rejected with that feature missing (`DriftMonitor.missing`),
- ``p_values``: how sure the window is that this feature moved: the p-value of the feature's
  three tests (chi-square over the bins, KS, values beyond the reference's range; see
  `edge_agent.drift.stats`), Bonferroni-combined,

A categorical feature (the card's `input.categories`) is tested as categories: its bins are its
categories and a last one for texts that are none of them (edge_agent.protocol.card.
category_edges), and its two tests are the chi-square of the window's category counts against
the reference's shares (rare categories merged as any sparse bins are) and the range test,
which here asks whether the window holds more texts the reference never saw (the unknown code
lies above every reference value) than chance allows; no KS (categories have no order). Its
``out_of_range`` is the share of such texts, and ``categories`` shows its window by text.

and for the model's output, ``prediction`` (PSI, JS and the chi-square p-value of the predicted
class shares, or of the binned predicted values for a regressor).

Next to it, for a classifier whose card carries a confidence calibration (card version 2, built
with labels), ``accuracy``: the accuracy the model's own confidences imply for the window without
any label (CBPE: each row's probability of being right, from the card's calibration, averaged),
the card's value on its reference rows and the change from it, with the window's scored rows and
the sum of those probabilities, which the hub adds up across windows and devices. It is None
for a regressor or a card without a calibration (the report's ``notes`` say why).

For an anomaly model (card task "anomaly"), its scores are profiled as a regressor's values are,
and ``anomaly`` holds the window's anomaly rate (rows whose score is above the card's threshold)
next to the reference's (the share of the card's reference rows above it), with the p-value of
Fisher's exact test that the rate rose (one-sided: fewer anomalies than before shows in the
score distribution's test). With the reference rate measured on the reference rows, not taken
from a nominal contamination, a drift-free stream flags as often as the reference did.

The decision is one test of the whole family (every feature, the predictions, the share of rows
with missing values, an anomaly model's anomaly rate): Simes' combination, so a drift-free window
warns with probability at most 1 / `warn_every` whatever the number of features. A small persistent
shift is caught by testing, at each window's close, the pooled counts of the last 1, 2 and 4
windows (SCALES, as alibi-detect's online detectors use several window sizes), with the family's
level split among them. By the renewal argument, the expected number of windows between two false
warnings of a drift-free stream is then at least `warn_every` (between two false alerts,
`alert_every`): the profile's "expected time between false alarms", counted in windows.

The report's ``p`` is that p-value, ``scale`` the number of windows pooled in the test that
decided, ``moved`` the features whose Benjamini-Hochberg adjusted value (``q``) is under the
warn level, and ``counts`` the window's per-bin counts, which the hub adds up across devices and
time (fleet drift). A window closes after `window` rows, or after `window_s` seconds if set.

With `min_interval_s` set (the agent's [drift] min_interval_s), a window takes at most `window`
rows per that many seconds (a token bucket holding one window's rows): a stream faster than that
is sampled across time (of each batch, the rows the bucket has room for, drawn at random) rather
than reported on hundreds of times a second, which would flood the uplink and the hub's store
with reports and spend more time testing than inferring. The rows left out are counted, and the
report's ``sampled_from`` says how many rows the window was drawn from. A sample of a stream is
tested as the stream would be: the levels hold, since each window is still `window` rows of it.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.drift.layout import Layout, categorical_features
from edge_agent.drift.stats import (
    EPSILON,
    MIN_EXPECTED,
    beyond_p,
    bh_adjust,
    chi2_sf,
    group_starts,
    homogeneity_rows,
    js_distance,
    ks_p,
    merge_bins,
    more_missing_p,
    psi,
    round_p,
)
from edge_agent.native import ks_gaps
from edge_agent.protocol.card import ModelCard, bucket_counts
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.records import (
    AccuracyEstimate,
    AnomalyRate,
    Capture,
    CategoryCounts,
    DriftLevels,
    DriftReport,
    PredictionDrift,
    WindowCounts,
)

MISSING_REASONS = ("field-count", "non-numeric", "non-finite")  # line rejects that lack a value
STAGE_ROWS = 256  # rows copied into a fixed buffer and counted together (not a row store)
SCALES = (1, 2, 4)  # windows pooled in the tests made at each window's close
FEATURE_TESTS = 3  # chi-square, KS, range: Bonferroni within a feature
CATEGORY_TESTS = 2  # a categorical feature's: chi-square over its categories, unseen texts
DEFAULT_WARN_EVERY = 100  # drift-free windows between false warnings, on average: 1%
DEFAULT_ALERT_EVERY = 10_000  # and between false alerts: 0.01%


@dataclass
class _Tally:
    """What the open window counted so far, per slot of the card's grid."""

    counts: np.ndarray  # per grid slot
    preds: np.ndarray  # per predicted class or bin
    missing: np.ndarray  # per feature: rows rejected with it missing
    rows: int = 0
    missing_rows: int = 0
    scored: int = 0  # rows whose class probabilities were seen
    right: float = 0.0  # the sum of their calibrated confidences: expected rows right
    judged: int = 0  # rows whose anomaly flag was seen (anomaly models)
    anomalies: int = 0  # rows of them flagged


@frozen
class _Measures:
    """One window, summarised for the tests: small, and additive (two windows' measures add
    up to their union's), so pooling the last windows is adding a few short arrays."""

    rows: int
    missing_rows: int
    missing: np.ndarray  # per feature: rows rejected with it missing
    preds: np.ndarray  # per predicted class or bin
    total: np.ndarray  # per feature: values counted
    live: np.ndarray  # per bin (all features' bins in a row): values in it
    le: np.ndarray  # per KS point (all features): values at or below it
    lt: np.ndarray  # per KS point: values below it
    below: np.ndarray  # per feature: values below the card's min
    above: np.ndarray  # per feature: values above the card's max
    scored: int  # rows whose class probabilities were seen
    right: float  # the sum of their calibrated confidences
    judged: int  # rows whose anomaly flag was seen
    anomalies: int  # rows of them flagged

    def __add__(self, other: _Measures) -> _Measures:
        return _Measures(*(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__))


@dataclass
class _Tests:
    """The p-values of one window (or pooled windows): per feature, and for the whole family."""

    ks: np.ndarray  # per feature: the KS statistic the test used
    feature: np.ndarray
    prediction: float | None
    missing: float
    anomaly: float | None  # an anomaly model's anomaly rate
    q: np.ndarray  # per feature, Benjamini-Hochberg adjusted over the family
    family: float  # the family's p-value (Simes): the smallest adjusted value


def levels(warn_every: float, alert_every: float) -> dict[str, float]:
    """The family p-values under which a window warns and alerts."""
    return {"warn": 1 / warn_every, "alert": 1 / alert_every}


def status_of(p: float, level: dict[str, float]) -> str:
    return "alert" if p < level["alert"] else "warn" if p < level["warn"] else "ok"


class DriftMonitor:
    """Accumulates windows of inputs (and predictions) and produces one report per window.

    `warn_every` and `alert_every` are the expected number of drift-free windows between two
    false warnings (alerts): the per-window levels are their inverses. A card's own fixed PSI
    thresholds (cards before sample-size calibration) are not used; the report says so.
    """

    def __init__(
        self,
        card: ModelCard,
        window: int = 200,
        window_s: float | None = None,
        warn_every: float = DEFAULT_WARN_EVERY,
        alert_every: float = DEFAULT_ALERT_EVERY,
        capture: int = 0,
        min_interval_s: float | None = None,
    ) -> None:
        if not 1 < warn_every < alert_every:
            raise ValueError(
                f"expected 1 < warn_every < alert_every, got {warn_every}, {alert_every}"
            )
        self.card = card
        self.capture = capture  # rows of an alerting window sent along with its report
        self.window = window
        self.window_s = window_s
        # the rate floor: rows a second a window may take, and the rows it may take now
        self._rate = window / min_interval_s if min_interval_s else None
        self._tokens = float(window)
        self._last = -math.inf  # when the bucket was last filled (monotonic seconds)
        self._rejects: list[int | None] = []  # missing-value rows waiting for the next batch
        self._pick = random.Random(0)  # which of the rows offered the window takes
        self.warn_every, self.alert_every = warn_every, alert_every
        self.levels = levels(warn_every, alert_every)
        self._layout = Layout.of(card, window)
        # the reference's side of the chi-square tests: rows per feature, and per merged bin
        self._ref_m = self._layout.ref_rows.astype(np.float64)
        self._ref_mg = self._ref_m[self._layout.group_feature]
        self._ref_groups = np.add.reduceat(self._layout.bin_ref, self._layout.group_starts)
        self._names = card.feature_names
        self._categorical = categorical_features(card)
        self._feature_tests = np.where(self._categorical, CATEGORY_TESTS, FEATURE_TESTS)
        self._pred_kind, self._pred_keys, self._pred_ref = _prediction_reference(card)
        self._pred_starts = group_starts(merge_bins(self._pred_ref, MIN_EXPECTED / max(window, 1)))
        self._ref_rows, self._ref_missing = _reference_rows(card)
        self._notes = _notes(card)
        self._history: deque[_Measures] = deque(maxlen=max(SCALES) - 1)
        self._ready: deque[dict[str, Any]] = deque()
        self._stage = np.empty((STAGE_ROWS, card.n_features), dtype=np.float64)
        self._staged = 0
        self._stage_preds: list[np.ndarray] = []
        self._stage_scores: list[np.ndarray] = []
        self._calibration = card.confidence if card.task == "classification" else None
        self._anomaly = card.anomaly
        # the reference's anomalies: its rate on its rows, as a count
        self._ref_anomalies = round(card.anomaly.rate * self._ref_rows) if card.anomaly else 0
        self._reset(None)

    def _reset(self, now: float | None) -> None:
        self._tally = _Tally(
            np.zeros(2 * len(self._layout.grid) + 1, dtype=np.int64),
            np.zeros(len(self._pred_ref), dtype=np.int64),
            np.zeros(self.card.n_features, dtype=np.int64),
        )
        self._rows = 0  # rows of this window, staged or counted
        self._seen = 0  # rows offered while it was open, sampled or not (the rate floor)
        self._recent = np.empty((0, self.card.n_features), dtype=np.float64)
        self._started = now

    # ---- feeding --------------------------------------------------------------------------
    @property
    def wants_scores(self) -> bool:
        """Whether class probabilities passed to `add` are used (the card has a calibration)."""
        return self._calibration is not None

    def add(
        self,
        x: np.ndarray,
        predictions: np.ndarray | None = None,
        scores: np.ndarray | None = None,
        now: float | None = None,
    ) -> dict[str, Any] | None:
        """Add a batch of valid rows (and the model's predictions and, for the accuracy
        estimate, class probabilities for them); returns a report when a window completes. A
        batch that straddles two windows is split, so each count window covers exactly
        `window` rows. `now` (monotonic seconds) drives time windows and the rate floor."""
        if self._rate is not None:
            now = time.monotonic() if now is None else now
            if now > self._last:  # (a `now` from the past adds nothing)
                self._tokens = min(self._tokens + (now - self._last) * self._rate, self.window)
                self._last = now
            if self._tokens >= 1:
                x, predictions, scores = self._sample(x, predictions, scores)
            else:  # no room: a fast stream's common case, kept short
                self._seen += len(x) + len(self._rejects)
                self._rejects.clear()
                if self.window_s is None:
                    return self._ready.popleft() if self._ready else None
                x, predictions, scores = x[:0], None, None
        n, staged = len(x), self._staged
        if self.window_s is None and n + staged < STAGE_ROWS and self._rows + n < self.window:
            self._stage[staged : staged + n] = x  # the common case: stage it, nothing else
            if predictions is not None:
                self._stage_preds.append(predictions)
            if scores is not None:
                self._stage_scores.append(scores)
            self._staged += n
            self._rows += n
            return self._ready.popleft() if self._ready else None
        now = time.monotonic() if now is None else now
        if self._started is None:
            self._started = now
        start = 0
        while start < n:
            take = min(n - start, self.window - self._rows, STAGE_ROWS - self._staged)
            self._stage[self._staged : self._staged + take] = x[start : start + take]
            if predictions is not None:
                self._stage_preds.append(predictions[start : start + take])
            if scores is not None:
                self._stage_scores.append(scores[start : start + take])
            self._staged += take
            self._rows += take
            start += take
            if self._staged == STAGE_ROWS:
                self._flush_stage()
            if self._rows >= self.window:
                self._close(now)
        if self.window_s is not None and self._rows and now - self._started >= self.window_s:
            self._close(now)
        return self._ready.popleft() if self._ready else None

    def _sample(
        self, x: np.ndarray, predictions: np.ndarray | None, scores: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The rate floor, with the bucket holding at least one row: of the batch's rows and
        the missing-value rows rejected since the last batch, as many as it has room for,
        drawn at random (a reject and a valid row are equally likely to be taken, whatever
        order they came in, so the window's missing share is the stream's); the rejects taken
        are counted here, the rows taken returned."""
        rejects, self._rejects = self._rejects, []
        offered = len(rejects) + len(x)
        take = min(offered, int(self._tokens))
        self._tokens -= take
        self._seen += offered
        if take == offered:
            for feature in rejects:
                self._count_missing(feature)
            return x, predictions, scores
        picked = sorted(self._pick.sample(range(offered), take))
        for i in picked[: bisect.bisect_left(picked, len(rejects))]:
            self._count_missing(rejects[i])
        rows = np.array([i - len(rejects) for i in picked if i >= len(rejects)], dtype=np.intp)
        return (
            x[rows],
            None if predictions is None else predictions[rows],
            None if scores is None else scores[rows],
        )

    def missing(self, feature_index: int | None = None) -> None:
        """One row rejected because a value was missing (empty, NaN, not a number); with the
        feature's index when the parser knows it. Counted into the current window (under the
        rate floor, with the next batch's rows, as one of them)."""
        if self._rate is None:
            self._count_missing(feature_index)
            return
        self._rejects.append(feature_index)
        if len(self._rejects) >= STAGE_ROWS:  # a stream of rejects alone: judged now
            self.add(np.empty((0, self.card.n_features)))

    def _count_missing(self, feature_index: int | None) -> None:
        self._tally.missing_rows += 1
        if feature_index is not None and 0 <= feature_index < self.card.n_features:
            self._tally.missing[feature_index] += 1

    def _flush_stage(self) -> None:
        """Count the staged rows (a few numpy calls for up to STAGE_ROWS rows at once)."""
        if self._staged:
            rows = self._stage[: self._staged]
            preds = np.concatenate(self._stage_preds) if self._stage_preds else None
            scores = np.concatenate(self._stage_scores) if self._stage_scores else None
            self._accumulate(rows, preds, scores)
            if self.capture:  # the window's latest rows, bounded
                self._recent = np.concatenate([self._recent, rows])[-self.capture :]
        self._staged = 0
        self._stage_preds = []
        self._stage_scores = []

    def _accumulate(
        self, x: np.ndarray, predictions: np.ndarray | None, scores: np.ndarray | None = None
    ) -> None:
        if not len(x):
            return
        if scores is not None and self._calibration is not None and len(scores):
            self._tally.scored += len(scores)
            self._tally.right += float(self._calibration.expected(scores).sum())
        x = np.ascontiguousarray(x, dtype=np.float64)
        self._layout.add(x, self._tally.counts)
        if not np.isfinite(x).all():  # a NaN here is a missing value that slipped through
            self._tally.missing += (~np.isfinite(x)).sum(axis=0)
        if predictions is not None and len(self._pred_ref):
            self._tally.preds += self._prediction_counts(np.asarray(predictions))
        if predictions is not None and self._anomaly is not None:
            self._tally.judged += len(predictions)
            self._tally.anomalies += int(np.count_nonzero(self._anomaly.flags(predictions)))

    def _prediction_counts(self, predictions: np.ndarray) -> np.ndarray:
        if self._pred_kind == "classes":
            labels, n = np.unique(predictions.ravel(), return_counts=True)
            out = np.zeros(len(self._pred_ref), dtype=np.int64)
            for label, c in zip(labels.tolist(), n.tolist(), strict=True):
                i = self._pred_keys.get(str(label))
                if i is not None:
                    out[i] += c
            return out
        return bucket_counts(predictions.ravel().astype(np.float64), self._pred_keys["edges"])

    def _close(self, now: float) -> None:
        self._flush_stage()
        self._tally.rows = self._rows
        window = self._measure(self._tally)
        report = self._summarise(window, list(self._history))
        if self._seen > window.rows + window.missing_rows:
            report = dataclasses.replace(report, sampled_from=self._seen)
        if self.capture and report.status == "alert":
            rows = tuple(map(tuple, self._recent.tolist()))
            report = dataclasses.replace(report, capture=Capture(tuple(self._names), rows))
        self._ready.append(report.to_body())
        self._history.append(window)
        self._reset(now)

    # ---- reporting ------------------------------------------------------------------------
    def report(
        self,
        data: np.ndarray,
        predictions: np.ndarray | None = None,
        scores: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """The report of exactly these rows, as a window of their own with no history (the
        monitor's own window is left alone)."""
        other = DriftMonitor(
            self.card, max(len(data), 1), warn_every=self.warn_every, alert_every=self.alert_every
        )
        other._accumulate(data, predictions, scores)
        other._tally.rows = len(data)
        return other._summarise(other._measure(other._tally), []).to_body()

    def _summarise(self, now: _Measures, history: list[_Measures]) -> DriftReport:
        names = self._names
        windows = {1: now}
        pooled = now
        for s in range(2, max(SCALES) + 1):  # the last s windows' measures, added up
            if s - 1 > len(history):
                break
            pooled = pooled + history[-(s - 1)]
            if s in SCALES:
                windows[s] = pooled
        tests = dict(zip(windows, self._tests_of(list(windows.values())), strict=True))
        scale = min(tests, key=lambda s: tests[s].family)
        decided = tests[scale]
        p = min(1.0, len(SCALES) * decided.family)
        q = np.minimum(len(SCALES) * decided.q, 1.0)
        status = status_of(p, self.levels)
        order = np.lexsort((np.arange(len(names)), decided.feature))
        moved = [names[j] for j in order if q[j] < self.levels["warn"]]

        def named(values: np.ndarray, digits: int = 4) -> dict[str, float]:
            return dict(zip(names, np.round(values, digits).tolist(), strict=True))

        def rounded(p: np.ndarray) -> dict[str, float]:
            return {n: round_p(v) for n, v in zip(names, p.tolist(), strict=True)}

        effects = self._effects(now)
        psi_d = named(effects["psi"])
        worst = names[int(order[0])]
        prediction = self._prediction_drift(now.preds, tests[1].prediction)
        return DriftReport(
            model=self.card.model,
            window=now.rows,
            status=status,
            p=round_p(p),
            scale=scale,
            levels=DriftLevels(self.levels["warn"], self.levels["alert"]),
            psi=psi_d,
            max_psi=max(psi_d.values()),
            worst_feature=worst,
            p_values=rounded(tests[1].feature),
            q=rounded(q),
            ks=named(tests[1].ks),
            js=named(effects["js"]),
            out_of_range=named((now.below + now.above) / np.maximum(now.total, 1.0)),
            missing=named(now.missing / max(now.rows + now.missing_rows, 1)),
            missing_rows=now.missing_rows,
            prediction=prediction,
            accuracy=self._accuracy(now),
            anomaly=self._anomaly_rate(now, tests[1].anomaly),
            moved=tuple(moved),
            counts=WindowCounts(
                now.rows, {n: tuple(b) for n, b in zip(names, effects["bins"], strict=True)}
            ),
            notes=self._notes,
            categories=self._category_counts(effects["bins"]),
        )

    def _category_counts(self, bins: list[list[int]]) -> dict[str, CategoryCounts]:
        """Each categorical feature's window by its texts (its bins are its categories, the
        last one the unknown texts)."""
        cats = self.card.input.categories
        return {
            name: CategoryCounts(
                {text: n for text, n in zip(cats[name], counts, strict=False) if n},
                counts[-1],
            )
            for name, counts, categorical in zip(self._names, bins, self._categorical, strict=True)
            if categorical
        }

    def _measure(self, tally: _Tally) -> _Measures:
        """The window's measures, from its counts per slot (one cumulative sum)."""
        lay = self._layout
        cum = np.concatenate([[0], np.cumsum(tally.counts)])  # cum[s] = values in slots < s
        first = cum[lay.start][lay.ks_feature]
        return _Measures(
            rows=tally.rows,
            missing_rows=tally.missing_rows,
            missing=tally.missing,
            preds=tally.preds,
            total=cum[lay.end] - cum[lay.start],
            live=cum[lay.bin_hi] - cum[lay.bin_lo],
            le=cum[2 * lay.ks_at + 2] - first,
            lt=cum[2 * lay.ks_at + 1] - first,
            below=cum[2 * lay.min_at + 1] - cum[lay.start],
            above=cum[lay.end] - cum[2 * lay.max_at + 2],
            scored=tally.scored,
            right=tally.right,
            judged=tally.judged,
            anomalies=tally.anomalies,
        )

    def _ks(self, k: np.ndarray, le: np.ndarray, lt: np.ndarray) -> np.ndarray:
        """Per window and feature: the KS statistic, the largest ECDF gap at a reference point
        or just before one. `k`: (windows, features) values counted; `le`, `lt`: (windows, KS
        points) values at or below, and below, each point."""
        lay = self._layout
        if ks_gaps is not None:  # edge_agent.native: the same loop in C
            kss = np.empty_like(k)
            ks_gaps(le, lt, np.maximum(k, 1.0), lay.ks_le, lay.ks_lt, lay.ks_starts, kss)
        else:
            total = np.maximum(k, 1.0)[:, lay.ks_feature]
            gaps = np.maximum(np.abs(lay.ks_le - le / total), np.abs(lay.ks_lt - lt / total))
            # each feature's points are contiguous: one reduceat (no points: 0, zeroed below)
            padded = np.concatenate([gaps, np.zeros((len(k), 1))], axis=1)
            kss = np.maximum.reduceat(padded, lay.ks_starts, axis=1)
        kss[(k == 0) | lay.ks_none] = 0.0
        return kss

    def _effects(self, now: _Measures) -> dict[str, Any]:
        """Effect sizes for the report, per feature over the card's bins: PSI, JS, the counts."""
        lay, n = self._layout, self.card.n_features
        ref_total = np.bincount(lay.bin_feature, lay.bin_ref, minlength=n)
        p = lay.bin_ref / np.maximum(ref_total, 1.0)[lay.bin_feature]
        q = now.live / np.maximum(now.total, 1.0)[lay.bin_feature]
        pc, qc = np.maximum(p, EPSILON), np.maximum(q, EPSILON)
        psis = np.bincount(lay.bin_feature, (qc - pc) * np.log(qc / pc), minlength=n)
        m = (p + q) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(p > 0, p * np.log2(p / m), 0.0) + np.where(q > 0, q * np.log2(q / m), 0.0)
        jss = np.sqrt(np.maximum(np.bincount(lay.bin_feature, kl, minlength=n) / 2, 0.0))
        jss[(now.total == 0) | (ref_total == 0)] = 0.0
        live = now.live.astype(np.int64).tolist()
        bins = [live[a:b] for a, b in zip(lay.feature_bins[:-1], lay.feature_bins[1:], strict=True)]
        return {"psi": psis, "js": jss, "bins": bins}

    def _tests(self, now: _Measures) -> _Tests:
        return self._tests_of([now])[0]

    def _tests_of(self, windows: list[_Measures]) -> list[_Tests]:
        """The tests of each of `windows` (a window and its pooled ones), all windows at once:
        their counts stacked as rows, each statistic one array operation, then each
        distribution's p-values in one call (`chi2_sf` and `ks_p` are elementwise: a value is
        the one a call of its own would give)."""
        lay, n, w = self._layout, self.card.n_features, len(windows)
        m, mg, ref = self._ref_m, self._ref_mg, self._ref_groups
        k = np.array([now.total for now in windows], dtype=np.float64)  # (windows, features)
        # chi-square over the merged bins, per window and feature at once (bins, groups and
        # features are in order: sums over them are reduceat's)
        live = np.add.reduceat(np.array([now.live for now in windows]), lay.group_starts, axis=1)
        kg = k[:, lay.group_feature]
        both = ref + live
        used = both > 0
        terms = np.where(used, (live * mg - ref * kg) ** 2 / np.where(used, both, 1.0), 0.0)
        chis = np.add.reduceat(terms, lay.feature_groups, axis=1) / np.maximum(k * m, 1.0)
        dofs = np.add.reduceat(used.astype(np.int64), lay.feature_groups, axis=1) - 1
        dofs[(k == 0) | (m == 0)] = 0
        le, lt = np.array([now.le for now in windows]), np.array([now.lt for now in windows])
        kss = self._ks(k, le, lt)
        ks_d = np.maximum(kss - lay.ks_slack, 0.0)
        p_ranges = np.ones((w, n))
        for i, now in enumerate(windows):
            for j in np.flatnonzero(now.below + now.above):
                kj, mj = int(k[i, j]), int(m[j])
                tail = min(beyond_p(int(now.below[j]), kj, mj), beyond_p(int(now.above[j]), kj, mj))
                p_ranges[i, j] = min(1.0, 2 * tail)
        # the predictions' statistics, of the windows that predicted
        predicted = [i for i, now in enumerate(windows) if len(self._pred_ref) and now.preds.sum()]
        pred_stats, pred_dofs = homogeneity_rows(
            self._pred_ref, np.array([windows[i].preds for i in predicted]), self._pred_starts
        )
        # one chi-square call: every window's features, then the predictions' statistics
        p_chi = chi2_sf(
            np.concatenate([chis.ravel(), pred_stats[: len(predicted)]]),
            np.concatenate([dofs.ravel(), pred_dofs[: len(predicted)]]),
        )
        p_ks = ks_p(ks_d, k, np.broadcast_to(m, k.shape))
        p_pred = dict(zip(predicted, p_chi[n * w :].tolist(), strict=True))
        features = np.minimum(
            self._feature_tests
            * np.minimum(np.minimum(p_chi[: n * w].reshape(w, n), p_ks), p_ranges),
            1.0,
        )
        features[k == 0] = 1.0
        extras = []  # per window: its tests beyond the features' (family members too)
        for i, now in enumerate(windows):
            seen = now.rows + now.missing_rows
            missing = more_missing_p(now.missing_rows, seen, self._ref_missing, self._ref_rows)
            anomaly = None
            if self._anomaly is not None and now.judged:
                anomaly = more_missing_p(
                    now.anomalies, now.judged, self._ref_anomalies, self._ref_rows
                )
            extras.append((p_pred.get(i), missing, anomaly))
        families = [
            [p for p in extra if p is not None] for extra in extras
        ]  # Benjamini-Hochberg over each family: at once when they are alike
        adjusted: list[np.ndarray] | np.ndarray
        if len({len(f) for f in families}) == 1:
            adjusted = bh_adjust(np.concatenate([features, np.array(families)], axis=1))
        else:
            adjusted = [bh_adjust(np.concatenate([features[i], f])) for i, f in enumerate(families)]
        return [
            _Tests(kss[i], features[i], *extras[i], adjusted[i][:n], float(np.min(adjusted[i])))
            for i in range(w)
        ]

    def _accuracy(self, now: _Measures) -> AccuracyEstimate | None:
        """The window's expected accuracy from its calibrated confidences (None without a
        calibration or without scored rows)."""
        calibration = self._calibration
        if calibration is None or not now.scored:
            return None
        expected = now.right / now.scored
        return AccuracyEstimate(
            expected=round(expected, 4),
            reference=round(calibration.expected_accuracy, 4),
            change=round(expected - calibration.expected_accuracy, 4),
            rows=now.scored,
            sum=round(now.right, 4),
        )

    def _anomaly_rate(self, now: _Measures, p: float | None) -> AnomalyRate | None:
        """The window's anomaly rate next to the reference's (None but for an anomaly model
        that saw rows)."""
        if self._anomaly is None or p is None or not now.judged:
            return None
        return AnomalyRate(
            rows=now.judged,
            anomalies=now.anomalies,
            rate=round(now.anomalies / now.judged, 4),
            reference=round(self._anomaly.rate, 4),
            p=round_p(p),
        )

    def _prediction_drift(self, preds: np.ndarray, p: float | None) -> PredictionDrift | None:
        if p is None:
            return None
        labels = list(self._pred_keys) if self._pred_kind == "classes" else list(range(len(preds)))
        return PredictionDrift(
            psi=round(psi(self._pred_ref, preds), 4),
            js=round(js_distance(self._pred_ref, preds), 4),
            p=round_p(p),
            counts={str(k): int(n) for k, n in zip(labels, preds.tolist(), strict=True)},
        )


def _reference_rows(card: ModelCard) -> tuple[int, int]:
    """(rows in the card's reference, rows of them with a value missing: an upper bound, so the
    missing-rows test errs on the quiet side)."""
    rows = card.raw.get("reference", {}).get("rows")
    if not isinstance(rows, int) or isinstance(rows, bool) or rows <= 0:
        rows = max((sum(f.counts) for f in card.features), default=0)
    missing = sum(math.ceil(f.missing_rate * rows) for f in card.features)
    return rows, min(missing, rows)


def _notes(card: ModelCard) -> tuple[str, ...]:
    """What a report should say about a card that predates sample-size calibration."""
    notes = []
    if card.thresholds:
        fixed = ", ".join(f"{k} {v:g}" for k, v in sorted(card.thresholds.items()))
        notes.append(
            f"the card's fixed drift thresholds ({fixed}) are not used: levels follow the "
            "window and reference sizes"
        )
    categorical = categorical_features(card)
    if any(not f.ks and not c for f, c in zip(card.features, categorical, strict=True)):
        notes.append("the card has no KS reference sample: KS is measured at its bin edges only")
    if card.task == "classification" and card.confidence is None:
        why = (
            f"card version {card.version} predates confidence calibration"
            if card.version < 2
            else "the card has no confidence calibration (built without true labels, or the "
            "model gives no class probabilities)"
        )
        notes.append(f"no accuracy estimate: {why}")
    return tuple(notes)


def _prediction_reference(card: ModelCard) -> tuple[str, dict[str, Any], np.ndarray]:
    """('classes', {label: index}, counts) or ('bins', {'edges': edges}, counts); empty counts
    when the card has no usable prediction profile."""
    ref = np.asarray(card.prediction_counts, dtype=np.int64)
    if card.task == "classification":
        if len(card.classes) != len(ref):
            return "classes", {}, np.zeros(0, dtype=np.int64)
        return "classes", {str(c): i for i, c in enumerate(card.classes)}, ref
    preds = card.raw.get("reference", {}).get("predictions", {})
    edges = preds.get("edges") if isinstance(preds, dict) else None
    if not isinstance(edges, list) or len(edges) + 1 != len(ref):
        return "bins", {"edges": []}, np.zeros(0, dtype=np.int64)
    return "bins", {"edges": np.asarray(edges, dtype=np.float64)}, ref
