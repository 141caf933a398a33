"""The card's `input` section (edge_agent.protocol.input_spec): each kind read back as written,
and every wrong version of it refused with the field, what was expected and what arrived."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from edge_agent.errors import MessageError
from edge_agent.protocol.input_spec import (
    ImageSpec,
    InputSpec,
    WindowSpec,
    parse_input_spec,
    row_spec,
)

WINDOW = InputSpec("window", (128, 3), ("ax", "ay", "az"), window=WindowSpec(128, 64, 100.0))
IMAGE = InputSpec("image", (8, 8, 1), image=ImageSpec(8, 8, 1))
ROW = row_spec(["temp", "region"], {"region": ["east", "west"]})


@pytest.mark.parametrize("spec", [WINDOW, IMAGE, ROW], ids=["window", "image", "row"])
def test_each_kind_reads_back_as_written(spec: InputSpec) -> None:
    assert parse_input_spec(spec.to_json(), "card.input", []) == spec


def test_a_row_card_without_kind_or_features_takes_the_reference_names() -> None:
    spec = parse_input_spec({"name": "input", "shape": [None, 2]}, "card.input", ["a", "b"])
    assert spec == row_spec(["a", "b"])
    assert spec.size == 2


def test_sizes() -> None:
    assert WINDOW.size == 384
    assert IMAGE.size == 64
    signal = InputSpec("window", (6,), ("ax", "ay", "az"), window=WindowSpec(128, 64, 100.0))
    obj = signal.to_json()
    obj["window"]["signal"] = ["mean", "rms"]
    assert parse_input_spec(obj, "card.input", []).shape == (6,)


def _with(spec: InputSpec, path: tuple[str, ...], value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(spec.to_json())
    at = obj
    for key in path[:-1]:
        at = at[key]
    if value is _DROP:
        del at[path[-1]]
    else:
        at[path[-1]] = value
    return obj


_DROP = object()


@pytest.mark.parametrize(
    ("spec", "path", "value", "message"),
    [
        (ROW, ("kind",), "video", r"card.input.kind: expected one of .*got 'video'"),
        (ROW, ("categories",), [], r"card.input.categories: expected an object"),
        (ROW, ("categories",), {"humidity": ["x"]}, r"'humidity' is not a feature"),
        (ROW, ("categories", "region"), [], r"categories.region: expected a list of 1 to"),
        (ROW, ("categories", "region"), ["a", "a"], r"categories.region: expected unique"),
        (ROW, ("categories", "region"), ["a", 3], r"categories.region: expected a list"),
        (ROW, ("shape",), [None, 3], r"card.input.shape: expected \[null, 2\]"),
        (WINDOW, ("window",), _DROP, r"card.input: .*window"),
        (WINDOW, ("window", "size"), 0, r"window.size: expected a whole number from 1"),
        (WINDOW, ("window", "stride"), "64", r"window"),
        (WINDOW, ("window", "rate_hz"), -1, r"window.rate_hz: expected a positive number"),
        (WINDOW, ("window", "rate_hz"), float("nan"), r"window.rate_hz: expected a finite"),
        (WINDOW, ("window", "signal"), "rms", r"window.signal: expected a list"),
        (WINDOW, ("features",), [], r"card.input.features: expected a list of 1 to"),
        (WINDOW, ("shape",), [None, 3, 128], r"card.input.shape: expected \[null, 128, 3\]"),
        (IMAGE, ("image", "channels"), 2, r"image.channels: expected one of \(1, 3\), got 2"),
        (IMAGE, ("image", "height"), 100000, r"image.height: expected a whole number from 1"),
        (IMAGE, ("image", "resize"), "cubic", r"image.resize: expected one of"),
        (IMAGE, ("image", "scale"), "x", r"image.scale: expected a finite number"),
        (IMAGE, ("image", "scale"), 0, r"image.scale: expected a number other than 0, got 0"),
        (IMAGE, ("image", "width"), 0, r"image.width: expected a whole number from 1 to 4096"),
        (IMAGE, ("image",), _DROP, r"card.input: .*image"),
        (IMAGE, ("shape",), [None, 8, 8, 3], r"card.input.shape: expected \[null, 8, 8, 1\]"),
    ],
)
def test_wrong_input_sections_are_refused(
    spec: InputSpec, path: tuple[str, ...], value: Any, message: str
) -> None:
    with pytest.raises(MessageError, match=message):
        parse_input_spec(_with(spec, path, value), "card.input", ["temp", "region"])
