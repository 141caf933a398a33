"""From what sources deliver to what a model takes: rows, windows of samples, images.

`framer_for(card)` picks the framer the card's input kind asks for (edge_agent.protocol.
input_spec); each turns a micro-batch of (format, raw bytes) messages into model inputs and
the values drift watches, and rejects what it cannot use with a reason code.
"""

from edge_agent.framing.base import Framed, Framer, OnReject
from edge_agent.framing.factory import framer_for

__all__ = ["Framed", "Framer", "OnReject", "framer_for"]
