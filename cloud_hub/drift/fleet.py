"""Fleet and cohort drift: the devices' window counts added up per model version and cohort,
and tested against the card's reference with the statistics the device itself uses.

Each drift report carries ``counts``: the window's rows and, per feature, its live counts over
the card's quantile bins. Counts add up: the sum over devices and windows is what one huge
window over the whole cohort would have counted. A cohort is the whole fleet (``fleet``), the
devices of a group (``group:NAME``) or the devices carrying a tag (``tag:NAME``), by the
registry's labels as they are now. For each (model version, cohort) the merged counts are tested
as a device tests one window (`edge_agent.drift.stats`): per feature, Pearson's chi-square of
reference against live counts over bins merged (`merge_bins`) until the merged window expects at
least MIN_EXPECTED values in each; the predicted classes (or binned values) the same way; and
the family's p-value by Simes' combination, with Benjamini-Hochberg's adjusted values (``q``)
naming the features that moved. The status follows the same levels the devices use (the
strictest the reports carry). The KS and range tests need the grid counts a window keeps to
itself, and the missing-rows test the reference's missing rows: those stay on the device.

Why it finds what no window sees: under a shift the chi-square statistic grows with the
effective size n*m/(n+m) of the two samples (n merged live rows, m reference rows), and a
device's window has n of a few hundred. A hundred devices' windows of a day give n in the
millions, so a shift of a tenth of a standard deviation that no device sees becomes certain.
But the effective size never exceeds m: once n is well past m, more devices add no power, and
the reference size bounds the smallest shift the fleet can find (about what a window of m rows
would find against an exact reference). A card with a larger reference is the way further.

A drift-free fleet warns with probability the warn level per cohort and per look: the test
assumes the merged windows are independent draws, which holds when the devices' inputs are
(sensors of the same kind in different places), not when windows overlap or repeat.

Reports without ``counts`` (agents from before it) or whose counts do not fit the card's bins
are skipped and counted per cohort (``skipped``), never guessed at. Pure: typed reports
(edge_agent.protocol.records.DriftReport), labels and cards in, rows out; the callers read the
store and the TUF repository.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.drift import DEFAULT_ALERT_EVERY, DEFAULT_WARN_EVERY, levels, psi, status_of
from edge_agent.drift.stats import (
    MIN_EXPECTED,
    bh_adjust,
    homogeneity_p,
    merge_bins,
    round_p,
)
from edge_agent.protocol.card import ModelCard
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.records import DriftReport

FLEET = "fleet"
NO_COUNTS = "no counts"  # a report from an agent before window counts existed
UNFIT = "counts do not fit the card"
WORST_SHOWN = 3  # features named as the worst of a cohort
NOTHING_TESTED: dict[str, Any] = {  # a cohort's result when no counts could be tested
    "status": "unknown",
    "p": None,
    "p_values": {},
    "q": {},
    "psi": {},
    "prediction": None,
    "moved": [],
    "worst": [],
}
STATUS_RANK = {"ok": 0, "warn": 1, "alert": 2}  # what the status gauge shows


@frozen
class Labels:
    """A device's registry labels: its group ("" for none) and its tags."""

    group: str = ""
    tags: tuple[str, ...] = ()

    def cohorts(self) -> list[str]:
        out = [FLEET]
        if self.group:
            out.append(f"group:{self.group}")
        return out + [f"tag:{t}" for t in sorted(set(self.tags))]


@frozen
class Report:
    """One stored drift report: the device that sent it and the report."""

    device: str
    report: DriftReport


def model_versions(reports: Iterable[Report]) -> set[ModelRef]:
    """The model versions these reports are about: the cards the caller should fetch."""
    return {r.report.model for r in reports if r.report.model is not None}


def pooled_accuracy(reports: Iterable[DriftReport]) -> dict[str, float] | None:
    """The expected accuracy over these reports' rows (their confidence sums added up), the
    card's, and the change; None when none of them estimates accuracy."""
    right = rows = 0.0
    reference = None
    for report in reports:
        acc = report.accuracy
        if acc is not None:
            right, rows, reference = right + acc.sum, rows + acc.rows, acc.reference
    if reference is None:
        return None
    expected = right / rows
    return {"expected": expected, "reference": reference, "change": expected - reference}


def pooled_anomalies(reports: Iterable[DriftReport]) -> dict[str, Any] | None:
    """An anomaly model's anomalies over these reports' rows, their rate and the card's
    reference rate; None when none of them counts anomalies."""
    anomalies = rows = 0
    reference = None
    for report in reports:
        rate = report.anomaly
        if rate is not None:
            anomalies, rows, reference = (
                anomalies + rate.anomalies,
                rows + rate.rows,
                rate.reference,
            )
    if reference is None:
        return None
    return {"anomalies": anomalies, "rows": rows, "rate": anomalies / rows, "reference": reference}


@dataclass
class _Merged:
    """One cohort's counts of one model version, added up."""

    n_features: int
    rows: int = 0
    windows: int = 0
    devices: set[str] = field(default_factory=set)
    bins: list[np.ndarray] = field(default_factory=list)
    predictions: np.ndarray | None = None
    levels: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    accuracy: list[DriftReport] = field(default_factory=list)  # reports that estimate it
    anomaly: list[DriftReport] = field(default_factory=list)  # reports that count anomalies

    def add(self, device: str, counts: _Counts, level: dict[str, float] | None) -> None:
        self.rows += counts.rows
        self.windows += 1
        self.devices.add(device)
        if self.bins:
            self.bins = [a + b for a, b in zip(self.bins, counts.bins, strict=True)]
        else:
            self.bins = list(counts.bins)
        if counts.predictions is not None:
            seen = self.predictions
            self.predictions = counts.predictions if seen is None else seen + counts.predictions
        for key, value in (level or {}).items():  # the strictest level of any report
            self.levels[key] = min(value, self.levels.get(key, value))

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


@frozen
class _Counts:
    rows: int
    bins: tuple[np.ndarray, ...]
    predictions: np.ndarray | None


def _count_list(value: Sequence[int] | None, length: int) -> np.ndarray | None:
    if value is None or len(value) != length:
        return None
    return np.asarray(value, dtype=np.int64)


def prediction_keys(card: ModelCard) -> list[str]:
    """The keys of a report's ``prediction.counts``, in the card's order (as the monitor
    writes them: the class labels, or the bin numbers of a regressor's predictions)."""
    if card.task == "classification":
        return [str(c) for c in card.classes]
    return [str(i) for i in range(len(card.prediction_counts))]


def window_counts(report: DriftReport, card: ModelCard) -> _Counts | str:
    """A report's counts checked against the card's bins, or why they cannot be used."""
    counts = report.counts
    if counts is None:
        return NO_COUNTS
    per_feature = []
    for f in card.features:
        live = _count_list(counts.bins.get(f.name), len(f.counts))
        if live is None or live.sum() > counts.rows:
            return UNFIT
        per_feature.append(live)
    predictions = None
    pred = report.prediction
    keys = prediction_keys(card)
    fits = pred is not None and set(pred.counts) == set(keys)
    if pred is not None and fits and len(keys) == len(card.prediction_counts):
        predictions = _count_list([pred.counts[k] for k in keys], len(keys))
    return _Counts(counts.rows, tuple(per_feature), predictions)


def merge(
    reports: Iterable[Report],
    labels: Mapping[str, Labels],
    cards: Mapping[ModelRef, ModelCard],
) -> dict[tuple[ModelRef, str], _Merged]:
    """Counts added up per (model version, cohort), for the model versions with a card.
    Every report counts in each cohort of its device (a device the registry does not know
    counts in the fleet only)."""
    out: dict[tuple[ModelRef, str], _Merged] = {}
    for r in reports:
        model = r.report.model
        card = cards.get(model) if model is not None else None
        if model is None or card is None:
            continue
        counts = window_counts(r.report, card)
        level = r.report.levels.as_dict() if r.report.levels is not None else None
        for cohort in labels.get(r.device, Labels()).cohorts():
            m = out.setdefault((model, cohort), _Merged(card.n_features))
            if isinstance(counts, str):
                m.skip(counts)
            else:
                m.add(r.device, counts, level)
                if r.report.accuracy is not None:
                    m.accuracy.append(r.report)
                if r.report.anomaly is not None:
                    m.anomaly.append(r.report)
    return out


def chi_square_p(reference: np.ndarray, live: np.ndarray) -> float:
    """The p-value of the device's binned test for these merged counts: bins merged so that
    the live side expects at least MIN_EXPECTED values in each, then Pearson's chi-square."""
    n = float(np.sum(live))
    if n <= 0:
        return 1.0
    return homogeneity_p(reference, live, merge_bins(reference, MIN_EXPECTED / n))


def cohort_result(card: ModelCard, merged: _Merged) -> dict[str, Any]:
    """The cohort's merged counts against the card's reference: per-feature p, q and PSI, the
    family's p (Simes, over the features and the predictions) and the status it gives."""
    level = merged.levels or levels(DEFAULT_WARN_EVERY, DEFAULT_ALERT_EVERY)
    names = card.feature_names
    base: dict[str, Any] = {
        "windows": merged.windows,
        "devices": len(merged.devices),
        "rows": merged.rows,
        "reference_rows": max((sum(f.counts) for f in card.features), default=0),
        "levels": level,
        "skipped": dict(sorted(merged.skipped.items())),
        "accuracy": pooled_accuracy(merged.accuracy),
        "anomalies": pooled_anomalies(merged.anomaly),
    }
    if merged.rows == 0 or not merged.bins:
        return base | NOTHING_TESTED
    refs = [np.asarray(f.counts, dtype=np.float64) for f in card.features]
    feature_p = np.array([chi_square_p(r, b) for r, b in zip(refs, merged.bins, strict=True)])
    psis = [psi(r, b) for r, b in zip(refs, merged.bins, strict=True)]
    pred_ref = np.asarray(card.prediction_counts, dtype=np.float64)
    prediction = None
    family = list(feature_p)
    if merged.predictions is not None and merged.predictions.sum() > 0:
        pred_p = chi_square_p(pred_ref, merged.predictions)
        family.append(pred_p)
        prediction = {"p": round_p(pred_p), "psi": round(psi(pred_ref, merged.predictions), 4)}
    q_all = bh_adjust(family)
    p = float(q_all.min())
    q = q_all[: len(names)]
    order = sorted(range(len(names)), key=lambda j: (feature_p[j], j))
    return base | {
        "status": status_of(p, level),
        "p": round_p(p),
        "p_values": {names[j]: round_p(feature_p[j]) for j in range(len(names))},
        "q": {names[j]: round_p(q[j]) for j in range(len(names))},
        "psi": {names[j]: round(psis[j], 4) for j in range(len(names))},
        "prediction": prediction,
        "moved": [names[j] for j in order if q[j] < level["warn"]],
        "worst": [names[j] for j in order[:WORST_SHOWN]],
    }


def fleet_drift(
    reports: Iterable[Report],
    labels: Mapping[str, Labels],
    cards: Mapping[ModelRef, ModelCard],
    problems: Mapping[ModelRef, str] | None = None,
    cohorts: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per (model version, cohort): what merged, the tests and the status. Model
    versions without a card get one row saying why (`problems`, else "no card"). `cohorts`
    keeps only those cohorts' rows. Rows come model by model, the fleet first, then the
    groups, then the tags."""
    reports = list(reports)
    keep = None if cohorts is None else set(cohorts)
    merged = merge(reports, labels, cards)
    rows = []
    for (model, cohort), m in merged.items():
        if keep is None or cohort in keep:
            head = {"model": model.name, "version": model.version, "cohort": cohort}
            rows.append(head | cohort_result(cards[model], m) | {"note": ""})
    for model in sorted(model_versions(reports) - set(cards), key=str):
        why = (problems or {}).get(model) or f"no card for {model}: it is not published here"
        n = sum(1 for r in reports if r.report.model == model)
        rows.append(_unknown(model, n, why))
    return sorted(rows, key=lambda r: (r["model"], r["version"], _cohort_order(r["cohort"])))


def _unknown(model: ModelRef, windows: int, why: str) -> dict[str, Any]:
    return {
        "model": model.name,
        "version": model.version,
        "cohort": FLEET,
        "windows": 0,
        "devices": 0,
        "rows": 0,
        "reference_rows": 0,
        "levels": {},
        "skipped": {"no card": windows},
        "accuracy": None,
        "anomalies": None,
        **NOTHING_TESTED,
        "note": why,
    }


def _cohort_order(cohort: str) -> tuple[int, str]:
    kind = cohort.partition(":")[0]
    return {FLEET: 0, "group": 1, "tag": 2}.get(kind, 3), cohort


def feature_level(q: float | None, level: Mapping[str, float]) -> str:
    """A feature's cell in the heat map: its adjusted value (q) against the levels."""
    if q is None:
        return "unknown"
    return status_of(q, dict(level)) if level else "unknown"


def minus_log10(p: float | None) -> float | None:
    """-log10 p, the heat map's scale (0 for p = 1; p = 0 reads as 1e-300)."""
    return None if p is None else round(-math.log10(max(p, 1e-300)), 2) + 0.0
