"""The sensor line parser: a CSV or JSON line becomes a float32 row, or a rejection with the
reason it is counted under."""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from converters.card import reference_card
from edge_agent.errors import ConfigError, SensorLineError
from edge_agent.framing import framer_for
from edge_agent.framing.rows import card_bounds
from edge_agent.native import csv_rows
from edge_agent.protocol.card import parse_card
from edge_agent.sources.line_parser import REASONS, LineParser, RejectCounter

NAMES = ["alcohol", "malic_acid", "ash", "magnesium"]
BOUNDS = [(11.0, 15.0), (0.7, 5.8), (1.3, 3.3), (70.0, 162.0)]


def reason_of(parser: LineParser, raw: bytes) -> SensorLineError:
    with pytest.raises(SensorLineError) as info:
        parser.parse(raw)
    return info.value


# -- CSV -----------------------------------------------------------------------------------------


def test_csv_line_becomes_float32_vector() -> None:
    out = LineParser(NAMES).parse(b"  13.2, 1.78 ,2.14,112\r\n")
    assert out.dtype == np.float32
    assert out.shape == (4,)
    np.testing.assert_array_equal(out, np.array([13.2, 1.78, 2.14, 112], dtype=np.float32))


def test_csv_within_bounds_accepted_including_the_edges() -> None:
    parser = LineParser(NAMES, bounds=BOUNDS)
    expected = np.array([11, 5.8, 1.3, 162], dtype=np.float32)
    np.testing.assert_array_equal(parser.parse(b"11,5.8,1.3,162"), expected)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe\x00", "garbage"),
        (b"\xff,1,2,3", "garbage"),  # not UTF-8
        (b"13.2,1.78\x00,2.14,112", "garbage"),  # control byte
        (b"13.2,1.78,2.14,1\x1b[0m", "garbage"),
        (b"", "garbage"),
        (b"  \r\n", "garbage"),
        (b"1," * 3000 + b"1", "garbage"),  # longer than max_line_bytes
        (b"13.2,1.78,2.14", "field-count"),
        (b"13.2,1.78,2.14,112,7", "field-count"),
        (b"13.2;1.78;2.14;112", "field-count"),
        (b"13.2,abc,2.14,112", "non-numeric"),
        (b"13.2,,2.14,112", "non-numeric"),
        (b"13.2,1_000,2.14,112", "non-numeric"),
        (b"13.2,0x10,2.14,112", "non-numeric"),
        ("13.2,1.7é,2.14,112".encode(), "non-numeric"),
        (b"13.2,nan,2.14,112", "non-finite"),
        (b"13.2,1.78,-inf,112", "non-finite"),
        (b"Infinity,1.78,2.14,112", "non-finite"),
        (b"13.2,1.78,2.14,1e400", "non-finite"),  # overflows a double
        (b"13.2,1.78,2.14,1e39", "out-of-range"),  # a double, but not a float32
    ],
)
def test_csv_rejections_carry_their_reason(raw: bytes, reason: str) -> None:
    assert reason_of(LineParser(NAMES), raw).reason == reason


def test_out_of_range_uses_the_bounds() -> None:
    parser = LineParser(NAMES, bounds=BOUNDS)
    err = reason_of(parser, b"13.2,1.78,2.14,500")
    assert err.reason == "out-of-range"
    assert "field 4 'magnesium'" in err.detail
    assert "[70, 162]" in err.detail and "500" in err.detail
    assert reason_of(parser, b"10.9,1.78,2.14,100").reason == "out-of-range"
    assert reason_of(parser, b"nan,1.78,2.14,100").reason == "non-finite"


def test_details_say_what_was_expected_what_arrived_and_where() -> None:
    parser = LineParser(NAMES)
    err = reason_of(parser, b"13.2,1.78,abc,112")
    assert err.detail == "field 3 'ash': expected a number, got 'abc'"
    assert str(err).startswith("non-numeric: ")
    err = reason_of(parser, b"1,2,3")
    assert "expected 4 comma-separated fields" in err.detail and "got 3" in err.detail
    err = reason_of(parser, b"1,2\x00,3,4")
    assert "control byte 0x00 at offset 3" in err.detail
    err = reason_of(parser, b"12345678" * 1000)
    assert "8000 bytes" in err.detail and len(err.detail) < 200  # the line itself is cut short


# -- JSON ----------------------------------------------------------------------------------------


def test_json_object_becomes_vector_in_feature_order() -> None:
    parser = LineParser(NAMES, fmt="json", bounds=BOUNDS)
    line = b'{"magnesium": 112, "ash": 2.14, "alcohol": 13.2, "malic_acid": 1.78}\r\n'
    out = parser.parse(line)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([13.2, 1.78, 2.14, 112], dtype=np.float32))


GOOD = {"alcohol": 13.2, "malic_acid": 1.78, "ash": 2.14, "magnesium": 112}


def with_(**changes: Any) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"alcohol": 13.2,', "garbage"),
        (b"[13.2, 1.78, 2.14, 112]", "garbage"),
        (b"13.2", "garbage"),
        (b'"hello"', "garbage"),
        (b"[" * 4000, "garbage"),
        (b'{"alcohol": 13.2}', "field-count"),
        (with_(colour=3), "field-count"),
        (
            b'{"alcohol": 1, "alcohol": 2, "malic_acid": 1, "ash": 2, "magnesium": 80}',
            "field-count",
        ),
        (b'{"alcohol": 1, "alcohol": 2, "malic_acid": 1, "ash": 2}', "field-count"),
        (with_(ash="2.14"), "non-numeric"),
        (with_(ash=True), "non-numeric"),
        (with_(ash=None), "non-numeric"),
        (with_(ash=[2.14]), "non-numeric"),
        (with_(ash={"v": 2.14}), "non-numeric"),
        (with_(ash=float("nan")), "non-finite"),  # json.dumps writes NaN
        (with_(ash=float("-inf")), "non-finite"),
        (with_(magnesium=500), "out-of-range"),
        (with_(magnesium=10**400), "out-of-range"),
        (b"\xff\xfe\x00", "garbage"),
    ],
)
def test_json_rejections_carry_their_reason(raw: bytes, reason: str) -> None:
    parser = LineParser(NAMES, fmt="json", bounds=BOUNDS)
    assert reason_of(parser, raw).reason == reason


def test_json_details_name_the_keys() -> None:
    parser = LineParser(NAMES, fmt="json")
    err = reason_of(parser, b'{"alcohol": 13.2, "colour": 1}')
    assert "missing 'malic_acid', 'ash', 'magnesium'" in err.detail
    assert "unexpected 'colour'" in err.detail
    err = reason_of(parser, with_(ash="x"))
    assert err.detail == "field 3 'ash': expected a number, got string 'x'"


# -- parser configuration and counting -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"feature_names": []}, "'feature_names'"),
        ({"feature_names": "abc"}, "'feature_names'"),
        ({"feature_names": ["a", "a"]}, "'a' twice"),
        ({"feature_names": ["a", ""]}, "'feature_names[1]'"),
        ({"feature_names": NAMES, "fmt": "xml"}, "'fmt' expected one of csv, json, found 'xml'"),
        ({"feature_names": NAMES, "bounds": [(0, 1)]}, "'bounds' expected 4"),
        ({"feature_names": NAMES, "bounds": [(0, 1)] * 3 + [(2, 1)]}, "'bounds[3]'"),
        ({"feature_names": NAMES, "bounds": [(0, 1)] * 3 + [("x", 1)]}, "'bounds[3]'"),
        ({"feature_names": NAMES, "max_line_bytes": 0}, "'max_line_bytes'"),
    ],
)
def test_parser_config_errors(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match="line parser") as info:
        LineParser(**kwargs)
    assert needle in str(info.value)


def test_reject_counter_counts_per_reason_across_threads() -> None:
    counter = RejectCounter()
    assert counter.snapshot() == dict.fromkeys(REASONS, 0)
    parser = LineParser(NAMES)

    def work() -> None:
        for raw in (b"\xff", b"1,2", b"1,x,3,4", b"1,nan,3,4") * 500:
            try:
                parser.parse(raw)
            except SensorLineError as exc:
                counter.record(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = counter.snapshot()
    assert snap == {
        "garbage": 2000,
        "field-count": 2000,
        "non-numeric": 2000,
        "non-finite": 2000,
        "out-of-range": 0,
    }
    assert counter.total() == 8000
    snap["garbage"] = 0
    assert counter.snapshot()["garbage"] == 2000  # a snapshot is a copy


# -- properties ----------------------------------------------------------------------------------

CSV_PARSER = LineParser(NAMES, bounds=BOUNDS, max_line_bytes=256)
JSON_PARSER = LineParser(NAMES, fmt="json", bounds=BOUNDS, max_line_bytes=256)
PLAIN_PARSER = LineParser(NAMES)

line_like = st.lists(
    st.one_of(
        st.floats().map(repr),
        st.integers().map(str),
        st.text(alphabet="0123456789.eE+-_ naifNIF\t\r\x00\x7f", max_size=12),
    ),
    max_size=6,
).map(lambda fields: ",".join(fields).encode())
json_like = st.dictionaries(
    st.sampled_from([*NAMES, "other"]),
    st.one_of(st.floats(), st.integers(), st.booleans(), st.none(), st.text(max_size=5)),
).map(lambda d: json.dumps(d).encode())


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(st.binary(max_size=400), line_like, json_like))
def test_parse_raises_only_sensor_line_errors(raw: bytes) -> None:
    for parser in (CSV_PARSER, JSON_PARSER, PLAIN_PARSER):
        try:
            out = parser.parse(raw)
        except SensorLineError as exc:
            assert exc.reason in REASONS
        else:
            assert out.dtype == np.float32 and out.shape == (4,)
            assert np.isfinite(out).all()


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=4, max_size=4))
def test_formatted_values_round_trip(values: list[float]) -> None:
    raw = ",".join(repr(v) for v in values).encode()
    if all(abs(v) <= float(np.finfo(np.float32).max) for v in values):
        np.testing.assert_array_equal(PLAIN_PARSER.parse(raw), np.array(values, np.float32))
    else:
        assert reason_of(PLAIN_PARSER, raw).reason == "out-of-range"


# -- quoted category texts -----------------------------------------------------------------------

REGIONS = {"region": ["north, upper", 'say "hi"', "east"]}
MIXED_PARSER = LineParser(["a", "region", "b"], categories=REGIONS)


def test_a_quoted_category_text_with_a_comma_parses() -> None:
    assert MIXED_PARSER.values(b'1.5,"north, upper",2') == [1.5, 0.0, 2.0]
    assert MIXED_PARSER.values(b'1.5, "north, upper" ,2') == [1.5, 0.0, 2.0]  # spaces around
    assert MIXED_PARSER.values(b'1.5,"say ""hi""",2') == [1.5, 1.0, 2.0]  # a doubled quote
    assert MIXED_PARSER.values(b'1.5,"east",2') == [1.5, 2.0, 2.0]
    assert MIXED_PARSER.values(b'1.5,"north, lower",2') == [1.5, 3.0, 2.0]  # unknown text
    assert MIXED_PARSER.values(b'"1.5","east","2"') == [1.5, 2.0, 2.0]  # quoted numbers too
    # unquoted, the comma splits the text: one field too many, said as such
    assert reason_of(MIXED_PARSER, b"1.5,north, upper,2").reason == "field-count"


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (
            b'1.5,"north, upper,2',
            "field 2 'region': expected a closing quote for the quote at offset 4, got the end "
            "of the line in '1.5,\"north, upper,2'",
        ),
        (
            b'1.5,"north"x,2',
            "field 2 'region': expected ',' or the end of the line after the quoted field closed "
            "at offset 10, got 'x' at offset 11",
        ),
        (
            b'1.5,nor"th,2',
            "field 2 'region': expected quotes only around a whole field (like \"north, upper\"), "
            "got a quote at offset 7",
        ),
        (b'1.5,east,2,"x', "field 4: expected a closing quote for the quote at offset 11"),
    ],
)
def test_bad_quoting_is_garbage_saying_what_and_where(raw: bytes, detail: str) -> None:
    error = reason_of(MIXED_PARSER, raw)
    assert error.reason == "garbage" and detail in error.detail


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=' ,"ab\t', max_size=12).filter(str.strip), a=st.floats(-1e6, 1e6))
def test_any_text_written_quoted_reads_back(text: str, a: float) -> None:
    from edge_agent.sources.csv_fields import quoted

    parser = LineParser(["a", "region", "b"], categories={"region": [text.strip()]})
    assert parser.values(f"{a!r},{quoted(text)},{a!r}".encode()) == [a, 0.0, a]


# -- a micro-batch at once -----------------------------------------------------------------------


def one_by_one(parser: LineParser, raws: list[bytes]) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """What `rows` must give: `values` line by line, errors as (reason, detail)."""
    rows, errors = [], []
    for raw in raws:
        try:
            rows.append(parser.values(raw))
        except SensorLineError as exc:
            errors.append((exc.reason, exc.detail))
    return np.array(rows, dtype=np.float32).reshape(len(rows), parser.n_features), errors


good_line = st.lists(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(repr), min_size=4, max_size=4
).map(lambda fields: (" " + ",".join(fields) + "\r\n").encode())


@settings(max_examples=300, deadline=None)
@given(
    raw=st.one_of(
        st.binary(max_size=200), line_like, st.text(' ,"1.e\t', max_size=30).map(str.encode)
    )
)
def test_a_parser_with_categories_raises_only_sensor_line_errors(raw: bytes) -> None:
    try:
        out = MIXED_PARSER.parse(raw)
    except SensorLineError as exc:
        assert exc.reason in REASONS
    else:
        assert out.shape == (3,) and np.isfinite(out).all()


@settings(max_examples=300, deadline=None)
@given(
    raws=st.one_of(
        st.lists(good_line, max_size=20),  # the one-pass path, within and beyond the bounds
        st.lists(st.one_of(good_line, line_like, st.binary(max_size=40)), max_size=20),
    )
)
def test_a_batch_gives_what_its_lines_give_one_by_one(raws: list[bytes]) -> None:
    for parser in (CSV_PARSER, JSON_PARSER, PLAIN_PARSER):
        x, errors = parser.rows(raws)
        expected, expected_errors = one_by_one(parser, raws)
        assert x.dtype == np.float32 and x.shape == expected.shape
        np.testing.assert_array_equal(x, expected)
        assert [(e.reason, e.detail) for e in errors] == expected_errors
    for parser in (CSV_PARSER, PLAIN_PARSER):  # a line alone, as the row framer takes it first
        for raw in raws:
            row = parser.row(raw)
            expected, expected_errors = one_by_one(parser, [raw])
            assert row is None or (not expected_errors and np.array_equal(row, expected)), raw


def test_one_bad_line_in_a_batch_is_refused_alone_with_its_reason() -> None:
    good = [b"13.2,1.78,2.14,112", b"11,5.8,1.3,162\n", b" 14.1 ,2,3,100"]
    for bad, reason in [
        (b"13.2,1.78,2.14", "field-count"),
        (b"13.2,1.78,2.14,112,", "field-count"),
        (b"13.2,,2.14,112", "non-numeric"),
        (b"13.2,1_000,2.14,112", "non-numeric"),
        (b"13.2,nan,2.14,112", "non-finite"),
        (b"13.2,1.78,2.14,500", "out-of-range"),
        (b"", "garbage"),
        (b"13.2,1.78\x00,2.14,112", "garbage"),
    ]:
        raws = [good[0], bad, good[1], good[2]]
        x, errors = CSV_PARSER.rows(raws)
        assert [e.reason for e in errors] == [reason], bad
        assert CSV_PARSER.row(bad) is None  # alone: the framer's one-line path declines it
        np.testing.assert_array_equal(x, one_by_one(CSV_PARSER, good)[0])
    x, errors = CSV_PARSER.rows(good)  # all good: the one-pass path
    assert not errors
    if csv_rows is not None:  # each alone: one call of the C parser
        alone = [CSV_PARSER.row(raw) for raw in good]
        assert all(row is not None for row in alone)
        np.testing.assert_array_equal(np.concatenate([r for r in alone if r is not None]), x)
    np.testing.assert_array_equal(
        x,
        np.array(
            [[13.2, 1.78, 2.14, 112], [11, 5.8, 1.3, 162], [14.1, 2, 3, 100]], dtype=np.float32
        ),
    )


def test_the_row_framer_keeps_order_and_reasons_in_every_kind_of_batch() -> None:
    rng = np.random.default_rng(3)
    lows, highs = np.array([b[0] for b in BOUNDS]), np.array([b[1] for b in BOUNDS])
    card = parse_card(reference_card(rng.uniform(lows, highs, (300, 4)), NAMES))
    framer = framer_for(card)
    good = [
        b"13.2,1.78,2.14,112",
        b"12,2,2,100",
        b'{"alcohol": 14, "malic_acid": 2, "ash": 2, "magnesium": 90}',
    ]
    for messages, rows, reasons in [
        ([("csv", good[0])], [good[0]], []),  # one line
        ([("csv", b"13.2,abc,2.14,112")], [], ["non-numeric"]),
        ([("csv", good[0]), ("csv", good[1])], [good[0], good[1]], []),  # one pass
        (
            [("csv", good[1]), ("csv", b"1,2"), ("csv", good[0])],
            [good[1], good[0]],
            ["field-count"],
        ),
        (
            [("csv", good[0]), ("json", good[2]), ("image", b"\x89PNG"), ("csv", b"")],
            [good[0], good[2]],
            ["garbage", "garbage"],
        ),  # mixed formats: one by one
    ]:
        rejected: list[SensorLineError] = []
        framed = framer.frame(messages, rejected.append)
        assert [e.reason for e in rejected] == reasons
        if not rows:
            assert framed is None
            continue
        assert framed is not None and framed.x is framed.seen
        fmt_of = dict((raw, fmt) for fmt, raw in messages)
        expected = [LineParser(NAMES, fmt_of[r], card_bounds(card)).parse(r) for r in rows]
        np.testing.assert_array_equal(framed.x, np.array(expected))
