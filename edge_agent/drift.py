"""Drift monitors against the model card's reference profile (pure numpy, no row storage).

A window accumulates counts, never rows (past a fixed staging buffer of STAGE_ROWS rows, so
counting costs a few numpy calls per STAGE_ROWS rows rather than per micro-batch): every
staged value is placed on one sorted grid that holds, for every feature, its PSI bin edges,
its KS reference points and its min and max, with a -inf and a +inf sentinel around each
feature. Grid keys are complex numbers (real part = feature index, imaginary part = value),
which numpy orders lexicographically, so one `searchsorted` places every value of every
feature at once (an equality test against the point found tells "on it" from "below it") and
one `bincount` adds the batch to the window. Values that are all float32 (what the pipeline
feeds) take the same path on int64 keys instead, which numpy compares several times faster
than complex ones; `_Keys32` says why the two give the same slots. From those counts a report
derives, per feature:

- ``psi``: population stability index over the card's quantile bins (symmetric, bins floored
  at EPSILON),
- ``js``: Jensen-Shannon distance (base 2, in [0, 1]) over the same bins,
- ``ks``: the two-sample Kolmogorov-Smirnov statistic against the card's sorted reference
  sample; exact (what `scipy.stats.ks_2samp` gives for that sample and the window's rows),
  because between two reference points the reference ECDF is flat and the window's ECDF is
  monotone, so the supremum is reached at a reference point or just before one. Cards built
  before the sample existed fall back to their bin edges (a lower bound),
- ``out_of_range``: share of the window's values below the card's min or above its max,
- ``missing``: share of rows rejected with that feature missing (`DriftMonitor.missing`),

and for the model's output, ``prediction`` (PSI and JS of the predicted class shares, or of the
binned predicted values for a regressor). ``moved`` lists the features past a warn threshold.
A window closes after `window` rows, or after `window_s` seconds if set (whichever comes first).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.protocol.card import ModelCard, bucket_counts

EPSILON = 1e-4
MISSING_REASONS = ("field-count", "non-numeric", "non-finite")  # line rejects that lack a value
STAGE_ROWS = 256  # rows copied into a fixed buffer and counted together (not a row store)
DEFAULT_THRESHOLDS = {"psi_warn": 0.1, "psi_alert": 0.25}


def psi(reference_counts: np.ndarray, live_counts: np.ndarray) -> float:
    """Population stability index of two histograms over the same bins."""
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


def classify(value: float, warn: float, alert: float) -> str:
    return "alert" if value >= alert else "warn" if value >= warn else "ok"


_RANK = {"ok": 0, "warn": 1, "alert": 2}


@dataclass(frozen=True)
class _Layout:
    """Where every count a report needs sits on the combined grid, as flat index arrays (one
    entry per bin or per KS point, with the feature it belongs to), so a report is a handful
    of vectorized operations whatever the number of features.

    A value equal to grid point k lands in slot 2k+1, one strictly between points k-1 and k in
    slot 2k. With `cum[s]` = values in slots below s: values of a feature at most point k are
    cum[2k+2] - cum[start], below it cum[2k+1] - cum[start], where start = 2*lo+2 is the
    feature's first slot after its -inf sentinel."""

    grid: np.ndarray  # complex128, sorted: feature + 1j * value
    start: np.ndarray  # per feature: its first slot
    end: np.ndarray  # per feature: one past its last slot
    bin_feature: np.ndarray  # per PSI bin (all features): the feature
    bin_lo: np.ndarray  # per PSI bin: cum index of its lower end
    bin_hi: np.ndarray  # per PSI bin: cum index of its upper end
    bin_ref: np.ndarray  # per PSI bin: the reference count
    ks_feature: np.ndarray  # per KS point (all features): the feature
    ks_at: np.ndarray  # per KS point: its grid index
    ks_le: np.ndarray  # per KS point: reference ECDF at it
    ks_lt: np.ndarray  # per KS point: reference ECDF just before it
    min_at: np.ndarray  # per feature: grid index of the card's min
    max_at: np.ndarray  # per feature: grid index of the card's max
    keys32: np.ndarray  # int64, the grid as `_Keys32` places float32 values on it

    @classmethod
    def of(cls, card: ModelCard) -> _Layout:
        keys: list[np.ndarray] = []
        parts: dict[str, list[Any]] = {
            k: [] for k in cls.__dataclass_fields__ if k not in ("grid", "keys32")
        }
        offset = 0
        for j, f in enumerate(card.features):
            if f.ks:
                sample = np.asarray(f.ks, dtype=np.float64)
                points = np.unique(sample)
                le = np.searchsorted(sample, points, "right") / sample.size
                lt = np.searchsorted(sample, points, "left") / sample.size
            else:  # an older card: the ECDF is known at the bin edges only
                points = np.asarray(f.edges, dtype=np.float64)
                le = lt = np.cumsum(f.counts)[: len(points)] / max(sum(f.counts), 1)
            edges = np.asarray(f.edges, dtype=np.float64)
            values = np.unique(np.concatenate([points, edges, [f.min, f.max, -np.inf, np.inf]]))
            key = np.empty(len(values), dtype=np.complex128)
            key.real, key.imag = j, values  # not j + 1j * values: 1j * inf has a NaN real part
            keys.append(key)
            start, end = 2 * offset + 2, 2 * (offset + len(values) - 1) + 1
            bounds = np.concatenate(
                [[start], 2 * (offset + np.searchsorted(values, edges)) + 2, [end]]
            )
            parts["start"].append([start])
            parts["end"].append([end])
            parts["bin_feature"].append(np.full(len(edges) + 1, j))
            parts["bin_lo"].append(bounds[:-1])
            parts["bin_hi"].append(bounds[1:])
            parts["bin_ref"].append(np.asarray(f.counts, dtype=np.float64))
            parts["ks_feature"].append(np.full(len(points), j))
            parts["ks_at"].append(offset + np.searchsorted(values, points))
            parts["ks_le"].append(le)
            parts["ks_lt"].append(lt)
            parts["min_at"].append([offset + np.searchsorted(values, f.min)])
            parts["max_at"].append([offset + np.searchsorted(values, f.max)])
            offset += len(values)
        flat = {k: np.concatenate([np.asarray(v) for v in vs]) for k, vs in parts.items()}
        grid = np.concatenate(keys)
        return cls(grid=grid, keys32=_Keys32.of_grid(grid), **flat)

    def slots(self, x: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
        """The count slots of the values of `x` (n, n_features; finite), in no particular order;
        with `keep` (a mask of x's shape), of the kept values only."""
        with np.errstate(over="ignore"):  # a value past the float32 range is simply not one
            as32 = x.astype(np.float32)
        if (as32 == x).all():  # every value is a float32: the faster int64 keys place it exactly
            grid, keys = self.keys32, _Keys32.of_values(as32)
            # Sorted keys make searchsorted several times faster (each search starts from the
            # last one's result: few mispredicted branches), more than sorting int64s costs.
            keys = np.sort(keys if keep is None else keys[keep], axis=None)
        else:  # (sorting complex numbers costs more than it saves)
            grid, keys = self.grid, np.arange(x.shape[1]) + 1j * x
            keys = keys.ravel() if keep is None else keys[keep]
        at = np.searchsorted(grid, keys, "left")  # grid points below the value
        return 2 * at + (grid[at] == keys)  # +1 when the value is on the point


class _Keys32:
    """int64 keys with the order of the complex grid keys, for float32 values.

    A float32's bits, with the sign folded in (`order`), are an unsigned integer with the
    float's order (-0.0 made +0.0 first, as they compare equal). A value v of feature j gets
    j * 2**33 + 2 * order(v) + 1. A grid point g (float64) gets the same when g is a float32;
    otherwise it sits strictly between two adjacent float32s, and gets 2 * order(d) + 2 with d
    the float32 just below it. So for every float32 v: key(v) < key(g) exactly when v < g,
    and the keys are equal exactly when v == g. Two grid points between the same two float32s
    get the same key; no float32 lies between them, so the count of keys below a value's key
    is still the count of grid points below the value, and the complex path's slot."""

    FEATURE = 2**33  # above every 2 * order + 2 (order < 2**32)

    @staticmethod
    def order(v: np.ndarray) -> np.ndarray:
        bits = (v + np.float32(0.0)).view(np.uint32).astype(np.int64)  # -0.0 + 0.0 is +0.0
        return np.where(bits >= 2**31, 2**32 - 1 - bits, bits + 2**31)

    @classmethod
    def of_values(cls, x32: np.ndarray) -> np.ndarray:
        """Keys of finite float32 values, shape (n, n_features)."""
        return np.arange(x32.shape[1]) * cls.FEATURE + 2 * cls.order(x32) + 1

    @classmethod
    def of_grid(cls, grid: np.ndarray) -> np.ndarray:
        points = grid.imag
        with np.errstate(over="ignore"):  # past the float32 range: +-inf, stepped down below
            down = points.astype(np.float32)
        down = np.where(down > points, np.nextafter(down, np.float32(-np.inf)), down)
        on = down == points
        return grid.real.astype(np.int64) * cls.FEATURE + 2 * cls.order(down) + 2 - on


class DriftMonitor:
    """Accumulates windows of inputs (and predictions) and produces one report per window.

    Thresholds: the card's own (`card.thresholds`) win over the ones given here (the device
    profile's), which win over DEFAULT_THRESHOLDS. PSI (of any feature and of the prediction
    distribution) sets the status; KS and out-of-range rates do too when their thresholds
    are set (`ks_warn`/`ks_alert`, `range_warn`/`range_alert`), and always name moved features.
    """

    def __init__(
        self,
        card: ModelCard,
        window: int = 200,
        warn: float = DEFAULT_THRESHOLDS["psi_warn"],
        alert: float = DEFAULT_THRESHOLDS["psi_alert"],
        window_s: float | None = None,
        thresholds: dict[str, float] | None = None,
        capture: int = 0,
    ) -> None:
        self.card = card
        self.capture = capture  # rows of an alerting window sent along with its report
        self.window = window
        self.window_s = window_s
        self.thresholds = {
            **DEFAULT_THRESHOLDS,
            "psi_warn": warn,
            "psi_alert": alert,
            **(thresholds or {}),
            **card.thresholds,
        }
        self.warn = self.thresholds["psi_warn"]
        self.alert = self.thresholds["psi_alert"]
        self._layout = _Layout.of(card)
        self._names = card.feature_names
        self._pred_kind, self._pred_keys, self._pred_ref = _prediction_reference(card)
        self._ready: deque[dict[str, Any]] = deque()
        self._stage = np.empty((STAGE_ROWS, card.n_features), dtype=np.float64)
        self._staged = 0
        self._stage_preds: list[np.ndarray] = []
        self._reset(None)

    def _reset(self, now: float | None) -> None:
        self._counts = np.zeros(2 * len(self._layout.grid) + 1, dtype=np.int64)
        self._rows = 0  # rows of this window, staged or counted
        self._missing = np.zeros(self.card.n_features, dtype=np.int64)
        self._missing_rows = 0
        self._preds = np.zeros(len(self._pred_ref), dtype=np.int64)
        self._recent = np.empty((0, self.card.n_features), dtype=np.float64)
        self._started = now

    # ---- feeding --------------------------------------------------------------------------
    def add(
        self, x: np.ndarray, predictions: np.ndarray | None = None, now: float | None = None
    ) -> dict[str, Any] | None:
        """Add a batch of valid rows (and the model's predictions for them); returns a report
        when a window completes. A batch that straddles two windows is split, so each count
        window covers exactly `window` rows. `now` (monotonic seconds) drives time windows."""
        n, staged = len(x), self._staged
        if self.window_s is None and n + staged < STAGE_ROWS and self._rows + n < self.window:
            self._stage[staged : staged + n] = x  # the common case: stage it, nothing else
            if predictions is not None:
                self._stage_preds.append(predictions)
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

    def missing(self, feature_index: int | None = None) -> None:
        """One row rejected because a value was missing (empty, NaN, not a number); with the
        feature's index when the parser knows it. Counted into the current window."""
        self._missing_rows += 1
        if feature_index is not None and 0 <= feature_index < len(self._missing):
            self._missing[feature_index] += 1

    def _flush_stage(self) -> None:
        """Count the staged rows (a few numpy calls for up to STAGE_ROWS rows at once)."""
        if self._staged:
            rows = self._stage[: self._staged]
            preds = np.concatenate(self._stage_preds) if self._stage_preds else None
            self._accumulate(rows, preds)
            if self.capture:  # the window's latest rows, bounded
                self._recent = np.concatenate([self._recent, rows])[-self.capture :]
        self._staged = 0
        self._stage_preds = []

    def _accumulate(self, x: np.ndarray, predictions: np.ndarray | None) -> None:
        if not len(x):
            return
        x = np.asarray(x, dtype=np.float64)
        finite = np.isfinite(x)
        if finite.all():
            slots = self._layout.slots(x)
        else:  # a NaN here is a missing value that slipped through
            self._missing += (~finite).sum(axis=0)
            slots = self._layout.slots(np.where(finite, x, 0.0), finite)
        self._counts += np.bincount(slots, minlength=len(self._counts))
        if predictions is not None and len(self._pred_ref):
            self._preds += self._prediction_counts(np.asarray(predictions))

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
        report = self._summarise()
        if self.capture and report["status"] == "alert":
            report["capture"] = {"features": self._names, "rows": self._recent.tolist()}
        self._ready.append(report)
        self._reset(now)

    # ---- reporting ------------------------------------------------------------------------
    def report(self, data: np.ndarray, predictions: np.ndarray | None = None) -> dict[str, Any]:
        """The report of exactly these rows (the monitor's own window is left alone)."""
        other = DriftMonitor(self.card, max(len(data), 1), thresholds=self.thresholds)
        other._accumulate(data, predictions)
        other._rows = len(data)
        return other._summarise()

    def _summarise(self) -> dict[str, Any]:
        lay, names, t, n = self._layout, self._names, self.thresholds, self.card.n_features
        cum = np.concatenate([[0], np.cumsum(self._counts)])  # cum[s] = values in slots < s
        total = (cum[lay.end] - cum[lay.start]).astype(np.float64)
        safe_total = np.maximum(total, 1.0)
        # PSI and JS per feature over the card's bins
        live = (cum[lay.bin_hi] - cum[lay.bin_lo]).astype(np.float64)
        ref_total = np.bincount(lay.bin_feature, lay.bin_ref, minlength=n)
        p = lay.bin_ref / np.maximum(ref_total, 1.0)[lay.bin_feature]
        q = live / safe_total[lay.bin_feature]
        pc, qc = np.maximum(p, EPSILON), np.maximum(q, EPSILON)
        psis = np.bincount(lay.bin_feature, (qc - pc) * np.log(qc / pc), minlength=n)
        m = (p + q) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(p > 0, p * np.log2(p / m), 0.0) + np.where(q > 0, q * np.log2(q / m), 0.0)
        jss = np.sqrt(np.maximum(np.bincount(lay.bin_feature, kl, minlength=n) / 2, 0.0))
        jss[(total == 0) | (ref_total == 0)] = 0.0
        # KS: the largest ECDF gap at a reference point or just before one
        first = cum[lay.start][lay.ks_feature]
        live_le = (cum[2 * lay.ks_at + 2] - first) / safe_total[lay.ks_feature]
        live_lt = (cum[2 * lay.ks_at + 1] - first) / safe_total[lay.ks_feature]
        gaps = np.maximum(np.abs(lay.ks_le - live_le), np.abs(lay.ks_lt - live_lt))
        kss = np.zeros(n)
        np.maximum.at(kss, lay.ks_feature, gaps)
        kss[total == 0] = 0.0
        # out of range (below the card's min or above its max) and missing
        below = cum[2 * lay.min_at + 1] - cum[lay.start]
        above = cum[lay.end] - cum[2 * lay.max_at + 2]
        oor = (below + above) / safe_total
        rows_seen = max(self._rows + self._missing_rows, 1)
        miss = self._missing / rows_seen

        def named(values: np.ndarray) -> dict[str, float]:
            return dict(zip(names, np.round(values, 4).tolist(), strict=True))

        psi_d = named(psis)
        ks_d, oor_d = named(kss), named(oor)
        worst = names[int(np.argmax(psis))]
        prediction = self._prediction_drift()
        status = classify(psi_d[worst], t["psi_warn"], t["psi_alert"])
        if prediction is not None:
            status = _worse(status, classify(prediction["psi"], t["psi_warn"], t["psi_alert"]))
        for metric, values in (("ks", ks_d), ("range", oor_d)):
            if f"{metric}_warn" in t and f"{metric}_alert" in t:
                top = max(values.values())
                status = _worse(status, classify(top, t[f"{metric}_warn"], t[f"{metric}_alert"]))
        moved = [
            name
            for name in sorted(names, key=lambda k: -psi_d[k])
            if psi_d[name] >= t["psi_warn"]
            or ks_d[name] >= t.get("ks_warn", math.inf)
            or oor_d[name] >= t.get("range_warn", math.inf)
        ]
        return {
            "model": self.card.model.to_json(),
            "window": self._rows,
            "psi": psi_d,
            "max_psi": psi_d[worst],
            "worst_feature": worst,
            "status": status,
            "ks": ks_d,
            "js": named(jss),
            "out_of_range": oor_d,
            "missing": named(miss),
            "missing_rows": self._missing_rows,
            "prediction": prediction,
            "moved": moved,
            "thresholds": dict(t),
        }

    def _prediction_drift(self) -> dict[str, Any] | None:
        if not len(self._pred_ref) or not self._preds.sum():
            return None
        labels = (
            list(self._pred_keys) if self._pred_kind == "classes" else list(range(len(self._preds)))
        )
        return {
            "psi": round(psi(self._pred_ref, self._preds), 4),
            "js": round(js_distance(self._pred_ref, self._preds), 4),
            "counts": {str(k): int(n) for k, n in zip(labels, self._preds.tolist(), strict=True)},
        }


def _worse(a: str, b: str) -> str:
    return a if _RANK[a] >= _RANK[b] else b


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
