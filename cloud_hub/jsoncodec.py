"""JSON on the hub's ingest path (a batch read, each body stored): orjson where it gives exactly
what the standard library would, the standard library where it would not.

orjson writes a telemetry window's body in about a sixth of the standard encoder's time and
reads a batch of them in well under half (1.3 against 7.6 µs and 1.8 against 4.3 µs a record,
this module against json, on a 2-core AMD EPYC), but it differs from `json`
at the edges, and the edges are what devices and attackers send:

- writing, it turns NaN and Infinity into `null` where `json` (allow_nan=False) refuses them,
  writes non-ASCII as UTF-8 where `json` escapes it, and refuses what `json` takes (integers
  past 64 bits, numpy's float64, keys that are not strings);
- reading, it turns an integer past 64 bits into a float where `json` keeps it exact, refuses
  lone surrogates, and refuses `1e999` where `json` reads infinity.

So each call takes orjson's answer only where it cannot differ: output that is ASCII with no
`null` in it (so nothing was turned into one), input with no run of 19 or more digits (below
that orjson reads every integer exactly); otherwise it does the work again with `json`, whose
result or error is the answer. Both write a float as the shortest text that reads back as the
same float (orjson `1e-7`, `json` `1e-07`): the same numbers, not always the same bytes.

The agent does not use it: orjson would cost a device about 0.4 MB resident (bench/agent_bench.py)
for records it makes one every couple of seconds.
"""

from __future__ import annotations

from typing import Any

import orjson

from edge_agent.protocol.messages import compact_json, parse_json

# every digit as "0", anything else as a space: a run of 19 digits is then 19 zeros in a row.
# One C pass each, about a seventh of a regular expression's time on a batch.
_DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN = b"0" * 19
# what orjson writes itself and json refuses or writes its own way (dataclasses, datetimes,
# subclasses of str, int, dict and list) goes to json; enums and UUIDs orjson writes (json
# refuses them), and the hub stores neither
_AS_JSON = (
    orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def loads(payload: bytes, constants: bool = False) -> Any:
    """What `edge_agent.protocol.messages.parse_json` answers (the value, or its error)."""
    if _LONG_RUN not in payload.translate(_DIGITS):
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass  # json says what is wrong, or reads what orjson refused (1e999, surrogates)
    return parse_json(payload, constants)


def dumps(obj: Any) -> str:
    """What `edge_agent.protocol.messages.compact_json` answers (the text, or its error)."""
    try:
        out = orjson.dumps(obj, option=_AS_JSON)
    except TypeError:  # json may still take it (a float64, a big integer, an int key, ...)
        out = b"null"
    if out.isascii() and b"null" not in out:
        return out.decode("ascii")
    return compact_json(obj)
