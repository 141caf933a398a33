"""Deltas between bundle versions, without a broker: they rebuild the new bytes exactly, stay
small where the new version moved its bytes a step, and refuse a corrupt delta, another base and
an output larger than the signed length (edge_agent.update.delta); the hub makes each once, from
the version a device reported, and only where it saves enough (cloud_hub.signing.deltas); the
device checks that the signed delta rebuilds the target it was told (Verifier.lookup_delta)."""

from __future__ import annotations

import hashlib
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_hub.signing.deltas import Deltas, delta_base
from cloud_hub.signing.tuf_repo import TufRepository
from edge_agent.errors import BundleRejected
from edge_agent.protocol.messages import DeltaRef, ModelRef
from edge_agent.protocol.reasons import Reason
from edge_agent.update.delta import BLOCK, MAGIC, apply_delta, make_delta
from edge_agent.update.mirror import TufMirror
from edge_agent.update.verify import Verifier, install_trusted_root

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


# --- which delta the hub offers, and what the device checks of it ----------------------------

V1, V2, V3 = ModelRef("iris", 1), ModelRef("iris", 2), ModelRef("iris", 3)


@pytest.fixture
def repo(tmp_path: Path) -> TufRepository:
    """A hub's repository with iris@1..3: each version's 'bundle' the one before, nudged."""
    repo = TufRepository(tmp_path / "hub")
    repo.init()
    old, new = _versions()
    newer, _ = _versions(added=5)
    for model, data in ((V1, old), (V2, new), (V3, newer[:-7] + new[-7:])):
        repo.add_bundle(model, data, "00" * 32)
    return repo


def test_delta_base_is_an_older_version_of_the_same_model() -> None:
    assert delta_base(V1, V3) == V1
    assert delta_base(None, V3) is None  # a device that reported no model
    assert delta_base(V3, V3) is None
    assert delta_base(ModelRef("iris", 4), V3) is None  # newer: a rollback, not a delta
    assert delta_base(ModelRef("wine", 1), V3) is None


def test_the_hub_makes_each_delta_once_from_what_the_device_reported(repo: TufRepository) -> None:
    deltas = Deltas(repo)
    assert deltas.offer(None, V2) is None
    offered = deltas.offer(V1, V3)
    assert offered == DeltaRef(V1, "deltas/iris/1-3.delta")
    info = repo.targets()[offered.target]
    assert info["delta"] == {
        "base": "iris/1.zip",
        "base_sha256": repo.targets()["iris/1.zip"]["sha256"],
        "result": "iris/3.zip",
        "result_sha256": repo.targets()["iris/3.zip"]["sha256"],
    }
    version = repo.timestamp_version()
    assert deltas.offer(V1, V3) == offered  # signed once, offered again
    assert Deltas(repo).offer(V1, V3) == offered  # by another hub process too
    assert repo.timestamp_version() == version
    base, result = repo.read_target("iris/1.zip"), repo.read_target("iris/3.zip")
    assert apply_delta(base, repo.read_target(offered.target), len(result)) == result
    assert "deltas/iris/2-3.delta" not in repo.targets()


def test_a_delta_that_saves_too_little_is_not_offered(repo: TufRepository) -> None:
    unrelated = np.random.default_rng(3).bytes(50_000)
    repo.add_bundle(ModelRef("iris", 4), unrelated, "00" * 32)
    deltas = Deltas(repo, max_share=0.7)
    version = repo.timestamp_version()
    assert deltas.offer(V3, ModelRef("iris", 4)) is None
    assert repo.timestamp_version() == version  # nothing signed
    assert not [p for p in repo.targets() if p.startswith("deltas/")]


def test_no_delta_between_bytes_other_than_the_signed_ones(repo: TufRepository) -> None:
    stored = repo.targets_dir / "iris/2.zip"
    data = bytearray(stored.read_bytes())
    data[100] ^= 1  # the hub's disk no longer holds what it signed
    stored.write_bytes(bytes(data))
    assert Deltas(repo).offer(V1, V2) is None
    assert Deltas(repo).offer(V2, V3) is None
    assert not [p for p in repo.targets() if p.startswith("deltas/")]


def test_no_delta_from_a_version_this_hub_never_published(tmp_path: Path) -> None:
    repo = TufRepository(tmp_path / "hub")
    repo.init()
    repo.add_bundle(V2, b"v2", "00" * 32)
    assert Deltas(repo).offer(V1, V2) is None


def _device(tmp_path: Path, repo: TufRepository) -> Verifier:
    """A device that trusts `repo` and has received its metadata."""
    install_trusted_root(tmp_path / "device", repo.trusted_root())
    mirror = TufMirror()
    for name, payload in repo.published().items():
        mirror.put(name, payload)
    return Verifier(tmp_path / "device", mirror, 10**7)


def test_the_device_checks_the_delta_rebuilds_the_target_it_was_told(
    tmp_path: Path, repo: TufRepository
) -> None:
    offered = Deltas(repo).offer(V1, V3)
    assert offered is not None
    verifier = _device(tmp_path, repo)
    v3 = verifier.lookup("iris/3.zip", V3, V1)
    delta, base_sha256 = verifier.lookup_delta(offered, v3)
    assert base_sha256 == repo.targets()["iris/1.zip"]["sha256"]
    assert (delta.path, delta.length) == (offered.target, repo.targets()[offered.target]["length"])

    v2 = verifier.lookup("iris/2.zip", V2, V1)
    with pytest.raises(BundleRejected) as err:  # names iris/3.zip as its result, not iris/2.zip
        verifier.lookup_delta(offered, v2)
    assert err.value.reason == Reason.MISMATCH
    with pytest.raises(BundleRejected) as err:  # from iris@1, not iris@2
        verifier.lookup_delta(DeltaRef(V2, offered.target), v3)
    assert err.value.reason == Reason.MISMATCH
    with pytest.raises(BundleRejected) as err:
        verifier.lookup_delta(DeltaRef(V2, "deltas/iris/2-3.delta"), v3)
    assert err.value.reason == Reason.UNKNOWN_TARGET
