"""A transfer's bytes live on disk, not in memory: chunks written in any order (and again) read
back as the target, a restart resumes from the checkpointed bitmap, and what is missing or
does not belong is refused with a reason. Real files in a temporary folder."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.errors import BundleRejected
from edge_agent.protocol.transfer import Reassembly, chunk_bounds
from edge_agent.update.partial import PartialTransfer

TARGET = "wine/2.zip"


def _payload(size: int) -> bytes:
    return bytes((i * 7 + 3) % 251 for i in range(size))


def _open(root: Path, payload: bytes, chunk_size: int) -> tuple[PartialTransfer, Reassembly]:
    sha = hashlib.sha256(payload).hexdigest()
    partial = PartialTransfer(root, TARGET, len(payload), sha)
    r = Reassembly(TARGET, len(payload), chunk_size)
    partial.restore(r)
    return partial, r


def _take(partial: PartialTransfer, r: Reassembly, payload: bytes, index: int) -> None:
    start, end = chunk_bounds(index, len(payload), r.chunk_size)
    if r.accept(index, len(payload), payload[start:end]):  # what the downloader does
        partial.write(index, payload[start:end], r.chunk_size)


@settings(max_examples=40, derandomize=True, database=None, deadline=None)
@given(size=st.integers(0, 300), chunk_size=st.integers(1, 64), data=st.data())
def test_chunks_in_any_order_read_back_as_the_target(
    tmp_path_factory: pytest.TempPathFactory, size: int, chunk_size: int, data: Any
) -> None:
    payload = _payload(size)
    partial, r = _open(tmp_path_factory.mktemp("xfer"), payload, chunk_size)
    order = data.draw(st.permutations(range(r.total)))
    again = data.draw(st.lists(st.sampled_from(range(r.total)), max_size=4))
    for index in [*order, *again]:
        _take(partial, r, payload, index)
    partial.checkpoint(r)
    assert partial.read(r) == payload


def test_a_restart_resumes_what_was_checkpointed(tmp_path: Path) -> None:
    payload = _payload(100)
    partial, r = _open(tmp_path, payload, 16)  # 7 chunks
    for index in (0, 3, 6):
        _take(partial, r, payload, index)
    partial.checkpoint(r)
    _take(partial, r, payload, 1)  # written after the last checkpoint: not claimed
    again, r2 = _open(tmp_path, payload, 16)
    assert r2.resumed == 3 and r2.received == 3
    assert r2.to_request(0.0, 8, 5.0) == [1, 2, 4, 5]
    for index in (1, 2, 4, 5):
        _take(again, r2, payload, index)
    again.checkpoint(r2)
    assert again.read(r2) == payload


def test_an_incomplete_transfer_is_truncated(tmp_path: Path) -> None:
    payload = _payload(40)
    partial, r = _open(tmp_path, payload, 16)
    _take(partial, r, payload, 0)
    with pytest.raises(BundleRejected) as info:
        partial.read(r)
    assert info.value.reason == "truncated"
    assert f"{TARGET}: 1 of 3 chunks arrived" in str(info.value)


def test_a_file_that_lost_its_bytes_is_truncated_not_trusted(tmp_path: Path) -> None:
    payload = _payload(40)
    partial, r = _open(tmp_path, payload, 16)
    for index in range(r.total):
        _take(partial, r, payload, index)
    partial.checkpoint(r)
    data_file = next(tmp_path.rglob("data.part"))
    data_file.write_bytes(payload[:20])  # cut short under the agent
    with pytest.raises(BundleRejected) as info:
        partial.read(r)
    assert info.value.reason == "truncated"
    assert "20 of 40 bytes on disk" in str(info.value)
    # and a restart claims only the chunks the short file still holds
    _, r2 = _open(tmp_path, payload, 16)
    assert r2.resumed == 1


def test_what_was_kept_for_another_target_is_discarded(tmp_path: Path) -> None:
    payload = _payload(40)
    partial, r = _open(tmp_path, payload, 16)
    _take(partial, r, payload, 0)
    partial.checkpoint(r)
    sha = hashlib.sha256(payload).hexdigest()
    other = PartialTransfer(tmp_path, "wine/3.zip", len(payload), sha)  # same folder, other meta
    r2 = Reassembly("wine/3.zip", len(payload), 16)
    assert other.restore(r2) == 0
    assert not (tmp_path / sha).exists()
