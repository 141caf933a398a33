"""Argument types of the edgehub commands: what argparse calls on an option's text. Each error
says what was expected and what arrived (argparse adds which option)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

from edge_agent.errors import ConfigError

N = TypeVar("N", int, float)


def number(
    kind: type[N],
    expected: str,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    above: bool = False,
    finite: str | None = None,
) -> Callable[[str], N]:
    """A parser of one number of `kind` in [low, high] ((low, high] when `above`); a value
    that is not one says `expected`; `finite`, if given, is what an infinite or NaN one says."""

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if finite is not None and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {finite}, got {text!r}")
        in_range = (low < value if above else low <= value) and value <= high
        if not in_range or math.isnan(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def name_list(text: str) -> list[str]:
    """Comma-separated names: "ax, ay,az" -> ["ax", "ay", "az"]."""
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"expected names separated by commas, got {text!r}")
    return items


def duration(text: str) -> float:
    """A positive duration like 30m, 1h or 24h, in seconds."""
    from cloud_hub.rollout.gates import parse_duration

    try:
        seconds = parse_duration(text, "duration")
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 30m, 1h or 24h, got {text!r}"
        ) from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected a duration above 0, got {text!r}")
    return seconds


def span(seconds: float) -> str:
    """Seconds as the duration a person would write: 1h, 90m, 2d, 45s."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if (seconds >= 2 * size and seconds % size == 0) or seconds == size:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def add_target(parser: argparse.ArgumentParser) -> None:
    """--target: which devices (cloud_hub.rollout.engine.Selector parses it)."""
    parser.add_argument(
        "--target",
        default="all",
        help="all (default), group:NAME, tag:NAME[,NAME...] or devices:ID[,ID...]",
    )
