"""Where a window's counts sit: one sorted grid holding, for every feature, its bin edges, its
KS reference points and its min and max (see `edge_agent.drift.monitor` for why one grid).

Grid keys are complex numbers (real part = feature index, imaginary part = value), which numpy
orders lexicographically, so one `searchsorted` places every value of every feature at once (an
equality test against the point found tells "on it" from "below it") and one `bincount` adds a
batch to the window. Values that are all float32 (what the pipeline feeds) take the same path
on int64 keys instead, which numpy compares several times faster than complex ones; `_Keys32`
says why the two give the same slots. Where edge_agent.native's C loop was built, `add` counts
finite rows with it instead: a binary search per value in its own feature's points, the same slots.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_agent.drift.stats import MIN_EXPECTED, merge_bins
from edge_agent.native import count_slots
from edge_agent.protocol.card import ModelCard, unique_sorted
from edge_agent.protocol.frozen import frozen


@frozen
class Layout:
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
    ks_starts: np.ndarray  # per feature: its first KS point (points are grouped by feature)
    ks_none: np.ndarray  # per feature: True if it has no KS point (constant, or categorical)
    ks_at: np.ndarray  # per KS point: its grid index
    ks_le: np.ndarray  # per KS point: reference ECDF at it
    ks_lt: np.ndarray  # per KS point: reference ECDF just before it
    min_at: np.ndarray  # per feature: grid index of the card's min
    max_at: np.ndarray  # per feature: grid index of the card's max
    keys32: np.ndarray  # int64, the grid as `Keys32` places float32 values on it
    feature_bins: np.ndarray  # per feature: where its bins start among all bins, and the end
    bin_group: np.ndarray  # per PSI bin: its chi-square group (bins merged, all features)
    group_feature: np.ndarray  # per chi-square group: the feature
    ref_rows: np.ndarray  # per feature: reference rows with a value (the card's bin counts)
    ks_slack: np.ndarray  # per feature: how far the card's KS sample's ECDF may be off
    points: np.ndarray  # float64, the grid's values (feature by feature), for `count_slots`
    point_starts: np.ndarray  # int64, per feature: where its points start in `points`, and the end
    group_starts: np.ndarray  # per chi-square group: its first bin (groups are runs of bins)
    feature_groups: np.ndarray  # per feature: its first chi-square group

    @classmethod
    def of(cls, card: ModelCard, window: int) -> Layout:
        """The layout of `card`'s profile; chi-square bins merged so that a window of `window`
        rows expects at least MIN_EXPECTED values in each."""
        keys: list[np.ndarray] = []
        derived = (
            *("grid", "keys32", "group_feature", "feature_bins", "ks_starts", "ks_none"),
            *("points", "point_starts", "group_starts", "feature_groups"),
        )
        parts: dict[str, list[Any]] = {k: [] for k in cls.__dataclass_fields__ if k not in derived}
        offset, groups = 0, 0
        min_mass = MIN_EXPECTED / max(window, 1)
        categorical = categorical_features(card)
        for j, f in enumerate(card.features):
            if categorical[j]:  # categories have no order: no KS, no ECDF
                points = le = lt = np.empty(0, dtype=np.float64)
            elif f.ks:
                sample = np.asarray(f.ks, dtype=np.float64)
                points = unique_sorted(sample)
                le = np.searchsorted(sample, points, "right") / sample.size
                lt = np.searchsorted(sample, points, "left") / sample.size
            else:  # an older card: the ECDF is known at the bin edges only
                points = np.asarray(f.edges, dtype=np.float64)
                le = lt = np.cumsum(f.counts)[: len(points)] / max(sum(f.counts), 1)
            edges = np.asarray(f.edges, dtype=np.float64)
            lo, hi = _float32_bounds(f.min, f.max)
            values = unique_sorted(np.concatenate([points, edges, [lo, hi, -np.inf, np.inf]]))
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
            parts["min_at"].append([offset + np.searchsorted(values, lo)])
            parts["max_at"].append([offset + np.searchsorted(values, hi)])
            group = merge_bins(np.asarray(f.counts), min_mass)
            parts["bin_group"].append(groups + group)
            groups += int(group.max()) + 1
            rows = sum(f.counts)
            parts["ref_rows"].append([rows])
            # the card keeps len(ks) order statistics at evenly spaced ranks of `rows` values:
            # between two of them the full reference's ECDF moves by at most one rank step
            parts["ks_slack"].append([1 / (len(f.ks) - 1) if rows > len(f.ks) > 1 else 0.0])
            offset += len(values)
        flat = {k: np.concatenate([np.asarray(v) for v in vs]) for k, vs in parts.items()}
        grid = np.concatenate(keys)
        group_feature = np.zeros(groups, dtype=np.int64)
        group_feature[flat["bin_group"]] = flat["bin_feature"]
        feature_bins = np.concatenate([[0], np.cumsum(np.bincount(flat["bin_feature"]))])
        ks_points = np.bincount(flat["ks_feature"], minlength=len(card.features))
        return cls(
            grid=grid,
            keys32=Keys32.of_grid(grid),
            group_feature=group_feature,
            feature_bins=feature_bins,
            ks_starts=np.concatenate([[0], np.cumsum(ks_points)[:-1]]),
            ks_none=ks_points == 0,
            points=np.ascontiguousarray(grid.imag),
            group_starts=np.searchsorted(flat["bin_group"], np.arange(groups)),
            feature_groups=np.searchsorted(group_feature, np.arange(len(card.features))),
            point_starts=np.searchsorted(grid.real, np.arange(len(card.features) + 1)).astype(
                np.int64
            ),
            **flat,
        )

    def add(self, x: np.ndarray, counts: np.ndarray) -> None:
        """Add the values of `x` (n, n_features; float64) to `counts`, per slot; a value that
        is not finite (a missing one) is not counted."""
        if count_slots is not None and count_slots(x, self.points, self.point_starts, counts):
            return
        finite = np.isfinite(x)
        slots = self.slots(x) if finite.all() else self.slots(np.where(finite, x, 0.0), finite)
        counts += np.bincount(slots, minlength=len(counts))

    def slots(self, x: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
        """The count slots of the values of `x` (n, n_features; finite), in no particular order;
        with `keep` (a mask of x's shape), of the kept values only."""
        with np.errstate(over="ignore"):  # a value past the float32 range is simply not one
            as32 = x.astype(np.float32)
        if (as32 == x).all():  # every value is a float32: the faster int64 keys place it exactly
            grid, keys = self.keys32, Keys32.of_values(as32)
            # Sorted keys make searchsorted several times faster (each search starts from the
            # last one's result: few mispredicted branches), more than sorting int64s costs.
            keys = np.sort(keys if keep is None else keys[keep], axis=None)
        else:  # (sorting complex numbers costs more than it saves)
            grid, keys = self.grid, np.arange(x.shape[1]) + 1j * x
            keys = keys.ravel() if keep is None else keys[keep]
        at = np.searchsorted(grid, keys, "left")  # grid points below the value
        return 2 * at + (grid[at] == keys)  # +1 when the value is on the point


def categorical_features(card: ModelCard) -> np.ndarray:
    """Per watched feature: whether it is categorical (its values category codes, its bins one
    per category and the last for unknown texts: edge_agent.protocol.card.category_edges)."""
    cats = card.input.categories if card.input.kind == "row" else {}
    return np.array([f.name in cats for f in card.features], dtype=bool)


def _float32_bounds(lo: float, hi: float) -> tuple[float, float]:
    """The card's min and max, widened to where float32 rounds them: the pipeline feeds float32
    values, and the reference's largest value read as float32 may land just above its float64
    self without being beyond the reference."""
    with np.errstate(over="ignore"):
        lo32, hi32 = float(np.float32(lo)), float(np.float32(hi))
    return min(lo, lo32), max(hi, hi32)


class Keys32:
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
