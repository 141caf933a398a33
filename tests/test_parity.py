"""Parity compares outputs row by row, so a converter that computes something else is refused
even where accuracy or RMSE would hide it, and quantization may move outputs only by what its
precision allows."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from skl2onnx import to_onnx
from sklearn.datasets import load_diabetes, load_wine, make_friedman1
from sklearn.ensemble import GradientBoostingRegressor, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsRegressor
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from converters.inputs import load_model
from converters.pipeline import build_bundle
from converters.sklearn_onnx import SklearnSource
from converters.source import Artifact
from converters.validate import (
    CONVERSION_TOLERANCE,
    MAX_BEYOND,
    QUANTIZE_TOLERANCE,
    ParityError,
    check_parity,
    compare_outputs,
    output_moves,
    outputs_problem,
)


def _diabetes() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_diabetes(return_X_y=True)
    return train_test_split(x, y, test_size=0.5, random_state=0)  # type: ignore[return-value]


@pytest.mark.parametrize("quantize", ["none", "dynamic"])
def test_a_knn_converted_with_the_wrong_weights_is_refused(quantize: str, tmp_path: Path) -> None:
    """skl2onnx converts KNeighborsRegressor(weights="distance") as uniform weights. On rows the
    model was not trained on, its RMSE hardly moves, but the outputs do."""
    x_train, x_new, y_train, y_new = _diabetes()
    knn = KNeighborsRegressor(weights="distance").fit(x_train, y_train)
    uniform = KNeighborsRegressor().fit(x_train, y_train).predict(x_new)
    # what an RMSE-only check saw: within a few percent, so it passed
    rmse = np.sqrt(np.mean((knn.predict(x_new) - y_new) ** 2))
    assert abs(np.sqrt(np.mean((uniform - y_new) ** 2)) - rmse) / rmse < 0.05
    out = tmp_path / "knn.zip"
    with pytest.raises(ParityError, match=r"the unquantized conversion's outputs differ") as info:
        build_bundle(knn, x_new, y_new, name="knn", version=1, out=out, quantize=quantize)
    message = str(info.value)
    assert "does not compute what the source does" in message
    assert re.search(r"on 1[01]\d of 111 rows .*tolerance 0.001 \(float32 rounding\)", message)
    assert re.search(r"sample rows \d+, \d+, \d+, \d+, \d+, \.\.\., counted from 0", message)
    assert "\n" not in message
    assert not out.exists()


def test_the_same_knn_with_uniform_weights_passes(tmp_path: Path) -> None:
    x_train, x_new, y_train, y_new = _diabetes()
    knn = KNeighborsRegressor().fit(x_train, y_train)
    built = build_bundle(knn, x_new, y_new, name="knn", version=1, out=tmp_path / "k.zip")
    assert built.report["conversion"]["beyond"] == 0
    assert built.report["parity"] == {"ok": True}


def test_an_onnx_file_with_perturbed_weights_is_refused(tmp_path: Path) -> None:
    """A model file whose weights were changed after training (a wrong export, a corrupted
    copy) against the estimator it claims to be: its outputs move on every row."""
    x, y = load_wine(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    right = to_onnx(model, x[:1].astype(np.float32), options={"zipmap": False})
    good = tmp_path / "good.onnx"
    good.write_bytes(right.SerializeToString())
    bad_model = onnx.load_from_string(right.SerializeToString())
    perturbed = 0
    for node in bad_model.graph.node:  # skl2onnx keeps a linear model's weights in attributes
        for attr in node.attribute:
            if attr.name == "coefficients":
                weights = [w * 1.5 + 0.3 for w in attr.floats]
                del attr.floats[:]
                attr.floats.extend(weights)
                perturbed += 1
    assert perturbed == 1
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(bad_model.SerializeToString())
    # the file stands on its own: parity against its own outputs is trivially met, so compare
    # it with the estimator it was exported from, as the converter does with a source model
    source = load_model(good)
    built = build_bundle(source, x, y, name="wine", version=1, out=tmp_path / "g.zip")
    assert built.report["conversion"]["beyond"] == 0
    wrong = load_model(bad)
    report = dict(built.report)
    moves = output_moves(
        "classification",
        model.predict(x.astype(np.float32)),
        wrong.predict(x.astype(np.float32)),
        model.predict_proba(x.astype(np.float32)),
        wrong.scores(x.astype(np.float32)),
    )
    report["conversion"] = {
        "rows": len(moves),
        "beyond": int(np.sum(moves > CONVERSION_TOLERANCE)),
        "largest": float(np.max(moves)),
        "tolerance": CONVERSION_TOLERANCE,
        "allowed_share": MAX_BEYOND["conversion"],
    }
    assert report["conversion"]["beyond"] > 0.5 * len(x)
    with pytest.raises(ParityError, match=r"on \d+ of 178 rows"):
        check_parity(report)


def test_output_moves_for_values_are_measured_in_the_sources_spread() -> None:
    ref = np.array([0.0, 10.0, 20.0, 30.0])  # standard deviation 11.18
    moved = output_moves("regression", ref, ref + np.array([0.0, 0.01, 1.118, -11.18]))
    assert moved == pytest.approx([0.0, 0.01 / 11.18, 0.1, 1.0], rel=1e-3)
    flat = np.full(3, 5.0)  # no spread: measured against the outputs' scale
    assert output_moves("regression", flat, flat + 0.5) == pytest.approx([0.1] * 3)


def test_output_moves_for_classes_are_probability_and_labels() -> None:
    ref = np.array([0, 1, 1])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]])
    q = np.array([[0.85, 0.15], [0.2, 0.8], [0.6, 0.4]])
    moved = output_moves("classification", ref, np.array([0, 1, 0]), p, q)
    assert moved[:2] == pytest.approx([0.05, 0.0])
    assert moved[2] == np.inf  # the label changed
    assert list(output_moves("classification", ref, np.array([0, 0, 1]))) == [0, np.inf, 0]


def test_tolerances_follow_the_quantization() -> None:
    """Looser as the precision falls; the unquantized conversion always at float32's."""
    assert QUANTIZE_TOLERANCE["none"] == CONVERSION_TOLERANCE
    assert CONVERSION_TOLERANCE < QUANTIZE_TOLERANCE["float16"] < QUANTIZE_TOLERANCE["dynamic"]
    assert QUANTIZE_TOLERANCE["dynamic"] == QUANTIZE_TOLERANCE["static"]


def test_int8_stays_within_its_tolerance_and_says_how_far(tmp_path: Path) -> None:
    """The quantized MLP is compared with its unquantized conversion (which is compared with
    the source): each stage says how far the outputs moved."""
    x_train, x_new, y_train, y_new = _diabetes()
    mlp = make_pipeline(
        StandardScaler(),
        MLPRegressor(
            hidden_layer_sizes=(32,), max_iter=3000, learning_rate_init=0.01, random_state=0
        ),
    ).fit(x_train, y_train)
    built = build_bundle(
        mlp, x_new, y_new, name="r", version=1, out=tmp_path / "r.zip", quantize="dynamic"
    )
    q = built.report["quantization"]
    assert q["tolerance"] == QUANTIZE_TOLERANCE["dynamic"]
    assert 0.001 < q["largest"] < q["tolerance"]
    assert q["beyond"] == 0 and q["first_rows_beyond"] == []
    assert built.report["conversion"]["largest"] < 1e-5
    assert built.card["validation"]["quantization"] == q


def test_a_model_int8_leaves_alone_has_nothing_to_compare_in_quantization(
    tmp_path: Path,
) -> None:
    x_train, x_new, y_train, y_new = _diabetes()
    ridge = make_pipeline(StandardScaler(), Ridge()).fit(x_train, y_train)
    built = build_bundle(
        ridge, x_new, y_new, name="r", version=1, out=tmp_path / "r.zip", quantize="dynamic"
    )
    assert built.report["quantization"]["largest"] == 0.0  # the float32 graph, shipped as is
    assert 0 < built.report["conversion"]["largest"] < CONVERSION_TOLERANCE


class OneLeafOff(SklearnSource):
    """A converter bug in one leaf: the first leaf of the first tree of a gradient-boosted
    regressor gets `delta` added to its value in the ONNX graph."""

    def __init__(self, estimator: Any, delta: float) -> None:
        super().__init__(estimator)
        self.delta = delta

    def convert(self, x: np.ndarray, quantize: str) -> Artifact:
        artifact = super().convert(x, quantize)
        model = onnx.load_from_string(artifact.float_bytes)
        node = next(n for n in model.graph.node if n.op_type == "TreeEnsembleRegressor")
        weights = next(a for a in node.attribute if a.name == "target_weights")
        weights.floats[0] += self.delta
        wrong = model.SerializeToString()
        return replace(artifact, float_bytes=wrong, model_bytes=wrong)


def test_a_tree_converted_with_one_wrong_leaf_is_refused(tmp_path: Path) -> None:
    """Rows reaching the wrong leaf (18 of 111) move by a fifth of the spread while the RMSE
    stays within 1%: trees are held to the same share of rows as every other model, the rows
    lying on a float32 split aside."""
    x_train, x_new, y_train, y_new = _diabetes()
    gbr = GradientBoostingRegressor(n_estimators=20, max_depth=3, random_state=0)
    gbr.fit(x_train, y_train)
    right = build_bundle(gbr, x_new, y_new, name="g", version=1, out=tmp_path / "right.zip")
    assert right.report["conversion"]["beyond"] == 0
    out = tmp_path / "wrong.zip"
    with pytest.raises(ParityError, match=r"unquantized conversion's outputs differ") as info:
        build_bundle(OneLeafOff(gbr, 10.0), x_new, y_new, name="g", version=1, out=out)
    assert re.search(r"on 18 of 111 rows \(largest 0.19\d* of spread", str(info.value))
    assert not out.exists()
    forced = build_bundle(
        OneLeafOff(gbr, 10.0), x_new, y_new, name="g", version=1, out=out, force=True
    )
    rise = forced.report["rmse_after"] / forced.report["rmse_before"] - 1
    assert abs(rise) < 0.01  # what an RMSE-only check saw: nothing
    assert forced.report["parity"]["ok"] is False
    assert forced.card["validation"]["conversion"]["beyond"] == 18
    assert out.is_file()


def test_rows_on_a_float32_split_are_edges_not_differences(tmp_path: Path) -> None:
    """HistGradientBoosting's thresholds are training values: on its training rows, a feature
    that float32 rounds up past its threshold takes the other branch in the graph (and only
    there). Asked again one float32 step away, the source agrees."""
    x, y = make_friedman1(n_samples=400, noise=0.1, random_state=0)
    hgb = HistGradientBoostingRegressor(max_iter=20, random_state=0).fit(x, y)
    built = build_bundle(hgb, x, y, name="h", version=1, out=tmp_path / "h.zip", quantize="none")
    conversion = built.report["conversion"]
    assert conversion["beyond"] == 0
    assert conversion["edge_rows"] >= 10  # 30 of 200 with scikit-learn 1.9


# --- the tolerances, on plain arrays ----------------------------------------------------------


def _stage(task: str, moved: np.ndarray, stage: str, quantize: str) -> dict[str, Any]:
    tolerance = CONVERSION_TOLERANCE if stage == "conversion" else QUANTIZE_TOLERANCE[quantize]
    return compare_outputs(task, moved, tolerance, MAX_BEYOND[stage])


def _verdict(task: str, stage: str, quantize: str, moved: np.ndarray) -> str | None:
    report = {"task": task, "quantize": quantize, stage: _stage(task, moved, stage, quantize)}
    return outputs_problem(report, stage)


@pytest.mark.parametrize(
    ("quantize", "tolerance"),
    [("none", 1e-3), ("float16", 1e-2), ("dynamic", 0.1), ("static", 0.1)],
)
def test_each_quantization_moves_values_by_its_own_tolerance(
    quantize: str, tolerance: float
) -> None:
    """Values 0..99 (spread 28.9): every row may move by just under the mode's tolerance of
    the spread; 5 rows in 100 may move further, 6 may not."""
    ref = np.arange(100.0)
    spread = float(np.std(ref))

    def moved_by(share: float, beyond: int) -> np.ndarray:
        got = ref + share * tolerance * spread
        got[:beyond] += spread
        return output_moves("regression", ref, got)

    assert _verdict("regression", "quantization", quantize, moved_by(0.99, 0)) is None
    assert _verdict("regression", "quantization", quantize, moved_by(0.99, 5)) is None
    refused = _verdict("regression", "quantization", quantize, moved_by(0.99, 6))
    assert refused is not None
    assert "6 of 100 rows (largest 1." in refused
    assert f"tolerance {tolerance:g} for quantize={quantize}" in refused
    assert "expected at most 5% of rows beyond it; sample rows 0, 1, 2, 3, 4, ..." in refused
    assert _verdict("regression", "quantization", quantize, moved_by(1.01, 0)) is not None


@pytest.mark.parametrize("quantize", ["none", "float16", "dynamic", "static"])
def test_the_conversion_is_held_to_float32_whatever_the_quantization(quantize: str) -> None:
    ref = np.arange(100.0)
    spread = float(np.std(ref))
    small = output_moves("regression", ref, ref + 0.5e-3 * spread)
    assert _verdict("regression", "conversion", quantize, small) is None
    one_off = output_moves("regression", ref, np.where(ref == 7, ref + 0.01 * spread, ref))
    assert _verdict("regression", "conversion", quantize, one_off) is None  # 1 row in 100
    two_off = output_moves("regression", ref, np.where(ref < 2, ref + 0.01 * spread, ref))
    refused = _verdict("regression", "conversion", quantize, two_off)
    assert refused is not None and "tolerance 0.001" in refused


@pytest.mark.parametrize(
    ("quantize", "move", "holds"),
    [
        ("none", 0.0009, True),
        ("none", 0.002, False),
        ("float16", 0.009, True),
        ("float16", 0.02, False),
        ("dynamic", 0.09, True),
        ("static", 0.09, True),
        ("static", 0.2, False),
    ],
)
def test_probabilities_move_by_the_modes_tolerance(quantize: str, move: float, holds: bool) -> None:
    ref = np.zeros(50, dtype=np.int64)
    p = np.tile([0.7, 0.3], (50, 1))
    q = p + np.array([-move, move])  # the label stays
    moved = output_moves("classification", ref, ref.copy(), p, q)
    assert (_verdict("classification", "quantization", quantize, moved) is None) is holds


def test_a_changed_label_is_beyond_any_tolerance_and_counted() -> None:
    ref = np.zeros(40, dtype=np.int64)
    got = ref.copy()
    got[[3, 9, 20]] = 1  # 3 rows in 40: more than the 5% int8 may move beyond tolerance
    moved = output_moves("classification", ref, got)
    stage = _stage("classification", moved, "quantization", "dynamic")
    assert stage["labels_changed"] == 3 and stage["largest"] == 0.0
    refused = _verdict("classification", "quantization", "dynamic", moved)
    assert refused is not None
    assert "on 3 of 40 rows (largest 0 in probability, 3 label(s) changed" in refused
    assert "sample rows 3, 9, 20, counted from 0" in refused


def test_nan_on_both_sides_agrees_and_on_one_side_is_beyond() -> None:
    ref = np.array([1.0, np.nan, 3.0, 4.0])
    moved = output_moves("regression", ref, np.array([1.0, np.nan, np.nan, 4.0]))
    assert moved[:2].tolist() == [0.0, 0.0] and moved[2] == np.inf
    p = np.array([[0.5, 0.5], [np.nan, np.nan]])
    labels = np.array([0, 0])
    assert output_moves("classification", labels, labels, p, p).tolist() == [0.0, 0.0]
    q = np.array([[np.nan, np.nan], [np.nan, np.nan]])
    assert output_moves("classification", labels, labels, p, q).tolist() == [np.inf, 0.0]
    stage = compare_outputs("regression", moved, 0.001, 0.0)
    assert stage["beyond"] == 1 and stage["largest"] == 0.0  # the largest measurable move
    assert stage["nan_one_side"] == 1
    refused = outputs_problem(
        {"task": "regression", "quantize": "none", "conversion": stage}, "conversion"
    )
    assert refused is not None and "1 NaN where the other side has a value" in refused


def test_rows_are_named_by_their_place_in_the_sample() -> None:
    moved = np.array([0.0, 0.5, 0.0, 0.7])
    stage = compare_outputs("regression", moved, 0.1, 0.0, row_ids=np.array([12, 40, 3, 8]))
    assert stage["first_rows_beyond"] == [8, 40]  # sorted


def test_rows_asked_again_count_as_edges() -> None:
    moved = np.array([0.0, 0.5, 0.0, 0.7])
    asked: list[list[int]] = []

    def again(rows: np.ndarray) -> np.ndarray:
        asked.append(rows.tolist())
        return np.array([0.0, 0.6])  # row 1 was on a split, row 3 was not

    stage = compare_outputs("regression", moved, 0.1, 0.0, again=again)
    assert asked == [[1, 3]]
    assert (stage["beyond"], stage["edge_rows"], stage["first_rows_beyond"]) == (1, 1, [3])
    assert stage["largest"] == 0.6


def test_int8_that_grows_a_small_mlp_says_so(tmp_path: Path) -> None:
    from sklearn.datasets import load_iris
    from sklearn.neural_network import MLPClassifier

    x, y = load_iris(return_X_y=True)
    mlp = make_pipeline(StandardScaler(), MLPClassifier((8,), max_iter=2000, random_state=0))
    built = build_bundle(mlp.fit(x, y), x, y, name="m", version=1, out=tmp_path / "m.zip")
    report = built.report
    assert report["size_bytes_after"] > report["size_bytes_before"]
    assert "int8 made the model larger" in report["note"]
    assert "--quantize none" in report["note"]


def test_the_cli_table_shows_each_stage() -> None:
    from cloud_hub.rollout.model_report import report_rows

    moved = np.array([0.0, 0.02, np.inf, 0.0])
    report = {
        "task": "classification",
        "conversion": compare_outputs("classification", np.zeros(4), 1e-3, 0.01),
        "quantization": compare_outputs("classification", moved, 0.1, 0.05),
    }
    rows = {check: after for check, _, after in report_rows(report)}
    assert rows["outputs: unquantized vs source"] == (
        "0 of 4 rows beyond 0.001 in probability (largest 0)"
    )
    assert rows["outputs: shipped vs unquantized"] == (
        "1 of 4 rows beyond 0.1 in probability (largest 0.02), 1 label(s) changed"
    )
