"""The members of a zip archive held in memory, as a bundle has them: stored or deflated, on one
disk, not encrypted, names unique. Not the standard library's zipfile: that loads shutil, bz2,
lzma and their libraries (about 1 MB resident, for the daemon's life) for what a bundle never
holds. Every field is checked against the bytes there are; a member's bytes against its CRC and
size, inflated no further than its stated size."""

from __future__ import annotations

import struct
import zlib

from edge_agent.protocol.frozen import frozen

_END = struct.Struct("<4s4H2LH")  # end of central directory record
_ENTRY = struct.Struct("<4s6H3L5H2L")  # central directory file header
_LOCAL = struct.Struct("<4s5H3L2H")  # local file header
_STORED, _DEFLATED = 0, 8
_ENCRYPTED, _UTF8 = 0x1, 0x800


class ZipError(ValueError):
    """The bytes are not a zip archive this reader takes: what was expected, what was found."""


@frozen
class Member:
    name: str
    method: int
    crc: int
    compressed: int  # bytes in the archive
    size: int  # bytes once inflated
    header: int  # offset of its local header


def members(data: bytes) -> dict[str, Member]:
    """The archive's members by name, from its central directory."""
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - _END.size - 0xFFFF))
    if end < 0 or len(data) - end < _END.size:
        raise ZipError("expected a zip archive, found no end of central directory record")
    _, disk, first_disk, here, count, size, start, _ = _END.unpack_from(data, end)
    if disk or first_disk or here != count:
        raise ZipError(f"expected an archive on one disk, found disk {disk} of {first_disk}")
    if start + size > end:
        raise ZipError(f"central directory at {start} (+{size}) runs past its end at {end}")
    out: dict[str, Member] = {}
    at, stop = start, start + size
    for i in range(count):
        if at + _ENTRY.size > stop or data[at : at + 4] != b"PK\x01\x02":
            raise ZipError(f"central directory entry {i}: expected its signature at {at}")
        fields = _ENTRY.unpack_from(data, at)
        flags, method, crc, compressed, inflated = fields[3], fields[4], *fields[7:10]
        name_len, extra_len, comment_len, header = fields[10], fields[11], fields[12], fields[16]
        name = _name(data[at + _ENTRY.size : at + _ENTRY.size + name_len], flags)
        if flags & _ENCRYPTED:
            raise ZipError(f"{name}: expected a member in the clear, found it encrypted")
        if name in out:
            raise ZipError(f"{name}: expected each member once, found it twice")
        out[name] = Member(name, method, crc, compressed, inflated, header)
        at += _ENTRY.size + name_len + extra_len + comment_len
        if at > stop:
            raise ZipError(f"{name}: its central directory entry runs past the directory")
    if at != stop:  # entries the count leaves out (zipfile reads them: it goes by the size)
        raise ZipError(f"central directory of {size} bytes, found {count} entries in {at - start}")
    return out


def _name(raw: bytes, flags: int) -> str:
    try:
        return raw.decode("utf-8" if flags & _UTF8 else "cp437")
    except UnicodeDecodeError as exc:
        raise ZipError(f"expected a member name in UTF-8, found {raw!r}") from exc


def read(data: bytes, member: Member) -> bytes:
    """A member's bytes, inflated and checked."""
    at = member.header
    if at + _LOCAL.size > len(data) or data[at : at + 4] != b"PK\x03\x04":
        raise ZipError(f"{member.name}: expected its local header at {at}")
    fields = _LOCAL.unpack_from(data, at)
    name_len, extra_len = fields[9], fields[10]
    local = data[at + _LOCAL.size : at + _LOCAL.size + name_len]
    if _name(local, fields[2]) != member.name:
        raise ZipError(f"{member.name}: its local header names {local!r}")
    start = at + _LOCAL.size + name_len + extra_len
    raw = data[start : start + member.compressed]
    if len(raw) != member.compressed:
        raise ZipError(
            f"{member.name}: expected {member.compressed} bytes, found {len(raw)} (cut short)"
        )
    if member.method == _STORED:
        out = raw
    elif member.method == _DEFLATED:
        inflate = zlib.decompressobj(-15)
        try:
            out = inflate.decompress(raw, member.size + 1)
        except zlib.error as exc:
            raise ZipError(f"{member.name}: {exc}") from exc
    else:
        raise ZipError(
            f"{member.name}: expected stored (0) or deflated (8), found method {member.method}"
        )
    if len(out) != member.size:
        raise ZipError(f"{member.name}: expected {member.size} bytes, inflated {len(out)}+")
    if zlib.crc32(out) != member.crc:
        raise ZipError(f"{member.name}: its bytes do not match its CRC-32")
    return out
