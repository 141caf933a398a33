"""A retraining policy: when to retrain a model (its triggers), and how (the training command).

Each `--when` is one trigger, in a small grammar (words are case-insensitive):

    drift alert on 20% of devices for 1h    (also `drift warn ...`: warn or alert)
    accuracy < 0.9                          (labeled accuracy since the last run, below 0.9)
    5000 new labels                         (labels received since the last run)

A mistake gives one PolicyError saying what was expected, what arrived and where (the
character position in the `--when` text, from 1). Pure: text in, values out.
"""

from __future__ import annotations

import math
import re
import shlex
from typing import Any

from edge_agent.errors import ConfigError
from edge_agent.protocol.frozen import frozen

DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(s|m|h|d)")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
TOKEN = re.compile(r"<=|<|[^\s<]+")
LEVELS = ("alert", "warn")
PLACEHOLDERS = ("{data}", "{model}")
MAX_TIMEOUT_S = 7 * 86400.0
TRIGGER_FORMS = "`drift alert on 20% of devices for 1h`, `accuracy < 0.9` or `5000 new labels`"


class PolicyError(ConfigError):
    """A policy that cannot be: a trigger that does not parse, a command without placeholders."""


@frozen
class DriftTrigger:
    """At least `share` (0..1) of the model's devices at `level` (or worse) throughout the
    last `duration_s` seconds."""

    level: str
    share: float
    duration_s: float

    def __str__(self) -> str:
        share, duration = f"{self.share * 100:g}%", _duration(self.duration_s)
        return f"drift {self.level} on {share} of devices for {duration}"


@frozen
class AccuracyTrigger:
    """Accuracy over the labels received since the last run below `floor`."""

    floor: float

    def __str__(self) -> str:
        return f"accuracy < {self.floor:g}"


@frozen
class LabelsTrigger:
    """At least `count` labels received since the last run."""

    count: int

    def __str__(self) -> str:
        return f"{self.count} new labels"


Trigger = DriftTrigger | AccuracyTrigger | LabelsTrigger


def _duration(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        if seconds >= UNIT_S[unit] and seconds % UNIT_S[unit] == 0:
            return f"{seconds / UNIT_S[unit]:g}{unit}"
    return f"{seconds:g}s"


@frozen
class _Token:
    text: str
    at: int  # 1-based character position

    @property
    def word(self) -> str:
        return self.text.lower()


class _Reader:
    """The tokens of one `--when`, read left to right; `fail` names the position."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = [_Token(m[0], m.start() + 1) for m in TOKEN.finditer(text)]
        self.i = 0

    def fail(self, expected: str) -> PolicyError:
        if self.i < len(self.tokens):
            tok = self.tokens[self.i]
            got, where = f"{tok.text!r}", f"at character {tok.at}"
        else:
            got, where = "the end of the text", f"at character {len(self.text) + 1}"
        return PolicyError(f"--when {self.text!r}: expected {expected} {where}, got {got}")

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, expected: str) -> _Token:
        tok = self.peek()
        if tok is None:
            raise self.fail(expected)
        self.i += 1
        return tok

    def word(self, *words: str) -> str:
        tok = self.peek()
        expected = " or ".join(repr(w) for w in words)
        if tok is None or tok.word not in words:
            raise self.fail(expected)
        self.i += 1
        return tok.word

    def value(self, expected: str, convert: Any) -> Any:
        tok = self.peek()
        if tok is None:
            raise self.fail(expected)
        value = convert(tok.word)
        if value is None:
            raise self.fail(expected)
        self.i += 1
        return value

    def end(self) -> None:
        if self.peek() is not None:
            raise self.fail("the end of the trigger")


def _percent(word: str) -> float | None:
    if not word.endswith("%"):
        return None
    number = _float(word[:-1])
    return number / 100 if number is not None and 0 < number <= 100 else None


def _float(word: str) -> float | None:
    try:
        value = float(word)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _rate(word: str) -> float | None:
    value = _float(word)
    return value if value is not None and 0 < value <= 1 else None


def _count(word: str) -> int | None:
    return int(word) if word.isdigit() and int(word) >= 1 else None


def parse_seconds(word: str) -> float | None:
    """`90s`, `30m`, `1h`, `2d` -> seconds (above 0); None if it is not one."""
    match = DURATION.fullmatch(word.strip().lower())
    if not match:
        return None
    seconds = float(match[1]) * UNIT_S[match[2]]
    return seconds if seconds > 0 else None


def parse_trigger(text: str) -> Trigger:
    """One `--when` text -> its trigger; PolicyError with what, where and what arrived."""
    r = _Reader(text)
    first = r.peek()
    if first is None:
        raise r.fail(TRIGGER_FORMS)
    if first.word == "drift":
        r.take("drift")
        level = r.word(*LEVELS)
        r.word("on")
        share = r.value("a share of devices such as 20%", _percent)
        r.word("of")
        r.word("devices")
        r.word("for")
        duration = r.value("a duration such as 90s, 30m, 1h or 2d", parse_seconds)
        trigger: Trigger = DriftTrigger(level, share, duration)
    elif first.word == "accuracy":
        r.take("accuracy")
        r.word("<")
        trigger = AccuracyTrigger(r.value("an accuracy above 0 and at most 1, such as 0.9", _rate))
    elif _count(first.word) is not None:
        count = r.value("a number of labels", _count)
        r.word("new")
        r.word("labels")
        trigger = LabelsTrigger(count)
    else:
        raise r.fail(TRIGGER_FORMS)
    r.end()
    return trigger


def parse_command(text: str) -> tuple[str, ...]:
    """The `--run` text -> its argument list (split as a shell would, run without one); it
    must name both {data} (the data set's folder) and {model} (the model file to write)."""
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise PolicyError(f"--run {text!r}: expected shell-like words, got {exc}") from None
    if not argv:
        raise PolicyError(f"--run {text!r}: expected a command, got nothing")
    for placeholder in PLACEHOLDERS:
        if not any(placeholder in arg for arg in argv):
            raise PolicyError(
                f"--run {text!r}: expected {placeholder} in the command (where the "
                f"{placeholder.strip('{}')} goes), got none"
            )
    return argv


def parse_timeout(text: str) -> float:
    seconds = parse_seconds(text)
    if seconds is None or seconds > MAX_TIMEOUT_S:
        raise PolicyError(
            f"--timeout: expected a duration such as 90s, 30m or 2h (at most 7d), got {text!r}"
        )
    return seconds


@frozen
class Policy:
    """When to retrain `model` (a model name) and the command that trains."""

    id: str
    model: str
    triggers: tuple[Trigger, ...]
    command: tuple[str, ...]
    timeout_s: float = 1800.0
    approve: bool = False
    shadow_rows: int = 200
    max_accuracy_drop: float = 0.01
    max_rmse_rise: float = 0.01

    def __post_init__(self) -> None:
        if not self.triggers:
            raise PolicyError(f"policy for {self.model}: expected at least one --when, got none")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "when": [str(t) for t in self.triggers],
            "command": list(self.command),
            "timeout_s": self.timeout_s,
            "approve": self.approve,
            "shadow_rows": self.shadow_rows,
            "max_accuracy_drop": self.max_accuracy_drop,
            "max_rmse_rise": self.max_rmse_rise,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Policy:
        return cls(
            id=str(obj["id"]),
            model=str(obj["model"]),
            triggers=tuple(parse_trigger(t) for t in obj["when"]),
            command=tuple(obj["command"]),
            timeout_s=float(obj["timeout_s"]),
            approve=bool(obj["approve"]),
            shadow_rows=int(obj.get("shadow_rows", 200)),
            max_accuracy_drop=float(obj.get("max_accuracy_drop", 0.01)),
            max_rmse_rise=float(obj.get("max_rmse_rise", 0.01)),
        )
