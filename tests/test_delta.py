"""Deltas between bundle versions (edge_agent.update.delta), without a broker: they rebuild the
new bytes exactly, stay small where the new version moved its bytes a step, and refuse a
corrupt delta, another base and an output larger than the signed length."""

from __future__ import annotations

import hashlib
import struct
import tracemalloc

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.errors import BundleRejected
from edge_agent.protocol.reasons import Reason
from edge_agent.update.delta import BLOCK, MAGIC, apply_delta, make_delta

HEADER = struct.Struct(">8sIQQ32s32s")


def _weights(rng: np.random.Generator, n: int) -> np.ndarray:
    """int8 weights as a quantizer writes them: mostly small, a few large."""
    return np.clip(np.round(rng.normal(0, 30, n)), -127, 127).astype(np.int8)


def _versions(added: int = 0, removed: int = 0) -> tuple[bytes, bytes]:
    """A 'bundle' (a header, int8 weights, a trailer) and its fine-tuned successor: every weight
    nudged by at most a step, and the header `added` bytes longer or `removed` bytes shorter
    in front of them (so they line up from the end, not from the start)."""
    rng = np.random.default_rng(7)
    header = rng.bytes(3000)
    weights = _weights(rng, 200_000)
    trailer = rng.bytes(500)
    nudged = np.clip(weights.astype(np.int16) + rng.integers(-1, 2, weights.size), -127, 127)
    old = header + weights.tobytes() + trailer
    new = header[removed:] + rng.bytes(added) + nudged.astype(np.int8).tobytes() + trailer
    return old, new


@pytest.mark.parametrize(("added", "removed"), [(0, 0), (37, 0), (0, 1200)])
def test_a_nudged_version_rebuilds_exactly_from_a_small_delta(added: int, removed: int) -> None:
    old, new = _versions(added, removed)
    delta = make_delta(old, new)
    assert apply_delta(old, delta, len(new)) == new
    plain = len(zstandard.ZstdCompressor(level=19).compress(new))
    assert len(delta) < 0.5 * plain, (len(delta), plain)  # the steps, not the weights


def test_identical_versions_cost_next_to_nothing() -> None:
    old, _ = _versions()
    delta = make_delta(old, old)
    assert len(delta) < 400
    assert apply_delta(old, delta, len(old)) == old


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3 * BLOCK), st.binary(max_size=3 * BLOCK))
def test_any_two_byte_strings_round_trip(old: bytes, new: bytes) -> None:
    assert apply_delta(old, make_delta(old, new), len(new)) == new


def test_a_delta_against_another_base_is_refused_as_mismatch() -> None:
    old, new = _versions()
    delta = make_delta(old, new)
    other = bytearray(old)
    other[10] ^= 1
    with pytest.raises(BundleRejected) as err:
        apply_delta(bytes(other), delta, len(new))
    assert err.value.reason == Reason.MISMATCH
    assert "another base" in str(err.value)


@pytest.mark.parametrize("where", [0, 9, HEADER.size + 5, -20, -1])
def test_a_corrupt_delta_is_refused(where: int) -> None:
    old, new = _versions()
    delta = bytearray(make_delta(old, new))
    delta[where] ^= 0x55
    with pytest.raises(BundleRejected) as err:
        apply_delta(old, bytes(delta), len(new))
    assert err.value.reason in (Reason.TAMPERED, Reason.MISMATCH, Reason.OVERSIZED), err.value


def test_a_truncated_delta_is_refused() -> None:
    """Cut anywhere before the frame's trailing checksum, a delta is refused; without only
    that checksum, it still rebuilds the right bytes (checked against its sha256), never
    other ones."""
    old, new = _versions()
    delta = make_delta(old, new)
    for cut in (5, HEADER.size, len(delta) // 2, len(delta) - 5):
        with pytest.raises(BundleRejected) as err:
            apply_delta(old, delta[:cut], len(new))
        assert err.value.reason == Reason.TAMPERED
    assert apply_delta(old, delta[:-1], len(new)) == new


def test_a_delta_that_rebuilds_another_length_than_signed_is_refused_first() -> None:
    old, new = _versions()
    delta = make_delta(old, new)
    with pytest.raises(BundleRejected) as err:
        apply_delta(old, delta, len(new) - 1)
    assert err.value.reason == Reason.OVERSIZED
    assert f"rebuilds {len(new)} bytes, the signed target has {len(new) - 1}" in str(err.value)


def _bomb(base: bytes, claimed: int, content_size: bool) -> bytes:
    """A delta whose header claims `claimed` bytes and whose frame unpacks to 256 MB."""
    frame = zstandard.ZstdCompressor(
        level=1,
        write_content_size=content_size,
        dict_data=zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT),
    )
    writer = frame.chunker(chunk_size=1 << 20)
    chunks = [c for _ in range(256) for c in writer.compress(bytes(1 << 20))]
    chunks += list(writer.finish())
    header = HEADER.pack(
        MAGIC,
        BLOCK,
        len(base),
        claimed,
        hashlib.sha256(base).digest(),
        hashlib.sha256(bytes(claimed)).digest(),
    )
    return header + b"".join(chunks)


@pytest.mark.parametrize("content_size", [False, True])
def test_an_output_bomb_is_refused_without_unpacking_it(content_size: bool) -> None:
    old, _ = _versions()
    bomb = _bomb(old, 10_000, content_size)
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(BundleRejected) as err:
            apply_delta(old, bomb, 10_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.reason == Reason.TAMPERED
    assert "expected" in str(err.value)
    assert peak < 8 * 1024 * 1024, f"{peak} bytes held while refusing a 256 MB bomb"
