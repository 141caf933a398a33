"""The smallest mean shift a fleet finds that one device's window does not.

Every feature of every device's inputs moves by the same fraction of a standard deviation.
One window: a 200-row DriftMonitor report on its own (the device's decision, all its tests).
The fleet: N devices' windows of an hour merged and tested against the card
(`cloud_hub.drift.fleet`); the merged counts of N x W windows are the counts of one report of
N x W x 200 rows, so each trial feeds one report of that many rows. A shift is "found" when at
least 90% of seeded trials alert (p under the default alert level 1e-4). Reference sizes: 341
rows (breast_cancer's training split, what the demo's card holds) and 100,000 (a card built
from all training rows): the reference bounds the fleet's power.

    PYTHONPATH=. .venv/bin/python bench/fleet_drift_power.py          # a table (about a minute)
    PYTHONPATH=. .venv/bin/python bench/fleet_drift_power.py --json
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from cloud_hub.drift.fleet import Report, fleet_drift
from edge_agent.drift import DriftMonitor
from edge_agent.protocol.card import parse_card
from edge_agent.protocol.messages import ModelRef
from tests.support.dashboard_fleet import card_json, predict_sign

FEATURES = 10
WINDOW = 200
SHIFTS = (0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0)
TRIALS = 20
FOUND = 0.9


def alert_rate(card_rows: int, rows: int, shift: float, fleet: bool, seed: int) -> float:
    rng = np.random.default_rng(seed)
    names = [f"x{j}" for j in range(FEATURES)]
    card = parse_card(card_json(rng.normal(size=(card_rows, FEATURES)), names, ModelRef("m", 1)))
    alerts = 0
    for _ in range(TRIALS):
        x = rng.normal(size=(rows, FEATURES)) + shift
        body = DriftMonitor(card, rows).report(x, predict_sign(x))
        if fleet:
            body = fleet_drift([Report("pi", body)], {}, {card.model: card})[0]
        alerts += body["status"] == "alert"
    return alerts / TRIALS


def smallest(card_rows: int, rows: int, fleet: bool) -> float | None:
    for shift in SHIFTS:
        if alert_rate(card_rows, rows, shift, fleet, seed=int(shift * 1000)) >= FOUND:
            return shift
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = []
    for card_rows in (341, 100_000):
        out.append(
            {"reference_rows": card_rows, "who": "one window", "rows": WINDOW}
            | {"smallest_shift_sd": smallest(card_rows, WINDOW, fleet=False)}
        )
        for devices, windows in ((10, 18), (100, 18)):  # 18 windows of 200 rows: an hour at 1/s
            rows = devices * windows * WINDOW
            out.append(
                {"reference_rows": card_rows, "who": f"fleet of {devices}", "rows": rows}
                | {"smallest_shift_sd": smallest(card_rows, rows, fleet=True)}
            )
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{FEATURES} features, every one shifted; found = alert in >= {FOUND:.0%} of {TRIALS}")
    print(f"{'reference':>10} {'who':>14} {'rows':>8} {'smallest shift (sd)':>20}")
    for r in out:
        shift = r["smallest_shift_sd"]
        print(
            f"{r['reference_rows']:>10} {r['who']:>14} {r['rows']:>8} "
            f"{'>1' if shift is None else shift:>20}"
        )


if __name__ == "__main__":
    main()
