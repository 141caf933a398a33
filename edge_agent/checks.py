"""Checks of option values (device files, constructor arguments): each error names where, the
key, what was expected and what was found."""

from __future__ import annotations

import math
from typing import Any

from edge_agent.errors import ConfigError


def suggest(word: str, choices: Any) -> str:
    from difflib import get_close_matches  # only for a wrong name: not in a running agent

    close = get_close_matches(word, sorted(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def port_number(where: str, key: str, value: object) -> int:
    if type(value) is not int or not 1 <= value <= 65535:
        raise ConfigError(f"{where}: '{key}' expected a port number 1-65535, found {value!r}")
    return value


def one_of(
    where: str, key: str, value: object, choices: tuple[float, ...], what: str, integer: bool
) -> Any:
    """`value` if it is one of the numbers `choices` (an int where `integer`), as int if whole."""
    kinds = int if integer else int | float
    if isinstance(value, kinds) and not isinstance(value, bool) and value in choices:
        return int(value) if value == int(value) else float(value)
    shown = ", ".join(f"{c:g}" for c in choices)
    raise ConfigError(f"{where}: '{key}' expected {what}, one of {shown}; found {value!r}")


def positive_int(where: str, key: str, value: object) -> int:
    if type(value) is not int or value <= 0:
        raise ConfigError(f"{where}: '{key}' expected a positive integer, found {value!r}")
    return value


def positive_float(where: str, key: str, value: object, allow_zero: bool = False) -> float:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        expected = "a number >= 0" if allow_zero else "a positive number"
        raise ConfigError(f"{where}: '{key}' expected {expected}, found {value!r}")
    return float(value)  # type: ignore[arg-type]
