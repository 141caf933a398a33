"""Sensor line parsing: one line of bytes in, one float32 feature vector out, or a reason code.

Pure logic, no I/O. This sits on the inference hot path. `rows` parses a micro-batch (or one
line) of plain numeric CSV in one call of edge_agent.native's C parser where it was built, and
otherwise keeps the accepting path to a handful of C-level calls (bytes.strip/translate/split,
map(float), map(operator.le)); the work of saying *what* went wrong is only done once a line has
already failed, by `values`.

Reason codes (the counter a rejected line is counted under):

- ``garbage``: too long, empty, control bytes, not UTF-8, (JSON) not a JSON object, or (CSV
  with categories) bad quoting
- ``field-count``: wrong number of CSV fields, or JSON keys missing, extra or repeated
- ``non-numeric``: a field that is not a plain decimal number (a categorical field: one that
  is empty, or in JSON not a string)
- ``non-finite``: NaN or infinity (also a decimal too large to be represented as a float)
- ``out-of-range``: outside the per-feature bounds, or outside the float32 range

Fields are numbered from 1 in error details ("field 3 'ash'").

A categorical feature (``categories``: its texts, edge_agent.protocol.input_spec) takes one of
its texts, surrounding spaces ignored, and gives the text's index; a text not among them gives
the unknown index, ``len(texts)``: a value the model was not trained on, which drift counts, not
a broken line. Only a parser with categories takes that (slower, per field) path. In CSV, such a
text may be quoted, RFC 4180's way ("north, upper": edge_agent.sources.csv_fields); bad quoting
(a quote never closed, text after a closing quote, a quote inside an unquoted field) is
``garbage``.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from operator import le as _le
from typing import Any

import numpy as np

from edge_agent.errors import ConfigError, SensorLineError
from edge_agent.native import csv_rows
from edge_agent.sources.csv_fields import QuotingError, split_quoted

REASONS: tuple[str, ...] = ("garbage", "field-count", "non-numeric", "non-finite", "out-of-range")
FORMATS: tuple[str, ...] = ("csv", "json")

_F32_MAX = float(np.finfo(np.float32).max)
# ASCII control bytes other than tab (tab is whitespace a float() field may carry) plus DEL.
_CONTROL = bytes(b for b in range(0x20) if b != 0x09) + b"\x7f"
_SHOW_CHARS = 40
_NUMBER_TYPES = frozenset((int, float))  # exact types: bool is an int subclass, not a number here


def _show(data: bytes | str) -> str:
    """A short, quoted, escaped rendering of untrusted input for an error detail."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            shown = repr(data[:_SHOW_CHARS])[1:]  # b'..' without the b
            return shown + ("..." if len(data) > _SHOW_CHARS else "")
    return repr(data[:_SHOW_CHARS]) + ("..." if len(data) > _SHOW_CHARS else "")


def _show_keys(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(_show(k) for k in keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _json_kind(value: object) -> str:
    """The JSON name of a decoded value's type, for error details."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"string {_show(value)}"
    if isinstance(value, int | float):
        return f"number {value!r:.40}"
    if isinstance(value, list):
        return "array"
    return "object"


class _Pairs(list[tuple[str, Any]]):
    """A decoded JSON object kept as its key/value pairs, so repeated keys can be seen."""


class LineParser:
    """Turns one raw sensor line into a float32 vector of ``len(feature_names)`` values.

    ``bounds`` holds one ``(low, high)`` pair per feature (inclusive); the caller derives them
    from the model card's per-feature min/max widened by whatever tolerance it decides.
    Without bounds a value must still fit in float32.
    """

    def __init__(
        self,
        feature_names: list[str],
        fmt: str = "csv",
        bounds: list[tuple[float, float]] | None = None,
        max_line_bytes: int = 4096,
        categories: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self._names = _check_names(feature_names)
        if fmt not in FORMATS:
            raise ConfigError(
                f"line parser: 'fmt' expected one of {', '.join(FORMATS)}, found {fmt!r}"
            )
        if type(max_line_bytes) is not int or max_line_bytes < 1:
            raise ConfigError(
                "line parser: 'max_line_bytes' expected a positive integer,"
                f" found {max_line_bytes!r}"
            )
        self._n = len(self._names)
        self._fmt = fmt
        self._max = max_line_bytes
        self._lo, self._hi = _check_bounds(bounds, self._names)
        # per field: {text: code, ...} for a categorical one, None for a number
        self._codes = _check_categories(categories, self._names)
        for i, codes in enumerate(self._codes or []):
            if codes is not None:  # its codes are 0 .. len(texts), the last one unknown
                self._lo[i], self._hi[i] = 0.0, float(len(codes))
        self._index = {name: i for i, name in enumerate(self._names)}
        self._decoder = json.JSONDecoder(object_pairs_hook=_Pairs)
        self._csv = fmt == "csv"
        # Bytes whose presence sends a line to the detailed checks (underscores: CSV only).
        self._suspect_bytes = _CONTROL + b"_" if self._csv else _CONTROL
        # A micro-batch of plain numeric CSV lines is parsed in one pass (`rows`).
        self._batched = self._csv and self._codes is None
        self._lo_row = np.array(self._lo, dtype=np.float64)
        self._hi_row = np.array(self._hi, dtype=np.float64)
        # the shape of one line's row where `row` takes it (the C parser, plain numeric CSV)
        self._one = (1, self._n) if self._batched and csv_rows is not None else None

    @property
    def feature_names(self) -> list[str]:
        return list(self._names)

    @property
    def n_features(self) -> int:
        return self._n

    @property
    def fmt(self) -> str:
        return self._fmt

    def parse(self, raw: bytes) -> np.ndarray:
        """The feature vector of one line; raises SensorLineError(reason, detail) otherwise."""
        return np.array(self.values(raw), dtype=np.float32)

    def row(self, raw: bytes) -> np.ndarray | None:
        """The (1, n_features) float32 row of one plain numeric CSV line through the C parser,
        or None where that is not built or not this parser's way, or the line fails its checks
        (`rows` then says what is wrong): a sensor line alone, the common case, in one call."""
        if self._one is None or csv_rows is None:
            return None
        x = np.empty(self._one, np.float32)
        return x if csv_rows([raw], x, self._lo_row, self._hi_row, self._max) is None else None

    def rows(self, raws: list[bytes]) -> tuple[np.ndarray, list[SensorLineError]]:
        """A micro-batch of lines: the (n_ok, n_features) float32 rows of those that parse, in
        order, and the error of each that does not, in order; the same rows and errors as
        `values` line by line. Plain numeric CSV lines go through one call of the C parser
        (edge_agent.native), or without it one pass in Python (strip, join, one `split`, one
        `map(float)`, the bounds compared as arrays); a line either leaves is taken by `values`,
        which says what is wrong with it."""
        if self._batched and csv_rows is not None:
            x = np.empty((len(raws), self._n), dtype=np.float32)
            left = csv_rows(raws, x, self._lo_row, self._hi_row, self._max)
            return (x, []) if left is None else self._rest(raws, x, left)
        if self._batched and len(raws) > 1:
            batch = self._csv_rows(raws)
            if batch is not None:
                return batch, []
        return self._rest(raws, np.empty((len(raws), self._n), dtype=np.float32), range(len(raws)))

    def _rest(
        self, raws: Sequence[bytes], x: np.ndarray, left: Sequence[int]
    ) -> tuple[np.ndarray, list[SensorLineError]]:
        """`x` (a row per line) with the `left` lines' rows filled in by `values`; the rows of
        those it refuses are dropped, and their errors returned in order."""
        errors, dropped = [], []
        for i in left:
            try:
                x[i] = self.values(raws[i])  # the values were checked to fit float32
            except SensorLineError as exc:
                errors.append(exc)
                dropped.append(i)
        return (np.delete(x, dropped, axis=0) if dropped else x), errors

    def _csv_rows(self, raws: Sequence[bytes]) -> np.ndarray | None:
        """The rows of a batch of CSV lines that all pass `values`' checks, None if any does
        not (the caller then takes them one by one). Accepts exactly what `values` accepts:
        the same screen on the stripped lines (joined by the separator, which it does not
        trip), each line's field count, float() of the same fields, the same bounds."""
        n = len(raws)
        if max(map(len, raws)) > self._max:
            return None
        lines = [raw.strip() for raw in raws]  # (any bytes-like object, as `values` takes)
        joined = b",".join(lines)
        if not joined.isascii() or len(joined.translate(None, self._suspect_bytes)) != len(joined):
            return None
        if [line.count(b",") for line in lines].count(self._n - 1) != n:
            return None
        try:  # an empty line is an empty field here: float() refuses it, as `values` does
            x = np.array(list(map(float, joined.split(b","))), dtype=np.float64)
        except ValueError:
            return None
        x = x.reshape(n, self._n)
        # NaN fails both comparisons, as in `values`
        if not ((x >= self._lo_row).all() and (x <= self._hi_row).all()):
            return None
        return x.astype(np.float32)

    def values(self, raw: bytes) -> list[float]:
        """`parse` without the array: a micro-batch is turned into one array at once."""
        line = raw.strip()
        # One cheap screen; only a line that trips it gets the detailed (slower) checks.
        suspect = (
            len(raw) > self._max
            or not line
            or not line.isascii()
            or len(line.translate(None, self._suspect_bytes)) != len(line)
        )
        if suspect:
            self._screen(raw, line)
        if self._csv:
            # a line with categories may quote its texts ("north, upper")
            fields = (
                self._quoted(line) if self._codes is not None and b'"' in line else line.split(b",")
            )
            if len(fields) != self._n:
                raise self._field_count(line, fields)
            if self._codes is not None:
                values = self._mixed_csv(fields)
            elif suspect and b"_" in line:  # float() accepts "1_000"; a sensor line should not
                raise self._non_numeric(fields)
            else:
                try:
                    values = list(map(float, fields))
                except ValueError:
                    raise self._non_numeric(fields) from None
        else:
            values = self._json_values(line.decode("utf-8"))
        # C-level comparisons; NaN fails every comparison so it lands in the slow path too.
        if not (all(map(_le, self._lo, values)) and all(map(_le, values, self._hi))):
            raise self._range_error(values)
        return values

    def _screen(self, raw: bytes, line: bytes) -> None:
        """Raise "garbage" for a line too long, empty, with control bytes or not UTF-8."""
        if len(raw) > self._max:
            raise SensorLineError(
                "garbage", f"line is {len(raw)} bytes, the limit is {self._max}: {_show(raw)}"
            )
        if not line:
            raise SensorLineError("garbage", f"expected {self._n} values, got an empty line")
        if len(line.translate(None, _CONTROL)) != len(line):
            pos = next(i for i, b in enumerate(line) if b in _CONTROL)
            raise SensorLineError(
                "garbage",
                f"expected printable text, got control byte 0x{line[pos]:02x} at offset {pos}"
                f" in {_show(line)}",
            )
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SensorLineError(
                "garbage",
                f"expected UTF-8 text, got byte 0x{line[exc.start]:02x} at offset {exc.start}"
                f" in {_show(line)}",
            ) from None

    # -- CSV -------------------------------------------------------------------------------------

    def _field_count(self, line: bytes, fields: list[bytes]) -> SensorLineError:
        return SensorLineError(
            "field-count",
            f"expected {self._n} comma-separated fields ({self._names_preview()}),"
            f" got {len(fields)} in {_show(line)}",
        )

    def _quoted(self, line: bytes) -> list[bytes]:
        """The fields of a line with quotes (edge_agent.sources.csv_fields); "garbage" for bad
        quoting, saying where."""
        try:
            return split_quoted(line)
        except QuotingError as exc:
            where = self._where(exc.field) if exc.field < self._n else f"field {exc.field + 1}"
            raise SensorLineError("garbage", f"{where}: {exc.detail} in {_show(line)}") from None

    def _mixed_csv(self, fields: list[bytes]) -> list[float]:
        """The values of a line with categorical fields (a card with categories only)."""
        assert self._codes is not None
        values = []
        for i, (field, codes) in enumerate(zip(fields, self._codes, strict=True)):
            if codes is not None:
                values.append(self._code(i, codes, field.strip().decode("utf-8")))
                continue
            try:
                if b"_" in field:
                    raise ValueError
                values.append(float(field))
            except ValueError:
                raise SensorLineError(
                    "non-numeric",
                    f"{self._where(i)}: expected a number, got {_show(field.strip())}",
                ) from None
        return values

    def _code(self, i: int, codes: dict[str, float], text: str) -> float:
        """A categorical field's code: its text's index, or the unknown one (len(texts))."""
        if not text:
            raise SensorLineError(
                "non-numeric", f"{self._where(i)}: expected a category text, got an empty field"
            )
        return codes.get(text, self._hi[i])

    def _non_numeric(self, fields: list[bytes]) -> SensorLineError:
        for i, field in enumerate(fields):
            try:
                if b"_" not in field:
                    float(field)
                    continue
            except ValueError:
                pass
            return SensorLineError(
                "non-numeric", f"{self._where(i)}: expected a number, got {_show(field.strip())}"
            )
        return SensorLineError("non-numeric", "expected numbers")  # pragma: no cover

    # -- JSON ------------------------------------------------------------------------------------

    def _json_values(self, text: str) -> list[float]:
        try:
            obj = self._decoder.decode(text)
        except json.JSONDecodeError as exc:
            raise SensorLineError(
                "garbage",
                f"expected a JSON object, got invalid JSON ({exc.msg} at offset {exc.pos})",
            ) from None
        except (ValueError, RecursionError) as exc:  # e.g. an integer with too many digits
            raise SensorLineError("garbage", f"expected a JSON object, got {exc}") from None
        if not isinstance(obj, _Pairs):
            kind = "number" if isinstance(obj, int | float) else _json_kind(obj)
            raise SensorLineError("garbage", f"expected a JSON object, got {kind}")
        fields = dict(obj)
        if len(fields) != len(obj) or len(fields) != self._n:
            raise self._key_error(obj, fields)
        try:
            raw_values = [fields[name] for name in self._names]
        except KeyError:
            raise self._key_error(obj, fields) from None
        if self._codes is not None:
            raw_values = self._json_codes(raw_values)
        if not _NUMBER_TYPES.issuperset(map(type, raw_values)):  # bool, str, None, list, dict
            raise self._json_non_number(raw_values)
        try:
            return list(map(float, raw_values))
        except OverflowError:  # an integer too large for a float
            raise self._json_non_number(raw_values) from None

    def _json_codes(self, raw_values: list[Any]) -> list[Any]:
        """`raw_values` with each categorical field's text turned into its code."""
        assert self._codes is not None
        out = list(raw_values)
        for i, codes in enumerate(self._codes):
            if codes is None:
                continue
            value = raw_values[i]
            if type(value) is not str:
                raise SensorLineError(
                    "non-numeric",
                    f"{self._where(i)}: expected a category text, got {_json_kind(value)}",
                )
            out[i] = self._code(i, codes, value.strip())
        return out

    def _json_non_number(self, raw_values: list[Any]) -> SensorLineError:
        for i, value in enumerate(raw_values):
            if type(value) is int:
                try:
                    float(value)
                except OverflowError:
                    return SensorLineError(
                        "out-of-range", f"{self._where(i)}: integer with {len(str(value))} digits"
                    )
            elif type(value) is not float:
                return SensorLineError(
                    "non-numeric", f"{self._where(i)}: expected a number, got {_json_kind(value)}"
                )
        return SensorLineError("non-numeric", "expected numbers")  # pragma: no cover

    def _key_error(self, pairs: list[tuple[str, Any]], fields: dict[str, Any]) -> SensorLineError:
        repeated = [k for k, count in Counter(k for k, _ in pairs).items() if count > 1]
        missing = [name for name in self._names if name not in fields]
        extra = [k for k in fields if k not in self._index]
        parts = [
            f"{label} {_show_keys(keys)}"
            for label, keys in (("missing", missing), ("unexpected", extra), ("repeated", repeated))
            if keys
        ]
        return SensorLineError(
            "field-count",
            f"expected keys {self._names_preview()}, got {len(pairs)} key(s): " + "; ".join(parts),
        )

    # -- value checks ----------------------------------------------------------------------------

    def _range_error(self, values: list[float]) -> SensorLineError:
        for i, value in enumerate(values):
            if math.isnan(value) or math.isinf(value):
                return SensorLineError(
                    "non-finite", f"{self._where(i)}: expected a finite number, got {value}"
                )
        for i, value in enumerate(values):
            lo, hi = self._lo[i], self._hi[i]
            if not lo <= value <= hi:
                if abs(value) > _F32_MAX:
                    expected = "a value that fits float32"
                else:
                    expected = f"a value in [{lo:g}, {hi:g}]"
                return SensorLineError(
                    "out-of-range", f"{self._where(i)}: expected {expected}, got {value:g}"
                )
        return SensorLineError("out-of-range", "expected values within bounds")  # pragma: no cover

    def _where(self, i: int) -> str:
        return f"field {i + 1} {self._names[i]!r}"

    def _names_preview(self) -> str:
        shown = ", ".join(self._names[:4])
        return shown + (f", ... ({self._n} in all)" if self._n > 4 else "")


def _check_names(feature_names: Sequence[str]) -> list[str]:
    if isinstance(feature_names, str) or not isinstance(feature_names, Sequence):
        raise ConfigError(
            f"line parser: 'feature_names' expected a list of names, found {feature_names!r}"
        )
    names = list(feature_names)
    if not names:
        raise ConfigError("line parser: 'feature_names' expected at least one name, found none")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise ConfigError(
                f"line parser: 'feature_names[{i}]' expected a non-empty string, found {name!r}"
            )
    if len(set(names)) != len(names):
        dup = next(n for i, n in enumerate(names) if n in names[:i])
        raise ConfigError(
            f"line parser: 'feature_names' expected unique names, found {dup!r} twice"
        )
    return names


def _check_categories(
    categories: Mapping[str, Sequence[str]] | None, names: list[str]
) -> list[dict[str, float] | None] | None:
    """Per field, {text: code} for a categorical feature and None for a number; None when no
    feature is categorical (the fast path)."""
    if not categories:
        return None
    unknown = sorted(set(categories) - set(names))
    if unknown:
        raise ConfigError(
            f"line parser: 'categories' names {unknown[0]!r}, which is not a feature;"
            f" features are {names}"
        )
    return [
        {str(text): float(k) for k, text in enumerate(categories[name])}
        if name in categories
        else None
        for name in names
    ]


def _check_bounds(
    bounds: Sequence[tuple[float, float]] | None, names: list[str]
) -> tuple[list[float], list[float]]:
    """Per-feature inclusive limits, clipped to the float32 range."""
    n = len(names)
    if bounds is None:
        return [-_F32_MAX] * n, [_F32_MAX] * n
    if len(bounds) != n:
        raise ConfigError(
            f"line parser: 'bounds' expected {n} (low, high) pairs, one per feature,"
            f" found {len(bounds)}"
        )
    lows, highs = [], []
    for i, pair in enumerate(bounds):
        try:
            lo, hi = (float(v) for v in pair)
        except (TypeError, ValueError):
            raise ConfigError(
                f"line parser: 'bounds[{i}]' ({names[i]!r}) expected a (low, high) pair of numbers,"
                f" found {pair!r}"
            ) from None
        if math.isnan(lo) or math.isnan(hi) or lo > hi:
            raise ConfigError(
                f"line parser: 'bounds[{i}]' ({names[i]!r}) expected low <= high, found {pair!r}"
            )
        lows.append(max(lo, -_F32_MAX))
        highs.append(min(hi, _F32_MAX))
    return lows, highs


class RejectCounter:
    """Rejected lines counted per reason; safe to update from several source threads."""

    def __init__(self, reasons: Sequence[str] = REASONS) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(reasons, 0)

    def add(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + n

    def record(self, exc: SensorLineError) -> None:
        self.add(exc.reason)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def snapshot(self) -> dict[str, int]:
        """A copy of the counts; every known reason is present, zero or not."""
        with self._lock:
            return dict(self._counts)
