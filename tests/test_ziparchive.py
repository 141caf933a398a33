"""edge_agent.update.ziparchive, the agent's reader of bundle archives, against the standard
library's zipfile as the independent party: archives zipfile writes read back the same; what a
bundle never holds, or bytes damaged anywhere, are refused with ZipError saying what was
expected and what was found, never another exception and never other bytes."""

from __future__ import annotations

import io
import random
import re
import struct
import zipfile
import zlib

import pytest

from edge_agent.update.ziparchive import ZipError, members, read

CONTENT = {
    "card.json": b'{"name": "iris"}' * 50,
    "model.onnx": bytes(random.Random(1).randrange(256) for _ in range(5000)),
    "empty.npy": b"",
    "\u00e9t\u00e9/sample.npy": b"\x93NUMPY" + b"\0" * 100,  # a non-ASCII name (UTF-8 flag)
}


def archive(method: int = zipfile.ZIP_DEFLATED, content: dict[str, bytes] = CONTENT) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, data in content.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_what_zipfile_writes_reads_back_the_same(method: int) -> None:
    data = archive(method)
    found = members(data)
    assert list(found) == list(CONTENT)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name, member in found.items():
            assert read(data, member) == zf.read(name) == CONTENT[name]
            assert member.size == zf.getinfo(name).file_size


def test_a_member_compressed_another_way_is_refused_by_name() -> None:
    data = archive(zipfile.ZIP_BZIP2, {"model.onnx": b"x" * 100})
    (member,) = members(data).values()
    with pytest.raises(ZipError, match=r"model.onnx: expected stored \(0\) or deflated \(8\), "):
        read(data, member)


def test_not_a_zip_and_an_empty_archive() -> None:
    with pytest.raises(ZipError, match="expected a zip archive, found no end of central"):
        members(b"this is a CSV file, not a bundle\n" * 10)
    assert members(archive(content={})) == {}


def test_a_name_twice_is_refused() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("model.onnx", b"first")
        zf.writestr("model.onnx", b"second")
    with pytest.raises(
        ZipError, match=re.escape("model.onnx: expected each member once, found it twice")
    ):
        members(buf.getvalue())


def _patch_entry(data: bytes, field: int, value: int) -> bytes:
    """The archive with one field of its first central directory entry changed."""
    at = data.find(b"PK\x01\x02")
    fields = list(struct.unpack_from("<4s6H3L5H2L", data, at))
    fields[field] = value
    return data[:at] + struct.pack("<4s6H3L5H2L", *fields) + data[at + 46 :]


@pytest.mark.parametrize(("field", "value"), [(10, 1), (12, -46)])
def test_a_central_directory_whose_count_or_size_leaves_entries_out_is_refused(
    field: int, value: int
) -> None:
    """The end record's entry count and directory size must agree with the entries: a count
    one short would hide a member (zipfile, which goes by the size, lists it; a bundle holds
    its members and nothing else), a size that disagrees moves zipfile's directory."""
    data = bytearray(archive(content={"card.json": b"{}", "model.onnx": b"m", "x.bin": b"x"}))
    end = data.rfind(b"PK\x05\x06")
    if field == 10:  # entries on this disk and in all: one fewer
        struct.pack_into("<HH", data, end + 8, 2, 2)
    else:  # the directory's size: short of its last entry
        (size,) = struct.unpack_from("<L", data, end + field)
        struct.pack_into("<L", data, end + field, size + value)
    with pytest.raises(ZipError, match="central directory"):
        members(bytes(data))


def test_an_encrypted_member_is_refused() -> None:
    data = _patch_entry(archive(content={"model.onnx": b"x" * 10}), 3, 0x1)
    with pytest.raises(ZipError, match=re.escape("model.onnx: expected a member in the clear")):
        members(data)


def test_a_member_that_inflates_past_its_stated_size_is_stopped_there() -> None:
    """A zip bomb's trick: a small stated size, a large inflation. Inflating stops one byte
    past the stated size."""
    big = {"model.onnx": b"\0" * 10_000_000}
    data = _patch_entry(archive(content=big), 9, 1000)
    (member,) = members(data).values()
    with pytest.raises(ZipError, match=r"model.onnx: expected 1000 bytes, inflated 1001\+"):
        read(data, member)


def test_a_changed_byte_is_caught_by_the_crc() -> None:
    content = {"model.onnx": b"weights " * 100}
    data = bytearray(archive(zipfile.ZIP_STORED, content))
    data[data.find(b"weights") + 3] ^= 0x20
    (member,) = members(bytes(data)).values()
    with pytest.raises(ZipError, match=re.escape("model.onnx: its bytes do not match its CRC-32")):
        read(bytes(data), member)


def test_every_cut_short_archive_is_refused() -> None:
    data = archive(content={"card.json": b"{}", "model.onnx": b"m" * 300})
    for size in range(len(data)):
        cut = data[:size]
        try:
            found = members(cut)
            got = {name: read(cut, m) for name, m in found.items()}
        except ZipError:
            continue
        # a cut that leaves a whole archive (none here: the end record is last) reads the same
        assert got == {"card.json": b"{}", "model.onnx": b"m" * 300}, size


@pytest.mark.parametrize("seed", range(3))
def test_bytes_damaged_anywhere_give_the_right_bytes_or_a_zip_error(seed: int) -> None:
    """Single bytes changed at random places, many times: each read gives the member's own
    bytes (the change hit a field nobody reads, such as a date) or ZipError; never another
    exception, never other bytes."""
    rng = random.Random(seed)
    data = archive()
    refused = 0
    for _ in range(400):
        damaged = bytearray(data)
        damaged[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        try:
            found = members(bytes(damaged))
            for name, member in found.items():
                assert read(bytes(damaged), member) == CONTENT[name]
        except ZipError:
            refused += 1
    assert refused > 100


def test_a_deflate_stream_that_is_not_one_says_so() -> None:
    content = {"model.onnx": zlib.compress(b"x" * 1000)}
    data = bytearray(archive(zipfile.ZIP_DEFLATED, content))
    (member,) = members(bytes(data)).values()
    start = member.header + 30 + len("model.onnx")
    data[start : start + 4] = b"\xff\xff\xff\xff"  # not a deflate block header
    with pytest.raises(ZipError, match=re.escape("model.onnx: ")):
        read(bytes(data), member)
