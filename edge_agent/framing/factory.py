"""The framer a card's input kind asks for."""

from __future__ import annotations

from edge_agent.errors import BundleRejected
from edge_agent.framing.base import Framer
from edge_agent.framing.rows import RowFramer
from edge_agent.protocol.card import ModelCard
from edge_agent.protocol.reasons import Reason


def framer_for(card: ModelCard) -> Framer:
    kind = card.input.kind
    if kind == "row":
        return RowFramer(card)
    # the image and window framers (with the image decoders and signal features they bring)
    # are imported for a card that asks for them, not by every agent
    if kind == "image":
        from edge_agent.framing.images import ImageFramer

        return ImageFramer(card)
    if kind == "window":
        from edge_agent.framing.windows import WindowFramer

        return WindowFramer(card)
    raise BundleRejected(Reason.BAD_CARD, f"input kind {kind!r} is not one this agent serves")
