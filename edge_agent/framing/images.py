"""An image model: one message (a file, an MQTT payload, a camera frame) is one image.

Each is decoded (edge_agent.imaging), resized and converted to the card's channels, and scaled
as the card says; drift watches its statistics (edge_agent.framing.watch), not its pixels.
"""

from __future__ import annotations

import numpy as np

from edge_agent.errors import SensorLineError
from edge_agent.framing.base import Framed, OnReject, wrong_format
from edge_agent.framing.watch import watched
from edge_agent.imaging import FORMAT, card_pixels, decode_image, scaled
from edge_agent.protocol.card import ModelCard


class ImageFramer:
    def __init__(self, card: ModelCard) -> None:
        assert card.input.image is not None
        self._spec = card.input
        self._image = card.input.image

    def restart(self) -> None:
        """Nothing to restart: each image is an item of its own."""

    def frame(self, messages: list[tuple[str, bytes]], reject: OnReject) -> Framed | None:
        images = []
        for fmt, raw in messages:
            try:
                if fmt != FORMAT:
                    raise wrong_format("image", fmt, (FORMAT,))
                images.append(card_pixels(decode_image(raw), self._image))
            except SensorLineError as exc:
                reject(exc)
        if not images:
            return None
        x = scaled(np.stack(images), self._image)
        return Framed(x, watched(self._spec, x))
