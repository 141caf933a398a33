"""The buffer's files, as bytes (pure: no I/O here; edge_agent.uplink.buffer reads and writes).

A segment (`<number>.log`) holds records, one line each, appended and never rewritten:

    kind TAB boot TAB seq TAB ts TAB body's JSON NEWLINE

The body's JSON (`body_json`: compact ASCII) holds no tab and no newline, and a kind is a word.
A line cut short by a kill (no newline) or one that does not parse belonged to an `append` that
never returned; readers skip it.

The gone log (`gone.log`) says which records left the buffer, one line each:

    c TAB boot TAB first TAB last NEWLINE   the hub confirmed (boot, first..last)
    d TAB kind TAB boot TAB seq NEWLINE     dropped past a cap (counted per kind)
    t TAB kind TAB count NEWLINE            drops counted before the log was last rewritten

A record's key is (boot, seq) packed in one int, which orders a kind's records as they were
appended; where it lies is (segment, offset, length) packed in another.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator
from typing import NamedTuple

log = logging.getLogger(__name__)

SEQ_BITS = 32
MAX_SEQ = (1 << SEQ_BITS) - 1  # the highest seq a key holds
MAX_LINE = (1 << 24) - 1  # the longest record line a location can hold (16 MiB)


def key_of(boot: int, seq: int) -> int:
    return boot << SEQ_BITS | seq


def boot_seq(key: int) -> tuple[int, int]:
    return key >> SEQ_BITS, key & MAX_SEQ


def loc_of(segment: int, offset: int, length: int) -> int:
    return segment << 56 | offset << 24 | length


def segment_of(loc: int) -> int:
    return loc >> 56


def length_of(loc: int) -> int:
    """The line's bytes: what it counts against the caps."""
    return loc & MAX_LINE


def span_of(loc: int) -> tuple[int, int]:
    """(offset, length) of the line in its segment."""
    return (loc >> 24) & ((1 << 32) - 1), length_of(loc)


def record_line(kind: str, boot: int, seq: int, ts: float, text: str) -> bytes:
    return f"{kind}\t{boot}\t{seq}\t{ts!r}\t{text}\n".encode()


def record_fields(line: bytes) -> tuple[float, str]:
    """(ts, body's JSON) of a record line."""
    _, _, _, ts, text = line.decode().split("\t", 4)
    return float(ts), text[:-1]


class Line(NamedTuple):
    offset: int
    length: int
    kind: str
    boot: int
    seq: int


def record_lines(data: bytes, kinds: frozenset[str], where: str) -> Iterator[Line]:
    """The records of a segment's bytes, in order. What follows the last newline is unfinished
    (a kill during its write); a line that does not parse is skipped, with a warning."""
    offset, end = 0, data.rfind(b"\n") + 1
    while offset < end:
        stop = data.index(b"\n", offset) + 1
        head = data[offset : min(stop, offset + 80)].split(b"\t", 4)
        try:
            kind = head[0].decode()
            if kind not in kinds or len(head) < 5 or not math.isfinite(float(head[3])):
                raise ValueError(kind)
            yield Line(offset, stop - offset, kind, int(head[1]), int(head[2]))
        except (ValueError, UnicodeDecodeError):
            log.warning("%s: a record line that does not parse is skipped: %.80r", where, head)
        offset = stop


def confirmed_line(boot: int, first: int, last: int) -> bytes:
    return f"c\t{boot}\t{first}\t{last}\n".encode()


def dropped_line(kind: str, boot: int, seq: int) -> bytes:
    return f"d\t{kind}\t{boot}\t{seq}\n".encode()


def totals_lines(dropped: Counter[str]) -> bytes:
    return b"".join(f"t\t{kind}\t{n}\n".encode() for kind, n in sorted(dropped.items()) if n)


class Gone(NamedTuple):
    """What a gone log says: key spans gone, and drops counted per kind."""

    spans: list[tuple[int, int]]  # (first key, last key)
    dropped: Counter[str]


def read_gone(data: bytes, where: str) -> Gone:
    spans: list[tuple[int, int]] = []
    dropped: Counter[str] = Counter()
    for line in data.split(b"\n")[:-1]:  # what follows the last newline is unfinished
        try:
            tag, *rest = line.decode().split("\t")
            if tag == "c":
                boot, first, last = map(int, rest)
                spans.append((key_of(boot, first), key_of(boot, last)))
            elif tag == "d":
                kind, boot, seq = rest[0], int(rest[1]), int(rest[2])
                spans.append((key_of(boot, seq), key_of(boot, seq)))
                dropped[kind] += 1
            elif tag == "t":
                dropped[rest[0]] += int(rest[1])
            else:
                raise ValueError(tag)
        except (ValueError, IndexError, UnicodeDecodeError):
            log.warning("%s: a line that does not parse is skipped: %.80r", where, line)
    return Gone(spans, dropped)


def kept_spans(spans: list[tuple[int, int]], floor: int) -> bytes:
    """The gone log's spans that may still name a record some segment holds (any key at or
    past `floor`, the lowest key the segments hold), as uncounted lines, merged where they
    meet or overlap within a boot: so their number is bounded by the records held between
    them, not by how many confirmations and drops there were since `floor`."""
    merged: list[list[int]] = []
    for first, last in sorted(spans):
        if last < floor:
            continue
        first = max(first, floor)  # a span lies within one boot
        if merged and first <= merged[-1][1] + 1 and first >> SEQ_BITS == merged[-1][1] >> SEQ_BITS:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return b"".join(confirmed_line(*boot_seq(first), boot_seq(last)[1]) for first, last in merged)
