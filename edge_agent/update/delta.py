"""Binary deltas between two versions of a bundle (pure: bytes in, bytes out).

A delta rebuilds the new bundle from the old one the device already has. It is a zstd frame
(python-zstandard) compressed with the old bundle as a raw-content dictionary, so whatever the
new bundle repeats of the old one (the card's text, unchanged tensors, the zip's structure)
costs a few bytes per match. Fine-tuned weights are not repeated, only near: an int8 weight
moves by a step or two. So before compression, each 4 KiB block of the new bundle is replaced
by its byte-wise difference (mod 256) to the block at the same place in the old bundle, counted
from the start or from the end (content added or removed earlier in the file shifts what
follows), when that difference is the cheaper of the three to code (its zero-order entropy is
lower). A weight that did not change is a 0, one that moved a step a 1 or a 255: zstd codes
these in a bit or two. The bundle keeps its model file stored, not deflated
(converters/bundle.py), so that the weights sit in the zip as they are.

    header   MAGIC, block size (u32), base length (u64), result length (u64),
             sha256 of the base (32 bytes), sha256 of the result (32 bytes)
    frame    zstd, dictionary = the base: one mode byte per block (RAW, FROM_START,
             FROM_END), then the transformed result

`apply_delta` is bounded by the length the caller expects (the signed length of the full
target): it refuses a delta that announces another length before it decompresses anything, and
never reads more than that length out of the frame. It checks the base and the result against
the hashes in the header; the device checks the result against the full target's signed hashes
as well (edge_agent/update/updater.py), exactly as if it had downloaded the full bundle.
"""

from __future__ import annotations

import struct

import numpy as np
import zstandard

from edge_agent.errors import BundleRejected
from edge_agent.protocol.reasons import Reason
from edge_agent.update.digest import sha256

MAGIC = b"EFDELTA1"
_HEADER = struct.Struct(">8sIQQ32s32s")
BLOCK = 4096
LEVEL = 19  # zstd's level up to LARGE bytes of result: about 1 MB/s on one core
LARGE, LEVEL_LARGE = 8 * 1024 * 1024, 9  # past LARGE: ten times faster, a few points larger
RAW, FROM_START, FROM_END = 0, 1, 2
_MIN_WINDOW_LOG, _MAX_WINDOW_LOG = 20, 30  # 30: what a 32-bit (armv7) zstd decoder opens


def make_delta(base: bytes, result: bytes, level: int | None = None, block: int = BLOCK) -> bytes:
    """The delta that turns `base` into `result` (zstd at `level`; by default LEVEL, or
    LEVEL_LARGE for a result past LARGE bytes)."""
    if level is None:
        level = LEVEL if len(result) <= LARGE else LEVEL_LARGE
    new = np.frombuffer(result, dtype=np.uint8)
    old = np.frombuffer(base, dtype=np.uint8)
    modes = _choose_modes(old, new, block)
    transformed = new.copy()
    for start, end, aligned in _aligned_blocks(modes, len(old), len(new), block):
        transformed[start:end] -= old[aligned : aligned + end - start]  # uint8: mod 256
    params = zstandard.ZstdCompressionParameters.from_level(
        level,
        source_size=len(modes) + len(new),
        window_log=_window_log(len(base), len(result)),
        enable_ldm=True,
        write_checksum=True,
    )
    frame = zstandard.ZstdCompressor(
        dict_data=_dictionary(base), compression_params=params
    ).compress(modes.tobytes() + transformed.tobytes())
    header = _HEADER.pack(
        MAGIC,
        block,
        len(base),
        len(result),
        sha256(base).digest(),
        sha256(result).digest(),
    )
    return header + frame


def apply_delta(base: bytes, delta: bytes, result_length: int) -> bytes:
    """The bundle `delta` rebuilds from `base`; BundleRejected (`mismatch` for another base,
    `oversized` for another length than `result_length`, `tampered` for anything else that
    does not decode or check) before anything larger than `result_length` is produced."""
    if len(delta) < _HEADER.size:
        raise BundleRejected(
            Reason.TAMPERED,
            f"delta: {len(delta)} bytes, shorter than its {_HEADER.size}-byte header",
        )
    magic, block, base_length, length, base_sha, result_sha = _HEADER.unpack_from(delta)
    if magic != MAGIC:
        raise BundleRejected(Reason.TAMPERED, f"delta: expected magic {MAGIC!r}, got {magic!r}")
    if length != result_length:
        raise BundleRejected(
            Reason.OVERSIZED if length > result_length else Reason.TRUNCATED,
            f"delta: rebuilds {length} bytes, the signed target has {result_length}",
        )
    if base_length != len(base) or sha256(base).digest() != base_sha:
        raise BundleRejected(
            Reason.MISMATCH,
            f"delta: made against another base ({base_length} bytes, sha256 "
            f"{base_sha.hex()[:16]}), this one has {len(base)} bytes, sha256 "
            f"{sha256(base).hexdigest()[:16]}",
        )
    if block < 1:
        raise BundleRejected(Reason.TAMPERED, f"delta: expected a block size >= 1, got {block}")
    blocks = -(-length // block)
    content = _decompress(base, delta[_HEADER.size :], blocks + length)
    modes = np.frombuffer(content, dtype=np.uint8, count=blocks)
    out = np.frombuffer(content, dtype=np.uint8, offset=blocks).copy()
    old = np.frombuffer(base, dtype=np.uint8)
    if modes.size and int(modes.max()) > FROM_END:
        raise BundleRejected(Reason.TAMPERED, f"delta: unknown block mode {int(modes.max())}")
    for start, end, aligned in _aligned_blocks(modes, len(old), length, block):
        if aligned < 0 or aligned + end - start > len(old):
            raise BundleRejected(
                Reason.TAMPERED, f"delta: block at {start} refers to bytes outside the base"
            )
        out[start:end] += old[aligned : aligned + end - start]
    rebuilt = out.tobytes()
    if sha256(rebuilt).digest() != result_sha:
        raise BundleRejected(Reason.TAMPERED, "delta: the rebuilt bytes do not match its sha256")
    return rebuilt


def _decompress(base: bytes, frame: bytes, expected: int) -> bytes:
    """Exactly `expected` bytes out of `frame`, reading at most one more to know it ends."""
    try:
        declared = zstandard.frame_content_size(frame)
        if declared not in (expected, zstandard.CONTENTSIZE_UNKNOWN):
            raise BundleRejected(
                Reason.TAMPERED, f"delta: its frame holds {declared} bytes, expected {expected}"
            )
        reader = zstandard.ZstdDecompressor(
            dict_data=_dictionary(base), max_window_size=1 << _MAX_WINDOW_LOG
        ).stream_reader(frame)
        with reader:
            content = reader.read(expected + 1)
            while len(content) < expected + 1:  # read() may return less than asked
                more = reader.read(expected + 1 - len(content))
                if not more:
                    break
                content += more
    except zstandard.ZstdError as exc:
        raise BundleRejected(Reason.TAMPERED, f"delta: does not decompress ({exc})") from exc
    if len(content) != expected:
        raise BundleRejected(
            Reason.TAMPERED,
            f"delta: its frame holds {'more than ' if len(content) > expected else ''}"
            f"{min(len(content), expected)} bytes, expected {expected}",
        )
    return content


def _dictionary(base: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def _window_log(base: int, result: int) -> int:
    """A window that reaches from the end of the result back to the start of the base."""
    return min(max((base + result).bit_length(), _MIN_WINDOW_LOG), _MAX_WINDOW_LOG)


def _choose_modes(old: np.ndarray, new: np.ndarray, block: int) -> np.ndarray:
    """Per block of `new`: RAW, FROM_START or FROM_END, whichever codes in the fewest bits by
    the block's byte histogram (RAW on a tie; an alignment that leaves the base is no choice)."""
    blocks = -(-len(new) // block)
    modes = np.zeros(blocks, dtype=np.uint8)
    shift = len(new) - len(old)
    for i in range(blocks):
        start, end = i * block, min((i + 1) * block, len(new))
        best = _bits(new[start:end])
        for mode, at in ((FROM_START, start), (FROM_END, start - shift)):
            if at >= 0 and at + end - start <= len(old):
                cost = _bits(new[start:end] - old[at : at + end - start])
                if cost < best:
                    best, modes[i] = cost, mode
    return modes


def _bits(values: np.ndarray) -> float:
    """The zero-order entropy of `values` times their number: about what coding them costs."""
    counts = np.bincount(values, minlength=256)
    counts = counts[counts > 0]
    return float(-(counts * np.log2(counts / len(values))).sum())


def _aligned_blocks(
    modes: np.ndarray, base_length: int, length: int, block: int
) -> list[tuple[int, int, int]]:
    """(start, end, where the partner starts in the base) of each block that is a difference."""
    shift = length - base_length
    out = []
    for i in np.flatnonzero(modes):
        start = int(i) * block
        end = min(start + block, length)
        out.append((start, end, start if modes[i] == FROM_START else start - shift))
    return out
