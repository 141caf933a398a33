"""Images on the device, in numpy (the base install has no Pillow): decoding (PNG, binary
PGM/PPM, .npy natively; JPEG and more through Pillow or OpenCV where installed), resizing,
channels and scaling to the card's `image` section, and the statistics drift watches.

Pure: bytes and arrays in, arrays out. An image that cannot be used raises
SensorLineError("bad-image", what is wrong), counted like a bad sensor line.
"""

from edge_agent.imaging.decode import MAX_PIXELS, decode_image
from edge_agent.imaging.errors import BAD_IMAGE
from edge_agent.imaging.npy import encode_npy
from edge_agent.imaging.pixels import card_pixels, resize, scaled, to_channels, unscaled
from edge_agent.imaging.stats import image_stats, stat_names
from edge_agent.protocol.input_spec import IMAGE_FORMAT as FORMAT

__all__ = [
    "BAD_IMAGE",
    "FORMAT",
    "MAX_PIXELS",
    "card_pixels",
    "decode_image",
    "encode_npy",
    "image_stats",
    "resize",
    "scaled",
    "stat_names",
    "to_channels",
    "unscaled",
]
