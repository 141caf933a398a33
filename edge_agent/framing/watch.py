"""What drift watches of a model's inputs: "what the model sees", a handful of values per
item whatever the input size. One implementation for the converter (the card's reference
profile) and the agent (each framed item), so the two cannot disagree."""

from __future__ import annotations

import numpy as np

from edge_agent.errors import ConfigError
from edge_agent.imaging import image_stats, stat_names, unscaled
from edge_agent.protocol.input_spec import InputSpec


def watched_names(spec: InputSpec) -> list[str]:
    """The names of the watched values, as the card's `reference.features` lists them."""
    if spec.kind == "row":
        return list(spec.features)
    if spec.kind == "image" and spec.image is not None:
        return stat_names(spec.image.channels)
    raise ConfigError(f"input kind {spec.kind!r}: nothing is watched for it yet")


def watched(spec: InputSpec, x: np.ndarray) -> np.ndarray:
    """(n, *spec.shape) model inputs -> (n, len(watched_names(spec))) watched values."""
    if spec.kind == "row":
        return x
    if spec.kind == "image" and spec.image is not None:  # on the pixels x was scaled from
        return image_stats(unscaled(x, spec.image))
    raise ConfigError(f"input kind {spec.kind!r}: nothing is watched for it yet")
