"""A mixed table as a user has one: wine's numbers next to a text column derived from them,
and the pipeline a user writes for it (a ColumnTransformer over a DataFrame: StandardScaler
on the numbers, OneHotEncoder on the text, LogisticRegression)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from edge_agent.sources.csv_fields import quoted

NUMBERS = ["alcohol", "malic_acid", "ash", "magnesium"]
TEXT = "cellar"  # the synthetic category column
CELLARS = ["east", "north", "south", "west"]  # sorted: the card's categories


def wine_table() -> tuple[pd.DataFrame, np.ndarray]:
    """(a DataFrame of NUMBERS and TEXT, the wine class): the cellar follows the colour
    intensity and the flavanoids, so it carries what the numbers lack."""
    data = load_wine(as_frame=True)
    frame = data.frame
    table = frame[NUMBERS].copy()
    colour, flavour = frame["color_intensity"], frame["flavanoids"]
    table[TEXT] = np.select(
        [colour > 7, flavour > 2.5, colour < 3.5], ["north", "south", "east"], "west"
    )
    return table, np.asarray(data.target)


def mixed_pipeline(
    final: Any = None, handle_unknown: str = "ignore", numbers: list[str] = NUMBERS
) -> Pipeline:
    return Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        ("numbers", StandardScaler(), numbers),
                        ("texts", OneHotEncoder(handle_unknown=handle_unknown), [TEXT]),
                    ]
                ),
            ),
            ("model", final if final is not None else LogisticRegression(max_iter=2000)),
        ]
    )


def codes(table: pd.DataFrame) -> np.ndarray:
    """The table as the converter and the device hold it: the cellar as its index among
    CELLARS (len(CELLARS) for any other text), float32."""
    code = table[TEXT].map(lambda t: CELLARS.index(t) if t in CELLARS else len(CELLARS))
    return np.c_[table[NUMBERS].to_numpy(np.float64), code.to_numpy()].astype(np.float32)


def csv_lines(table: pd.DataFrame) -> list[bytes]:
    """Sensor lines as a device reads them, the cellar as its text (quoted where it must be)."""
    return [
        ",".join([*(repr(float(v)) for v in row[NUMBERS]), quoted(str(row[TEXT]))]).encode()
        for _, row in table.iterrows()
    ]
