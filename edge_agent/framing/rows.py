"""A row model: one sensor line is one item (edge_agent.sources.line_parser parses it; a
categorical feature's text becomes its code, the card's categories say which)."""

from __future__ import annotations

import numpy as np

from edge_agent.errors import SensorLineError
from edge_agent.framing.base import Framed, OnReject, wrong_format
from edge_agent.protocol.card import ModelCard
from edge_agent.sources.line_parser import FORMATS, LineParser

BOUNDS_TOLERANCE = 1.0  # accept values up to one reference range beyond the card's min and max
# An anomaly model exists to score what lies outside its reference: its lines are accepted up to
# a hundred reference ranges beyond (further out is a broken sensor rather than a reading, and
# an autoencoder's squared error stays far from float32's limit).
ANOMALY_BOUNDS_TOLERANCE = 100.0


def card_bounds(card: ModelCard) -> list[tuple[float, float]]:
    return [widened(card, f.min, f.max) for f in card.features]


def widened(card: ModelCard, low: float, high: float) -> tuple[float, float]:
    """The values a line may carry for a reference range [low, high] of `card`."""
    tolerance = ANOMALY_BOUNDS_TOLERANCE if card.task == "anomaly" else BOUNDS_TOLERANCE
    span = max(high - low, abs(high), 1e-6) * tolerance
    return low - span, high + span


class RowFramer:
    def __init__(self, card: ModelCard) -> None:
        names, bounds, cats = list(card.input.features), card_bounds(card), card.input.categories
        self._parsers = {fmt: LineParser(names, fmt, bounds, categories=cats) for fmt in FORMATS}

    def frame(self, messages: list[tuple[str, bytes]], reject: OnReject) -> Framed | None:
        if len(messages) == 1:  # one sensor line, the common case: one C call where it can
            fmt, raw = messages[0]
            parser = self._parsers.get(fmt)
            x = parser.row(raw) if parser is not None else None
            if x is not None:
                return Framed(x, x)
        fmt = messages[0][0] if messages else ""
        parser = self._parsers.get(fmt)
        if parser is not None and (len(messages) == 1 or all(m[0] == fmt for m in messages)):
            raws = [messages[0][1]] if len(messages) == 1 else [raw for _, raw in messages]
            x, errors = parser.rows(raws)  # one format: one call
            for error in errors:
                reject(error)
            return Framed(x, x) if len(x) else None
        return self._mixed(messages, reject)

    def restart(self) -> None:
        """Nothing to restart: each line is an item of its own."""

    def _mixed(self, messages: list[tuple[str, bytes]], reject: OnReject) -> Framed | None:
        """Messages of several formats (or none this model takes), one by one."""
        rows = []
        for fmt, raw in messages:
            try:
                rows.append(self._parser(fmt).values(raw))
            except SensorLineError as exc:
                reject(exc)
        if not rows:
            return None
        x = np.array(rows, dtype=np.float32)  # the values were checked to fit float32
        return Framed(x, x)

    def _parser(self, fmt: str) -> LineParser:
        parser = self._parsers.get(fmt)
        if parser is None:
            raise wrong_format("row", fmt, FORMATS)
        return parser
