"""What a model card says the device feeds its model (the card's `input` section).

Three kinds, one contract: the agent frames what its sources deliver into model inputs of
`shape` (one item: a row, a window, an image) and into the values drift watches ("what the model
sees": the card's `reference.features`, a handful whatever the input size)::

    "input": {"kind": "row", "name": "input", "features": ["temp", "region"],
              "shape": [null, 2], "categories": {"region": ["east", "west"]}}
    "input": {"kind": "window", "name": "input", "features": ["ax", "ay", "az"],
              "shape": [null, 128, 3],
              "window": {"size": 128, "stride": 64, "rate_hz": 100.0, "signal": []}}
    "input": {"kind": "image", "name": "input", "shape": [null, 8, 8, 1],
              "image": {"height": 8, "width": 8, "channels": 1, "resize": "bilinear",
                        "scale": 0.0039215686, "offset": 0.0}}

- **row** (the default; a card without `kind` is a row card): one sensor line is one item of
  `len(features)` values. A feature named in `categories` is categorical: the line carries one
  of its category texts, and the model gets the category's index (the bundle's graph maps it
  back); a text not among them gets index `len(categories)` ("unknown").
- **window**: a sensor line is one sample of `len(features)` channels; `size` samples, every
  `stride` samples, at `rate_hz`, make one window. With `signal` empty the model takes the
  window itself, shape (size, channels); else it takes the signal features `signal` names
  (grammar: edge_agent.protocol.signal_names; computed by edge_agent.signal), per channel,
  shape (channels * len(signal),).
- **image**: one message (a file, an MQTT payload, a camera frame) is one image, resized to
  (height, width), with `channels` channels (1 gray, 3 RGB), scaled as `pixel * scale + offset`
  (pixels 0..255), shape (height, width, channels).

Row cards keep card version 2 (what older agents read); a card of another kind is version 3.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import field
from typing import Any

from edge_agent.errors import MessageError
from edge_agent.protocol.fields import field_of
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.signal_names import parse_signal

INPUT_KINDS = ("row", "window", "image")
# the message format of an image input ([[inputs]] format = "image"); here, not in
# edge_agent.imaging, so that naming it does not load the decoders
IMAGE_FORMAT = "image"
RESIZE_MODES = ("bilinear", "nearest")
IMAGE_CHANNELS = (1, 3)
MAX_CATEGORIES = 256  # per categorical feature
MAX_CATEGORY_TEXT = 64
MAX_WINDOW = 65536  # samples in one window
MAX_CHANNELS = 64
MAX_IMAGE_SIDE = 4096


@frozen
class WindowSpec:
    size: int  # samples per window
    stride: int  # samples between the starts of two windows
    rate_hz: float  # the sample rate the model was trained at
    signal: tuple[str, ...] = ()  # signal features (edge_agent.signal); empty: the raw window


@frozen
class ImageSpec:
    height: int
    width: int
    channels: int
    resize: str = "bilinear"
    scale: float = 1.0 / 255.0
    offset: float = 0.0


@frozen
class InputSpec:
    kind: str
    shape: tuple[int, ...]  # one item's model input, without the batch dimension
    features: tuple[str, ...] = ()  # row: feature names; window: channel names
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    window: WindowSpec | None = None
    image: ImageSpec | None = None

    @property
    def size(self) -> int:
        """Values in one item's model input."""
        return math.prod(self.shape)

    def to_json(self) -> dict[str, Any]:
        """The card's `input` section without `name` and `dtype` (the converter adds those)."""
        out: dict[str, Any] = {"kind": self.kind, "shape": [None, *self.shape]}
        if self.features:
            out["features"] = list(self.features)
        if self.categories:
            out["categories"] = {k: list(v) for k, v in self.categories.items()}
        if self.window is not None:
            w = self.window
            out["window"] = {
                "size": w.size,
                "stride": w.stride,
                "rate_hz": w.rate_hz,
                "signal": list(w.signal),
            }
        if self.image is not None:
            i = self.image
            out["image"] = {
                "height": i.height,
                "width": i.width,
                "channels": i.channels,
                "resize": i.resize,
                "scale": i.scale,
                "offset": i.offset,
            }
        return out


def describe_input(spec: InputSpec) -> str:
    """One item's input in a few words, for messages: `window (128, 3) of ax, ay, az`."""
    shape = str(tuple(spec.shape))
    named = f" of {', '.join(spec.features[:6])}{', ...' if len(spec.features) > 6 else ''}"
    return f"{spec.kind} {shape}{named if spec.features else ''}"


def category_text(categories: Sequence[str], value: float | None) -> str | None:
    """A categorical feature's value (its code) as people read it: the category's text; None
    for the unknown code or anything else (a device keeps no text its card does not list)."""
    if value is None or not math.isfinite(value) or value != int(value):
        return None
    return categories[int(value)] if 0 <= value < len(categories) else None


def category_code(categories: Sequence[str], text: str) -> float:
    """A text as the model takes it: its index among `categories`, the unknown code
    len(categories) for another text, NaN (missing) for an empty one; spaces around ignored."""
    text = text.strip()
    if not text:
        return math.nan
    try:
        return float(categories.index(text))
    except ValueError:
        return float(len(categories))


def row_spec(features: list[str], categories: Mapping[str, list[str]] | None = None) -> InputSpec:
    return InputSpec(
        "row",
        (len(features),),
        tuple(features),
        {k: tuple(v) for k, v in (categories or {}).items()},
    )


def _count(obj: dict[str, Any], key: str, where: str, high: int) -> int:
    value = field_of(obj, key, int, where)
    if not 1 <= value <= high:
        raise MessageError(f"{where}.{key}: expected a whole number from 1 to {high}, got {value}")
    return int(value)


def _number(obj: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MessageError(f"{where}.{key}: expected a finite number, got {value!r:.40}")
    return float(value)


def _names(value: object, where: str, high: int) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= high
        or not all(isinstance(v, str) and 0 < len(v) <= MAX_CATEGORY_TEXT for v in value)
    ):
        raise MessageError(
            f"{where}: expected a list of 1 to {high} texts of 1 to {MAX_CATEGORY_TEXT} "
            f"characters, got {value!r:.80}"
        )
    if len(set(value)) != len(value):
        raise MessageError(f"{where}: expected unique texts, got {value!r:.80}")
    return tuple(value)


def parse_input_spec(obj: dict[str, Any], where: str, profile_names: list[str]) -> InputSpec:
    """The card's `input` section; `profile_names` are the reference's feature names, which
    a row card without `features` (written before they were listed) takes as its own."""
    kind = obj.get("kind", "row")
    if kind not in INPUT_KINDS:
        raise MessageError(f"{where}.kind: expected one of {INPUT_KINDS}, got {kind!r:.40}")
    if kind == "row":
        names = tuple(obj.get("features") or profile_names)
        cats = obj.get("categories", {})
        if not isinstance(cats, dict):
            raise MessageError(f"{where}.categories: expected an object, got {cats!r:.60}")
        categories = {}
        for name, values in cats.items():
            if name not in names:
                raise MessageError(
                    f"{where}.categories: {name!r} is not a feature; features are {list(names)}"
                )
            categories[name] = _names(values, f"{where}.categories.{name}", MAX_CATEGORIES)
        spec = InputSpec("row", (len(names),), names, categories)
    elif kind == "window":
        at = f"{where}.window"
        w = field_of(obj, "window", dict, where)
        channels = _names(field_of(obj, "features", list, where), f"{where}.features", 64)
        size = _count(w, "size", at, MAX_WINDOW)
        stride = _count(w, "stride", at, MAX_WINDOW)
        rate = _number(w, "rate_hz", at, 0.0)
        if rate <= 0:
            raise MessageError(f"{at}.rate_hz: expected a positive number, got {rate}")
        signal = w.get("signal", [])
        if not isinstance(signal, list) or not all(isinstance(s, str) and s for s in signal):
            raise MessageError(f"{at}.signal: expected a list of feature names, got {signal!r:.60}")
        parse_signal(signal, size, rate, f"{at}.signal")
        window = WindowSpec(size, stride, rate, tuple(signal))
        shape = (len(channels) * len(signal),) if signal else (size, len(channels))
        spec = InputSpec("window", shape, channels, window=window)
    else:
        at = f"{where}.image"
        i = field_of(obj, "image", dict, where)
        height = _count(i, "height", at, MAX_IMAGE_SIDE)
        width = _count(i, "width", at, MAX_IMAGE_SIDE)
        depth = field_of(i, "channels", int, at)
        if depth not in IMAGE_CHANNELS:
            raise MessageError(f"{at}.channels: expected one of {IMAGE_CHANNELS}, got {depth}")
        resize = i.get("resize", "bilinear")
        if resize not in RESIZE_MODES:
            raise MessageError(f"{at}.resize: expected one of {RESIZE_MODES}, got {resize!r:.40}")
        scale = _number(i, "scale", at, 1.0 / 255.0)
        if scale == 0:
            raise MessageError(f"{at}.scale: expected a number other than 0, got 0")
        image = ImageSpec(height, width, depth, resize, scale, _number(i, "offset", at, 0.0))
        spec = InputSpec("image", (height, width, depth), image=image)
    _check_shape(obj, where, spec)
    return spec


def _check_shape(obj: Mapping[str, Any], where: str, spec: InputSpec) -> None:
    """A card's `shape`, where it gives one, is [null, *the shape its kind implies]."""
    shape = obj.get("shape")
    if shape is None:
        return
    if not isinstance(shape, list) or list(shape[1:]) != list(spec.shape) or len(shape) < 2:
        raise MessageError(
            f"{where}.shape: expected [null, {', '.join(map(str, spec.shape))}] for this "
            f"{spec.kind} input, got {shape!r:.60}"
        )
