"""Categorical features, piece by piece: a CSV's text columns read as categories, a pipeline
that encodes them converted to take category codes (parity with scikit-learn on the texts), the
device's parser turning texts into codes, and drift testing categories as categories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from cloud_hub.retrain.dataset import shown
from cloud_hub.retrain.runner import read_rows
from converters.card import reference_card
from converters.categorical import TextsRefused
from converters.inputs import load_table
from converters.pipeline import build_bundle
from edge_agent.drift import DriftMonitor
from edge_agent.errors import BadDataError, SensorLineError
from edge_agent.framing import framer_for
from edge_agent.inference.runtime import open_runtime
from edge_agent.protocol.card import ModelCard, parse_card
from edge_agent.protocol.input_spec import MAX_CATEGORIES, row_spec
from edge_agent.sources.line_parser import LineParser
from edge_agent.update.bundle import read_bundle
from tests.support.categorical import (
    CELLARS,
    NUMBERS,
    TEXT,
    codes,
    csv_lines,
    mixed_pipeline,
    wine_table,
)

FEATURES = [*NUMBERS, TEXT]


# ---- the sample: a CSV with text columns ------------------------------------------------------
def test_a_csv_text_column_is_categorical(tmp_path: Path) -> None:
    sample = tmp_path / "mixed.csv"
    sample.write_text(
        "temp,region,kind,label\n"
        "20.5,west,a,yes\n"
        "21.0, east ,b,no\n"
        "19.0,,a,yes\n"
        ",north,b,no\n"
        "22.5,east,a,yes\n"
    )
    x, y, names, categories, first_texts = load_table(sample, "label")
    assert names == ["temp", "region", "kind"]
    assert categories == {"region": ["east", "north", "west"], "kind": ["a", "b"]}
    assert first_texts == {"region": (2, "west"), "kind": (2, "a")}
    want = [[20.5, 2, 0], [21.0, 0, 1], [19.0, np.nan, 0], [np.nan, 1, 1], [22.5, 0, 0]]
    np.testing.assert_array_equal(x, np.asarray(want, np.float32))
    assert y is not None and y.tolist() == ["yes", "no", "yes", "no", "yes"]


def test_a_column_of_numbers_with_empty_cells_stays_numbers(tmp_path: Path) -> None:
    sample = tmp_path / "numbers.csv"
    sample.write_text("a,b\n1,2\n,3\n4.5,-1e3\n")
    x, _, _, categories, _ = load_table(sample, None)
    assert categories == {}
    np.testing.assert_array_equal(x, np.asarray([[1, 2], [np.nan, 3], [4.5, -1000]], np.float32))


def test_too_many_texts_in_a_column_is_one_clear_error(tmp_path: Path) -> None:
    sample = tmp_path / "ids.csv"
    rows = [f"{i},id-{i}" for i in range(MAX_CATEGORIES + 1)]
    sample.write_text("value,who\n" + "\n".join(rows) + "\n")
    with pytest.raises(BadDataError) as info:
        load_table(sample, None)
    message = str(info.value)
    assert "column 'who'" in message and f"got {MAX_CATEGORIES + 1} distinct texts" in message
    assert f"at most {MAX_CATEGORIES} category texts" in message
    assert "'id-0' on line 2" in message
    long = tmp_path / "long.csv"
    long.write_text("value,note\n1," + "x" * 65 + "\n2,short\n")
    with pytest.raises(BadDataError, match="column 'note': expected category texts of at most"):
        load_table(long, None)


# ---- the converter: a pipeline that encodes texts ---------------------------------------------
@pytest.fixture(scope="module")
def wine() -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray]:
    """(training table, labels, held-out table, labels): even rows train, odd rows stay out."""
    table, y = wine_table()
    return table.iloc[::2], y[::2], table.iloc[1::2], y[1::2]


def spec() -> Any:
    return row_spec(FEATURES, {TEXT: CELLARS})


def convert(model: Any, table: pd.DataFrame, y: np.ndarray, out: Path, **kw: Any) -> Any:
    return build_bundle(
        model, codes(table), y, name="wine", version=1, out=out, input_spec=spec(), **kw
    )


def bundle_predicts(out: Path, x: np.ndarray) -> tuple[ModelCard, np.ndarray]:
    bundle = read_bundle(out.read_bytes(), None, 10**8)
    card = bundle.card
    runtime = open_runtime(card.runtime, bundle.model_bytes, card.task, list(card.classes), 1)
    return card, runtime.predict(x)


def test_a_mixed_pipeline_converts_to_take_codes_and_predicts_as_on_the_texts(
    wine: tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray], tmp_path: Path
) -> None:
    train, y_train, held, y_held = wine
    pipeline = mixed_pipeline().fit(train, y_train)
    out = tmp_path / "wine.zip"
    built = convert(pipeline, held, y_held, out)
    assert built.report["parity"] == {"ok": True}
    assert built.report["conversion"]["beyond"] == 0
    card, predicted = bundle_predicts(out, codes(held))
    # scikit-learn on the texts, the bundle on the codes: the same labels row by row
    assert predicted.tolist() == pipeline.predict(held).tolist()
    assert card.input.categories == {TEXT: tuple(CELLARS)}
    assert card.raw["input"]["categories"] == {TEXT: CELLARS}
    # the graph takes the device's one float input
    graph = onnx.load_from_string(read_bundle(out.read_bytes(), None, 10**8).model_bytes).graph
    assert [i.name for i in graph.input] == ["X"]
    # the reference profile of the category: one bin per cellar, the last for unknown texts
    profile = card.features[FEATURES.index(TEXT)]
    assert profile.edges == (0.5, 1.5, 2.5, 3.5) and profile.ks == ()
    assert list(profile.counts) == [*(int(np.sum(held[TEXT] == c)) for c in CELLARS), 0]


def test_an_unknown_text_reaches_the_pipeline_as_a_text_it_never_saw(
    wine: tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray], tmp_path: Path
) -> None:
    train, y_train, held, y_held = wine
    pipeline = mixed_pipeline().fit(train, y_train)
    out = tmp_path / "wine.zip"
    convert(pipeline, held, y_held, out)
    strange = held.copy()
    strange[TEXT] = "cave"  # not a cellar: handle_unknown="ignore" reads it as none
    _, predicted = bundle_predicts(out, codes(strange))
    assert (codes(strange)[:, -1] == len(CELLARS)).all()
    assert predicted.tolist() == pipeline.predict(strange).tolist()


def test_a_pipeline_fit_on_an_array_with_column_indices_converts_too(
    wine: tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray], tmp_path: Path
) -> None:
    train, y_train, held, y_held = wine
    pipeline = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        ("numbers", StandardScaler(), [0, 1, 2, 3]),
                        ("texts", OneHotEncoder(handle_unknown="ignore"), [4]),
                    ]
                ),
            ),
            ("model", LogisticRegression(max_iter=2000)),
        ]
    ).fit(train.to_numpy(object), y_train)
    out = tmp_path / "wine.zip"
    assert convert(pipeline, held, y_held, out).report["parity"] == {"ok": True}
    _, predicted = bundle_predicts(out, codes(held))
    assert predicted.tolist() == pipeline.predict(held.to_numpy(object)).tolist()


def test_int8_quantization_works_on_the_graph_with_the_decoder_in_front(
    wine: tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray], tmp_path: Path
) -> None:
    train, y_train, held, y_held = wine
    mlp = MLPClassifier((32,), max_iter=3000, random_state=0)
    pipeline = mixed_pipeline(mlp).fit(train, y_train)
    out = tmp_path / "wine.zip"
    report = convert(pipeline, held, y_held, out, quantize="dynamic").report
    assert report["quantize"] == "dynamic"
    assert report["size_bytes_after"] != report["size_bytes_before"]  # int8 weights went in
    assert report["parity"] == {"ok": True}
    assert report["accuracy_after"] >= report["accuracy_before"] - 0.01


def test_an_encoder_that_raises_on_unknown_texts_is_named_in_the_report(
    wine: tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray], tmp_path: Path
) -> None:
    train, y_train, held, y_held = wine
    pipeline = mixed_pipeline(handle_unknown="error").fit(train, y_train)
    report = convert(pipeline, held, y_held, tmp_path / "wine.zip").report
    assert 'handle_unknown="ignore"' in report["note"] and "inference-error" in report["note"]


def test_a_numbers_only_model_given_texts_says_so(
    wine: tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray], tmp_path: Path
) -> None:
    train, y_train, held, y_held = wine
    numbers_only = LogisticRegression(max_iter=2000).fit(codes(train), y_train)
    with pytest.raises(TextsRefused, match=r"takes numbers only; the columns \['cellar'\]"):
        convert(numbers_only, held, y_held, tmp_path / "wine.zip", feature_names=FEATURES)
    numbers = ["alcohol", "malic_acid", "ashes", "magnesium"]
    renamed = mixed_pipeline(numbers=numbers).fit(train.rename(columns={"ash": "ashes"}), y_train)
    with pytest.raises(BadDataError, match=r"\(missing \['ashes'\], not trained on \['ash'\]\)"):
        convert(renamed, held, y_held, tmp_path / "wine.zip")


def test_the_edgehub_cli_converts_a_csv_with_a_text_column(
    wine: tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import joblib

    from cloud_hub.cli.app import main

    train, y_train, held, y_held = wine
    model = tmp_path / "wine.joblib"
    joblib.dump(mixed_pipeline().fit(train, y_train), model)
    sample = tmp_path / "held.csv"
    held.assign(label=y_held).to_csv(sample, index=False)
    out = tmp_path / "wine.zip"
    argv = ["model", "convert", str(model), "--sample", str(sample), "--label", "label"]
    assert main([*argv, "--name", "wine", "--version", "1", "-o", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["report"]["parity"] == {"ok": True}
    assert "categorical columns: cellar (4 texts)" in captured.err
    card = read_bundle(out.read_bytes(), None, 10**8).card
    assert card.input.categories == {TEXT: tuple(CELLARS)}


# ---- the device: texts to codes ---------------------------------------------------------------
def test_the_parser_maps_texts_to_codes_and_unknown_texts_to_the_unknown_code() -> None:
    cats = {"region": ["east", "north_x", "west"]}
    csv = LineParser(["a", "region", "b"], "csv", categories=cats)
    assert csv.values(b"1.5, east ,2") == [1.5, 0.0, 2.0]
    assert csv.values(b"1,north_x,2") == [1.0, 1.0, 2.0]  # an underscore in a text is fine
    assert csv.values(b"1,cave,2") == [1.0, 3.0, 2.0]  # unknown: len(categories)
    assert csv.values("1,Zürich,2".encode()) == [1.0, 3.0, 2.0]
    js = LineParser(["a", "region", "b"], "json", categories=cats)
    assert js.values(b'{"b": 2, "region": "west", "a": 1}') == [1.0, 2.0, 2.0]
    assert js.values(b'{"b": 2, "region": "cave", "a": 1}') == [1.0, 3.0, 2.0]


@pytest.mark.parametrize(
    ("fmt", "raw", "reason", "detail"),
    [
        ("csv", b"1,,2", "non-numeric", "field 2 'region': expected a category text, got an empty"),
        ("csv", b"1_0,east,2", "non-numeric", "field 1 'a': expected a number, got '1_0'"),
        ("csv", b"x,east,2", "non-numeric", "field 1 'a': expected a number, got 'x'"),
        ("csv", b"1,east", "field-count", "expected 3 comma-separated fields"),
        ("csv", b"nan,east,2", "non-finite", "field 1 'a': expected a finite number"),
        (
            "json",
            b'{"a":1,"region":3,"b":2}',
            "non-numeric",
            "expected a category text, got number 3",
        ),
        (
            "json",
            b'{"a":1,"region":null,"b":2}',
            "non-numeric",
            "expected a category text, got null",
        ),
        ("json", b'{"a":1,"region":"","b":2}', "non-numeric", "got an empty field"),
        (
            "json",
            b'{"a":"1","region":"east","b":2}',
            "non-numeric",
            "field 1 'a': expected a number",
        ),
    ],
)
def test_categorical_lines_are_rejected_by_the_usual_reasons(
    fmt: str, raw: bytes, reason: str, detail: str
) -> None:
    parser = LineParser(["a", "region", "b"], fmt, categories={"region": ["east", "west"]})
    with pytest.raises(SensorLineError) as info:
        parser.values(raw)
    assert info.value.reason == reason and detail in info.value.detail


def test_the_row_framer_of_a_categorical_card_frames_texts(
    wine: tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray], tmp_path: Path
) -> None:
    train, y_train, held, y_held = wine
    out = tmp_path / "wine.zip"
    convert(mixed_pipeline().fit(train, y_train), held, y_held, out)
    card = read_bundle(out.read_bytes(), None, 10**8).card
    rejected: list[SensorLineError] = []
    framed = framer_for(card).frame([("csv", line) for line in csv_lines(held)], rejected.append)
    assert rejected == [] and framed is not None
    np.testing.assert_array_equal(framed.x, codes(held))
    # a category's bounds are its codes, whatever the reference's min and max
    far = held.iloc[:1].assign(cellar="cave")
    assert framer_for(card).frame([("csv", csv_lines(far)[0])], rejected.append) is not None


# ---- drift: categories as categories ----------------------------------------------------------
SHARES = np.array([0.45, 0.3, 0.13, 0.08, 0.04])
REGIONS = ["a", "b", "c", "d", "e"]


def stream(rng: np.random.Generator, n: int, shares: Any = SHARES, unknown: float = 0.0) -> Any:
    """Rows of two numbers and a region code drawn with `shares` (and `unknown` of the rows
    a text the card does not list)."""
    region = rng.choice(len(shares), n, p=shares).astype(np.float64)
    region[rng.random(n) < unknown] = len(REGIONS)
    return np.c_[rng.normal(size=(n, 2)), region]


def region_card(rng: np.random.Generator, rows: int = 800) -> ModelCard:
    cats = {"region": REGIONS}
    return parse_card(reference_card(stream(rng, rows), ["u", "v", "region"], categories=cats))


def test_a_stream_drawn_from_the_reference_shares_rarely_warns() -> None:
    rng = np.random.default_rng(7)
    card = region_card(rng)
    window, windows = 100, 1500
    monitor = DriftMonitor(card, window)
    reports = [monitor.add(stream(rng, window)) for _ in range(windows)]
    statuses = [r["status"] for r in reports if r is not None]
    assert len(statuses) == windows
    assert statuses.count("warn") + statuses.count("alert") <= 0.01 * windows
    assert statuses.count("alert") <= 1
    last = reports[-1]
    assert last is not None and last["ks"]["region"] == 0.0  # no KS on codes
    assert not any("KS" in note for note in last.get("notes", []))


def test_a_shift_in_the_category_shares_alarms_and_names_the_feature() -> None:
    rng = np.random.default_rng(8)
    monitor = DriftMonitor(region_card(rng), 200)
    shifted = [0.25, 0.3, 0.2, 0.15, 0.1]
    report = monitor.add(stream(rng, 200, shifted))
    assert report is not None and report["status"] == "alert"
    assert report["moved"] == ["region"]
    counts = report["categories"]["region"]
    assert sum(counts["counts"].values()) == 200 and counts["unknown"] == 0
    assert set(counts["counts"]) <= set(REGIONS)


def test_texts_the_card_does_not_list_raise_the_alarm() -> None:
    rng = np.random.default_rng(9)
    monitor = DriftMonitor(region_card(rng), 200)
    reports = [monitor.add(stream(rng, 200, unknown=0.05)) for _ in range(2)]
    assert all(r is not None for r in reports)
    last = reports[-1]
    assert last is not None and last["status"] != "ok" and "region" in last["moved"]
    assert last["categories"]["region"]["unknown"] > 0
    assert last["out_of_range"]["region"] == pytest.approx(
        last["categories"]["region"]["unknown"] / 200, abs=1e-4
    )


# ---- the hub: rows shown with their texts -----------------------------------------------------
def test_hub_data_sets_show_texts_and_read_them_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    card = region_card(rng, 100)
    assert shown(card, [0.5, -1.0, 2.0]) == [0.5, -1.0, "c"]
    assert shown(card, [0.5, -1.0, 5.0]) == [0.5, -1.0, None]  # unknown: no text kept
    sample = tmp_path / "samples.csv"
    sample.write_text("u,v,region,label\n0.5,-1,c,1\n0.25,2,,0\n1,1,cave,1\n")
    x, labels = read_rows(sample, ["u", "v", "region"], {"region": REGIONS})
    want = [[0.5, -1, 2], [0.25, 2, np.nan], [1, 1, len(REGIONS)]]
    np.testing.assert_array_equal(x, np.asarray(want, np.float32))
    assert labels == ["1", "0", "1"]


# ---- the card lists what the fitted encoder knows ---------------------------------------------
# a cellar (sorted after the others) the training rows hold a few times, the sample never
RARE = "yard"


def with_a_rare_cellar(train: pd.DataFrame, y_train: np.ndarray) -> pd.DataFrame:
    """`train` with six rows of class 2 moved to the yard: a category the fitted encoder
    knows and that tells the model something."""
    rare = train.copy()
    rare.iloc[np.flatnonzero(y_train == 2)[:6], rare.columns.get_loc(TEXT)] = RARE
    return rare


def device_predicts(out: Path, table: pd.DataFrame) -> list[Any]:
    """The device's path: the card's framer reads sensor lines with texts, the bundle's model
    runs on what it framed."""
    bundle = read_bundle(out.read_bytes(), None, 10**8)
    card = bundle.card
    rejected: list[SensorLineError] = []
    framed = framer_for(card).frame([("csv", line) for line in csv_lines(table)], rejected.append)
    assert rejected == [] and framed is not None
    runtime = open_runtime(card.runtime, bundle.model_bytes, card.task, list(card.classes), 1)
    return list(runtime.predict(framed.x).tolist())


def ordinal_forest() -> Pipeline:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.preprocessing import OrdinalEncoder

    encoder = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
    return Pipeline(
        [
            ("prep", ColumnTransformer([("texts", encoder, [TEXT])], remainder="passthrough")),
            ("model", RandomForestClassifier(n_estimators=20, random_state=0)),
        ]
    )


@pytest.mark.parametrize("make", [mixed_pipeline, ordinal_forest], ids=["onehot", "ordinal"])
def test_a_category_the_encoder_knows_but_the_sample_lacks_is_served_as_scikit_learn_does(
    make: Any,
    wine: tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray],
    tmp_path: Path,
) -> None:
    train, y_train, held, y_held = wine
    pipeline = make().fit(with_a_rare_cellar(train, y_train), y_train)
    # the engineer's sample: a CSV without a single yard in it
    sample = tmp_path / "held.csv"
    held.assign(label=y_held).to_csv(sample, index=False)
    x, labels, names, categories, _ = load_table(sample, "label")
    assert names is not None and categories == {TEXT: CELLARS}
    out = tmp_path / "wine.zip"
    build_bundle(
        pipeline, x, labels, name="wine", version=1, out=out, input_spec=row_spec(names, categories)
    )
    card = read_bundle(out.read_bytes(), None, 10**8).card
    # the sample's codes keep their meaning; the encoder's yard comes after them
    assert card.input.categories == {TEXT: (*CELLARS, RARE)}
    in_the_yard = held.assign(**{TEXT: RARE})
    sklearn_says = pipeline.predict(in_the_yard).tolist()
    assert sklearn_says != pipeline.predict(held.assign(**{TEXT: "nowhere"})).tolist()
    assert device_predicts(out, in_the_yard) == sklearn_says
    assert device_predicts(out, held) == pipeline.predict(held).tolist()
    # the reference saw no yard: its bin is empty, before the one for unknown texts
    profile = card.features[FEATURES.index(TEXT)]
    assert list(profile.counts)[-2:] == [0, 0] and len(profile.counts) == len(CELLARS) + 2


def test_an_array_fit_pipeline_s_encoder_categories_reach_the_card_by_column_index(
    wine: tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray], tmp_path: Path
) -> None:
    train, y_train, held, y_held = wine
    prep = ColumnTransformer(
        [
            ("numbers", StandardScaler(), slice(0, 4)),
            ("texts", OneHotEncoder(handle_unknown="ignore"), [4]),
        ]
    )
    pipeline = Pipeline([("prep", prep), ("model", LogisticRegression(max_iter=2000))])
    pipeline.fit(with_a_rare_cellar(train, y_train).to_numpy(object), y_train)
    out = tmp_path / "wine.zip"
    convert(pipeline, held, y_held, out)
    in_the_yard = held.assign(**{TEXT: RARE})
    assert (
        device_predicts(out, in_the_yard) == pipeline.predict(in_the_yard.to_numpy(object)).tolist()
    )


def test_encoder_categories_are_found_through_nested_steps_and_never_a_non_text() -> None:
    from sklearn.impute import SimpleImputer

    from converters.encoder_categories import encoder_categories

    frame = pd.DataFrame(
        {"a": [1.0, 2.0, 3.0, 4.0], "b": ["x", "y", None, "x"], "c": ["p", "q", "p", "r"]}
    )
    inner = Pipeline(
        [("fill", SimpleImputer(strategy="constant", fill_value="none")), ("hot", OneHotEncoder())]
    )
    prep = ColumnTransformer([("b", inner, ["b"]), ("c", OneHotEncoder(), ["c"])], remainder="drop")
    model = Pipeline([("prep", prep), ("fit", LogisticRegression())]).fit(frame, [0, 1, 0, 1])
    assert encoder_categories(model, ["a", "b", "c"]) == {
        "b": ["none", "x", "y"],
        "c": ["p", "q", "r"],
    }
    with_nan = OneHotEncoder().fit(pd.DataFrame({"b": ["x", np.nan, "y"]}))
    assert encoder_categories(with_nan, ["b"]) == {"b": ["x", "y"]}


def test_the_cli_names_the_categories_only_the_encoder_knows(
    wine: tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import joblib

    from cloud_hub.cli.app import main

    train, y_train, held, y_held = wine
    model = tmp_path / "wine.joblib"
    joblib.dump(mixed_pipeline().fit(with_a_rare_cellar(train, y_train), y_train), model)
    sample = tmp_path / "held.csv"
    held.assign(label=y_held).to_csv(sample, index=False)
    argv = ["model", "convert", str(model), "--sample", str(sample), "--label", "label"]
    out = tmp_path / "wine.zip"
    assert main([*argv, "--name", "wine", "--version", "1", "-o", str(out), "--json"]) == 0
    err = capsys.readouterr().err
    assert f"categorical columns: cellar (5 texts; 1 only the encoder knows: {RARE})" in err


# ---- texts with commas and quotes, in the sample and on the device ----------------------------
def test_quoted_texts_with_commas_go_from_the_sample_csv_to_the_device(
    wine: tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray], tmp_path: Path
) -> None:
    train, y_train, held, y_held = wine
    upper = {"north": "north, upper", "west": 'west "old"'}
    train, held = (t.assign(**{TEXT: t[TEXT].replace(upper)}) for t in (train, held))
    pipeline = mixed_pipeline().fit(train, y_train)
    sample = tmp_path / "held.csv"
    held.assign(label=y_held).to_csv(sample, index=False)  # pandas quotes them, RFC 4180's way
    assert '"north, upper"' in sample.read_text() and '"west ""old"""' in sample.read_text()
    x, labels, names, categories, _ = load_table(sample, "label")
    assert categories == {TEXT: sorted(["east", "north, upper", "south", 'west "old"'])}
    out = tmp_path / "wine.zip"
    spec = row_spec(names or [], categories)
    build_bundle(pipeline, x, labels, name="wine", version=1, out=out, input_spec=spec)
    lines = csv_lines(held)
    assert any(b'"north, upper"' in line for line in lines)
    assert device_predicts(out, held) == pipeline.predict(held).tolist()


@pytest.mark.parametrize(
    ("text", "line", "got"),
    [
        ('a,b\n1,"north, upper\n2,east\n', 2, "a quote opened on this line and never closed"),
        ('a,b\n1,east\n2,"north"x\n', 3, "text after a closing quote"),
        ('a,b\n1,"north\n, upper"\n2,east\n', 2, "and closed only on line 3"),
    ],
)
def test_bad_quoting_in_the_sample_is_one_clear_line(
    text: str, line: int, got: str, tmp_path: Path
) -> None:
    sample = tmp_path / "quoted.csv"
    sample.write_text(text)
    with pytest.raises(BadDataError) as info:
        load_table(sample, None)
    message = str(info.value)
    assert message.startswith(f"{sample}:{line}: expected each quoted field to close on its line")
    assert got in message and "\n" not in message


# ---- a CSV without a header whose text column makes its first row look like one ----------------
@pytest.mark.parametrize(
    ("label", "expected"),
    [
        (["--label", "label"], "--label 'label' is not a column"),
        (["--label", "5"], "--label '5' is not a column"),
        ([], "was trained on the columns"),  # read as a header: columns named '13.2', ...
    ],
)
def test_a_headerless_csv_with_a_text_column_hints_at_the_missing_header(
    label: list[str],
    expected: str,
    wine: tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import joblib

    from tests.support.cli import hub_fails

    train, y_train, held, y_held = wine
    model = tmp_path / "wine.joblib"
    joblib.dump(mixed_pipeline().fit(train, y_train), model)
    sample = tmp_path / "headerless.csv"
    table = held.assign(label=y_held) if label else held
    table.to_csv(sample, index=False, header=False)
    first = sample.read_text().splitlines()[0]
    assert first.split(",")[0] == repr(float(held.iloc[0, 0]))  # data, not names
    out = str(tmp_path / "wine.zip")
    argv = ["model", "convert", str(model), "--sample", str(sample), *label]
    error = hub_fails(capsys, *argv, "--name", "wine", "--version", "1", "-o", out)
    assert expected in error, error
    assert f"(hint: line 1, read as the header, holds the numbers '{first.split(',')[0]}'" in error
    assert "the first line looks like data; add a header line naming the columns)" in error


def test_encoder_categories_a_card_cannot_carry_are_one_clear_error() -> None:
    from converters.encoder_categories import widen

    spec = row_spec(["a", "region"], {"region": ["east", "west"]})
    wider = widen(spec, {"region": ["east", " padded ", "", "north", "west"], "a": ["x"]})
    assert wider.categories == {"region": ("east", "west", "north")}  # what a device can send
    with pytest.raises(BadDataError, match=r"column 'region': the encoder knows the category 'xx"):
        widen(spec, {"region": ["x" * 65]})
    many = [f"r{i}" for i in range(MAX_CATEGORIES)]
    with pytest.raises(
        BadDataError,
        match=rf"expected at most {MAX_CATEGORIES} categories, got {MAX_CATEGORIES + 2} "
        rf"\(2 in the sample, {MAX_CATEGORIES} more the encoder knows\)",
    ):
        widen(spec, {"region": many})


def test_a_sample_python_s_csv_refuses_is_one_clear_line(tmp_path: Path) -> None:
    sample = tmp_path / "huge.csv"
    sample.write_text("a,b\n1,east\n2," + "x" * 200_000 + "\n")
    with pytest.raises(BadDataError) as info:
        load_table(sample, None)
    message = str(info.value)
    assert message.startswith(f"{sample}:3: expected CSV text, got what Python's csv module")
    assert "field larger than field limit" in message and "\n" not in message
