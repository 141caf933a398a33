"""Binary netpbm: PGM (P5, gray) and PPM (P6, RGB), 8 or 16 bits a sample (maxval up to
65535, scaled to 0..255). The ASCII variants (P1-P3) and bitmaps (P4) are refused."""

from __future__ import annotations

import numpy as np

from edge_agent.imaging.errors import bad_image, check_pixels, to_8bit

MAGIC = {b"P5": 1, b"P6": 3}
_WHITESPACE = b" \t\r\n\v\f"
_MAX_HEADER = 1024  # bytes; comments included


def decode_netpbm(data: bytes, max_pixels: int) -> np.ndarray:
    """P5/P6 bytes -> (height, width, 1 or 3) uint8 pixels."""
    channels = MAGIC.get(data[:2])
    if channels is None:
        raise bad_image(f"netpbm {data[:2]!r}: expected binary P5 (PGM) or P6 (PPM)")
    values, at = _header(data)
    width, height, maxval = values
    if width < 1 or height < 1 or not 1 <= maxval <= 65535:
        raise bad_image(
            f"netpbm of {width}x{height}, maxval {maxval}: expected at least 1x1 and a maxval "
            f"of 1 to 65535"
        )
    check_pixels(width, height, max_pixels)
    wide = maxval > 255
    count = width * height * channels
    size = count * (2 if wide else 1)
    if len(data) - at < size:
        raise bad_image(f"truncated netpbm: {len(data) - at} bytes of pixels, expected {size}")
    samples = np.frombuffer(data, ">u2" if wide else np.uint8, count, at)
    if int(samples.max()) > maxval:
        raise bad_image(f"netpbm: a sample of {int(samples.max())}, above its maxval {maxval}")
    return to_8bit(samples, maxval).reshape(height, width, channels)


def _header(data: bytes) -> tuple[tuple[int, int, int], int]:
    """(width, height, maxval) and where the pixels start."""
    numbers: list[int] = []
    at, end = 2, min(len(data), _MAX_HEADER)
    while len(numbers) < 3:
        while at < end and (data[at] in _WHITESPACE or data[at] == ord("#")):
            if data[at] == ord("#"):  # a comment runs to the end of its line
                while at < end and data[at] not in b"\r\n":
                    at += 1
            at += 1
        start = at
        while at < end and data[at : at + 1].isdigit():
            at += 1
        if start == at or at >= end or data[at] not in _WHITESPACE:
            raise bad_image(
                "netpbm header: expected width, height and maxval as decimal numbers, got "
                f"{data[: min(end, 40)]!r}"
            )
        numbers.append(int(data[start:at]))
    return (numbers[0], numbers[1], numbers[2]), at + 1  # one whitespace byte ends the header
