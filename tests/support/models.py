"""A real model as the agent runs it (`active_model`: converted, quantized, validated, read and
loaded) and a row of features as the CSV line a sensor sends (`csv_line`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from converters.pipeline import build_bundle
from edge_agent.inference.pipeline import ActiveModel
from edge_agent.inference.runtime import load_runtime
from edge_agent.update.bundle import read_bundle
from edge_agent.update.updater import Installed


def installed_model(model: Any, x: np.ndarray, y: np.ndarray, name: str, out: Path) -> Installed:
    """A real bundle (convert, quantize, validate) of version 3, read and loaded as the updater
    hands it to the agent."""
    build_bundle(model, x, y, name=name, version=3, out=out)
    bundle = read_bundle(out.read_bytes(), None, 10**8)
    return Installed(bundle, load_runtime(bundle.card, bundle.model_bytes))


def active_model(model: Any, x: np.ndarray, y: np.ndarray, name: str, out: Path) -> ActiveModel:
    """A real bundle, read and loaded as the agent does (`installed_model`), with a drift window
    of 50."""
    installed = installed_model(model, x, y, name, out)
    return ActiveModel.build(
        installed.bundle.card,
        installed.runtime,
        drift_window=50,
        warn_every=100,
        alert_every=10_000,
    )


def csv_line(row: np.ndarray) -> bytes:
    return ",".join(repr(float(v)) for v in row).encode()
