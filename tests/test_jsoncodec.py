"""cloud_hub.jsoncodec answers what the standard library answers, on the inputs where orjson
alone would not: the standard `json` module is the reference each answer is held against."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_hub import jsoncodec
from edge_agent.protocol.messages import parse_json


class Label(str):
    pass


class Count(int):
    def __repr__(self) -> str:
        return f"Count({int(self)})"


@dataclasses.dataclass
class Point:
    x: int
    y: int


def same(a: Any, b: Any) -> bool:
    """Equal values of equal types all the way down (an int is not a float; NaN is NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b)) or False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def outcome(parse: Any, payload: bytes, constants: bool) -> tuple[str, Any]:
    try:
        return "value", parse(payload, constants)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return type(exc).__name__, str(exc)


def reference_dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


# what orjson reads differently from json, or refuses where json reads
EDGES = [
    b'{"n":123456789012345678901234567890}',  # past 64 bits: orjson makes it a float
    b'{"n":-9223372036854775809}',
    b'{"n":18446744073709551615}',  # 20 digits, still exact in orjson: json's answer all the same
    b'{"n":1e999}',  # json reads infinity, orjson refuses
    b'{"n":-1e999}',
    b'{"s":"\\ud800"}',  # a lone surrogate
    b'{"n":NaN}',
    b'{"n":Infinity}',
    b'{"n":-Infinity}',
    b'{"a":1,"a":2}',  # the last one wins in both
    b'{"a":-0}',
    b'{"a":-0.0}',
    b'{"a":1.5e-7,"b":1E5}',
    b"\xef\xbb\xbf{}",  # a byte order mark
    b'{"a":"\xff"}',  # not UTF-8
    b'{"a":1} x',  # trailing garbage
    b"",
    b"[" * 100_000 + b"]" * 100_000,  # nesting past both parsers' limits
    b'{"a":[1,2,{"b":null,"c":true,"d":false}],"e":"\\u00e9\\n"}',
]


@pytest.mark.parametrize("payload", EDGES, ids=[repr(e[:40]) for e in EDGES])
@pytest.mark.parametrize("constants", [False, True])
def test_loads_answers_as_json_does_at_the_edges(payload: bytes, constants: bool) -> None:
    ours, reference = (
        outcome(jsoncodec.loads, payload, constants),
        outcome(parse_json, payload, constants),
    )
    assert ours[0] == reference[0], (ours, reference)
    if ours[0] == "value":
        assert same(ours[1], reference[1]), (ours, reference)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.booleans())
def test_loads_answers_as_json_does_on_any_value(value: Any, constants: bool) -> None:
    payload = json.dumps(value, ensure_ascii=bool(len(str(value)) % 2)).encode("utf-8", "replace")
    ours, reference = (
        outcome(jsoncodec.loads, payload, constants),
        outcome(parse_json, payload, constants),
    )
    assert ours[0] == reference[0], (payload, ours, reference)
    if ours[0] == "value":
        assert same(ours[1], reference[1]), (payload, ours, reference)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_dumps_writes_what_json_writes_on_any_value(value: Any) -> None:
    try:
        reference = reference_dumps(value)
    except ValueError:
        with pytest.raises(ValueError):
            jsoncodec.dumps(value)
        return
    ours = jsoncodec.dumps(value)
    assert ours.isascii()
    assert same(json.loads(ours), json.loads(reference))


@pytest.mark.parametrize(
    "value",
    [
        {"x": float("nan")},  # orjson writes null
        {"x": [1.0, float("inf")]},
        {"x": -math.inf},
    ],
)
def test_dumps_refuses_what_json_refuses(value: Any) -> None:
    with pytest.raises(ValueError):
        reference_dumps(value)
    with pytest.raises(ValueError):
        jsoncodec.dumps(value)


@pytest.mark.parametrize(
    "value",
    [
        {"big": 2**70},  # orjson refuses
        {"f": np.float64(1.5)},  # a float subclass: json writes it, orjson refuses
        {1: "int key"},  # json writes "1", orjson refuses
        {"s": "température"},  # orjson writes UTF-8, json escapes
        {"null": None, "s": "nullable"},
        {"t": (1, 2)},
        {"tiny": 1e-7, "huge": 1e22},
        {"sub": Label("x"), "n": Count(3)},  # subclasses: json writes them its own way
    ],
)
def test_dumps_writes_what_json_writes_where_orjson_would_not(value: Any) -> None:
    ours = jsoncodec.dumps(value)
    assert ours.isascii()
    assert same(json.loads(ours), json.loads(reference_dumps(value)))


@pytest.mark.parametrize(
    "value",
    [
        {"x": object()},
        {"x": Point(1, 2)},  # orjson alone writes a dataclass as an object
        {"x": datetime.datetime(2026, 12, 6, tzinfo=datetime.UTC)},  # ... a datetime as text
    ],
)
def test_dumps_refuses_what_json_refuses_to_hold(value: Any) -> None:
    with pytest.raises(TypeError):
        reference_dumps(value)
    with pytest.raises(TypeError):
        jsoncodec.dumps(value)
