"""Checks of an input's options in the device file: each error names where, what was expected and
what was found."""

from __future__ import annotations

import logging
import math
from difflib import get_close_matches
from typing import Any

from edge_agent.errors import ConfigError
from edge_agent.mqtt.session import Backoff

log = logging.getLogger(__name__)


def suggest(word: str, choices: Any) -> str:
    close = get_close_matches(word, sorted(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_topic(value: object, where: str, key: str = "topic", *, wildcards: bool) -> str:
    """An MQTT topic name (`wildcards=False`, for publishing) or subscription filter.

    Rules (MQTT 3.1.1 section 4.7): not empty, at most 65535 bytes of UTF-8, no NUL; in a
    filter '#' only as the whole last level and '+' only as a whole level; in a name neither.
    """
    if not isinstance(value, str) or not value:
        kind = "subscription filter" if wildcards else "topic name"
        raise ConfigError(f"{where}: '{key}' expected an MQTT {kind}, found {value!r}")
    if "\x00" in value or len(value.encode("utf-8", "surrogatepass")) > 65535:
        raise ConfigError(
            f"{where}: '{key}' expected at most 65535 bytes and no NUL character,"
            f" found {value!r:.80}"
        )
    levels = value.split("/")
    for i, level in enumerate(levels):
        if "#" not in level and "+" not in level:
            continue
        if not wildcards:
            raise ConfigError(
                f"{where}: '{key}' expected a topic name without wildcards ('+', '#'),"
                f" found {value!r}"
            )
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ConfigError(
                f"{where}: '{key}' expected '#' only as the whole last level"
                f" (like 'sensors/#'), found {value!r}"
            )
        if "+" in level and level != "+":
            raise ConfigError(
                f"{where}: '{key}' expected '+' only as a whole level"
                f" (like 'sensors/+/reading'), found {value!r}"
            )
    return value


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


def reconnect_backoff(where: str, value: object) -> Backoff:
    """The reconnect policy of a `reconnect_delay` = (first, longest) seconds setting: a full
    jitter `Backoff` whose ceiling starts at `first` and doubles up to `longest`."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise ConfigError(
            f"{where}: 'reconnect_delay' expected (first, longest) seconds, found {value!r}"
        )
    first = positive_int(where, "reconnect_delay", value[0])
    longest = positive_int(where, "reconnect_delay", value[1])
    if first > longest:
        raise ConfigError(
            f"{where}: 'reconnect_delay' expected first <= longest, found ({first}, {longest})"
        )
    return Backoff(initial=first, maximum=longest)
