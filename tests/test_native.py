"""The C parser of plain numeric CSV lines (edge_agent.native.csv_rows) against the Python one it
stands in for: it takes what a sensor prints, gives the same float32 bits as `LineParser.values`,
and never takes a line that `values` refuses (that line is left to Python, which says why)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.errors import SensorLineError
from edge_agent.native import csv_rows
from edge_agent.sources import line_parser
from edge_agent.sources.line_parser import LineParser

N = 4
NAMES = [f"f{i}" for i in range(N)]
WIDE = LineParser(NAMES, "csv")  # every float32 value
NARROW = LineParser(NAMES, "csv", [(-10.0, 10.0)] * N)


def test_the_c_parser_is_built_by_the_install() -> None:
    # setup.py builds it with `pip install -e .` (make test); without a compiler it is optional
    # for a device, but a development install that lost it would test only the Python path
    assert csv_rows is not None, "edge_agent/native/_csvrows was not built: pip install -e ."


def c_parse(parser: LineParser, line: bytes) -> np.ndarray | None:
    """The row the C parser gives for `line`, None where it leaves the line to Python."""
    assert csv_rows is not None
    out = np.empty((1, N), dtype=np.float32)
    lo, hi = parser._lo_row, parser._hi_row
    return out[0] if csv_rows([line], out, lo, hi, 4096) is None else None


def py_parse(parser: LineParser, line: bytes) -> np.ndarray | None:
    try:
        return np.array(parser.values(line), dtype=np.float32)
    except SensorLineError:
        return None


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))  # -0.0 differs from 0.0


number = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda v: f"{v:.9g}"),
    st.floats(min_value=-1e6, max_value=1e6).map(lambda v: f"{v:.3f}"),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda v: f"{v:e}"),
    st.integers(min_value=-(10**25), max_value=10**25).map(str),
    st.builds(
        lambda m, e: f"{m}e{e}", st.integers(-(10**17), 10**17), st.integers(-330, 330)
    ),  # around the fast path's limits (2**53, 10**22) and past double's range
)
# fields the C parser must leave to Python, or read exactly as float() does ("|" separates them)
ODD = [
    "",
    ".",
    "-",
    "+",
    "e5",
    "1e",
    "1e+",
    "5.",
    ".5",
    "+.5",
    "-0",
    "00012",
    "0.000",
    "1_0",
    "nan",
    "NaN",
    "inf",
    "-Infinity",
    "0x10",
    "1e-400",
    "1e400",
    "١",
    "1.5e-3",
    "1 2",
    "--1",
    "1.2.3",
    "1e5.5",
    "\x00",
    "\x0b7",
    "7\r",
]
odd = st.sampled_from(ODD)
pad = st.sampled_from(["", " ", "\t", "  \t "])
field = st.builds(lambda a, v, b: a + v + b, pad, st.one_of(number, number, odd), pad)
line = st.builds(
    lambda fields, head, tail: (head + ",".join(fields) + tail).encode(),
    st.lists(field, min_size=N - 1, max_size=N + 1),
    st.sampled_from(["", " ", "\n", "\r\n", "\t"]),
    st.sampled_from(["", " ", "\n", "\r\n", "\t"]),
)


@settings(max_examples=2000, deadline=None)
@given(raw=line)
def test_what_c_takes_python_takes_with_the_same_bits(raw: bytes) -> None:
    for parser in (WIDE, NARROW):
        c, py = c_parse(parser, raw), py_parse(parser, raw)
        if c is not None:
            assert py is not None, raw
            assert same_bits(c, py), (raw, c, py)


@settings(max_examples=500, deadline=None)
@given(
    values=st.lists(st.floats(-1e30, 1e30), min_size=N, max_size=N),
    fmt=st.sampled_from(["{!r}", "{:.6g}", "{:.4f}", "{:e}", "{:.17g}", " {!r}\t"]),
)
def test_c_takes_the_numbers_a_sensor_prints(values: list[float], fmt: str) -> None:
    raw = ",".join(fmt.format(v) for v in values).encode()
    c = c_parse(WIDE, raw)
    assert c is not None, raw
    py = py_parse(WIDE, raw)
    assert py is not None and same_bits(c, py)


@pytest.mark.parametrize(
    "raw",
    [
        b"9007199254740993,1,1,1",  # 2**53 + 1: past the fast path, correctly rounded
        b"123456789012345678901234567890,1,1,1",  # more digits than the mantissa holds
        b"4.9e-324,2.2250738585072014e-308,1e-45,1.4e-45",  # subnormal doubles and floats
        # float32's largest; the last power of ten a double holds exactly, and the first not
        b"3.4028234663852886e+38,-3.4028234663852886e38,1e22,1e23",
        b"0.1,0.2,0.3,16777217",  # 2**24 + 1 rounds to float32 2**24
        b"-0,-0.0,+0,0e5",
        b"1.00000005960464477539062499,1.000000059604644775390625001,1,1",  # float32 ties
    ],
)
def test_hard_values_match_python_bit_for_bit(raw: bytes) -> None:
    c = c_parse(WIDE, raw)
    assert c is not None, raw
    py = py_parse(WIDE, raw)
    assert py is not None and same_bits(c, py)


def test_a_batch_is_the_same_with_and_without_the_c_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raws = [b"1,2,3,4", b"1,2,x,4", b"5,6,7,8", b"1,2,3", b" 9 ,\t1,2,3\n", b"11,1,1,1", b""]
    with_c = NARROW.rows(raws)
    monkeypatch.setattr(line_parser, "csv_rows", None)
    without = NARROW.rows(raws)
    one_by_one = [py_parse(NARROW, r) for r in raws]
    expected = np.array([row for row in one_by_one if row is not None])
    for x, errors in (with_c, without):
        np.testing.assert_array_equal(x, expected)
        assert [e.reason for e in errors] == [
            "non-numeric",
            "field-count",
            "out-of-range",
            "garbage",
        ]
    assert [e.detail for e in with_c[1]] == [e.detail for e in without[1]]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (([b"1"], np.empty(2, np.float32), np.zeros(1), np.zeros(1), 10), ValueError),
        (([b"1"], np.empty(1, np.float64), np.zeros(1), np.zeros(1), 10), TypeError),
        (([b"1"], np.empty(1, np.float32), np.zeros(1, np.float32), np.zeros(1), 10), TypeError),
        (((b"1",), np.empty(1, np.float32), np.zeros(1), np.zeros(1), 10), TypeError),
        (([b"1"], np.empty(1, np.float32)[::1], np.zeros(1), np.zeros(2), 10), ValueError),
        (([b"1"], b"\x00" * 4, np.zeros(1), np.zeros(1), 10), BufferError),
    ],
)
def test_wrong_arguments_are_refused_not_misread(args: tuple[object, ...], error: type) -> None:
    assert csv_rows is not None
    with pytest.raises(error):
        csv_rows(*args)  # type: ignore[arg-type]


def test_a_line_that_is_not_bytes_is_left_to_python() -> None:
    assert csv_rows is not None
    out = np.empty((2, 1), np.float32)
    assert csv_rows([bytearray(b"1"), b"2"], out, np.zeros(1), np.full(1, 9.0), 10) == [0]
    assert out[1, 0] == 2.0


@settings(max_examples=1000, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False).map(repr),
            st.builds(lambda m, e: f"{m}e{e}", st.integers(-(2**53), 2**53), st.integers(-30, 30)),
            st.builds(lambda m, d: f"{m}.{d}", st.integers(-(10**6), 10**6), st.integers(0, 10**9)),
        ),
        min_size=N,
        max_size=N,
    )
)
def test_c_reads_each_number_as_the_double_float_reads(values: list[str]) -> None:
    # the bounds compare doubles: with each field's bounds [float(text), float(text)], a value
    # one double away from float()'s is refused (float32 rounding would hide most such errors)
    exact = [(float(v), float(v)) for v in values]
    if any(abs(lo) > 3.4e38 for lo, _ in exact):
        return
    parser = LineParser(NAMES, "csv", exact)
    assert c_parse(parser, ",".join(values).encode()) is not None, values
