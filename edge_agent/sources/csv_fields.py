"""The fields of one CSV line whose texts may be quoted, as RFC 4180 quotes them.

A category text may hold a comma ("north, upper"): such a field is written in double quotes,
and a quote inside it is doubled (`"6"" pipe"` is the text `6" pipe`). Spaces around a quoted
field are allowed. A quote is only ever around a whole field: one inside an unquoted field, or
text after a closing quote, is bad quoting, as is a quote never closed. Pure logic:
`split_quoted` reads a line, `quoted` writes a text back the same way (the simulator).
"""

from __future__ import annotations

QUOTE = ord('"')
COMMA = ord(",")
SPACES = b" \t"


class QuotingError(ValueError):
    """A line whose quotes do not close a whole field: `field` (from 0) and what went wrong."""

    def __init__(self, field: int, detail: str) -> None:
        super().__init__(detail)
        self.field = field
        self.detail = detail


def split_quoted(line: bytes) -> list[bytes]:
    """The fields of `line`, each quoted one without its quotes (doubled quotes made single);
    QuotingError for bad quoting."""
    fields: list[bytes] = []
    i, n = 0, len(line)
    while True:
        start = i
        while i < n and line[i] in SPACES:
            i += 1
        if i < n and line[i] == QUOTE:
            opened = i
            value = bytearray()
            i += 1
            while True:
                close = line.find(b'"', i)
                if close < 0:
                    raise QuotingError(
                        len(fields),
                        f"expected a closing quote for the quote at offset {opened}, got the "
                        "end of the line",
                    )
                value += line[i:close]
                if line[close + 1 : close + 2] == b'"':  # a doubled quote: one quote in the text
                    value += b'"'
                    i = close + 2
                    continue
                i = close + 1
                break
            while i < n and line[i] in SPACES:
                i += 1
            if i < n and line[i] != COMMA:
                raise QuotingError(
                    len(fields),
                    f"expected ',' or the end of the line after the quoted field closed at "
                    f"offset {i - 1}, got {chr(line[i])!r} at offset {i}",
                )
            fields.append(bytes(value))
        else:
            end = line.find(b",", i)
            end = n if end < 0 else end
            field = line[start:end]
            stray = field.find(b'"')
            if stray >= 0:
                raise QuotingError(
                    len(fields),
                    f'expected quotes only around a whole field (like "north, upper"), got a '
                    f"quote at offset {start + stray}",
                )
            fields.append(field)
            i = end
        if i >= n:
            return fields
        i += 1  # the comma


def quoted(text: str) -> str:
    """`text` as one CSV field: in quotes (inner quotes doubled) if it holds a comma, a quote
    or surrounding spaces; as it is otherwise."""
    if any(c in text for c in ',"\r\n') or text != text.strip():
        return '"' + text.replace('"', '""') + '"'
    return text
