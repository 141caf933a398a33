"""Parity compares outputs row by row, so a converter that computes something else is refused
even where accuracy or RMSE would hide it, and quantization may move outputs only by what its
precision allows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from skl2onnx import to_onnx
from sklearn.datasets import load_diabetes, load_wine
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from converters.inputs import load_model
from converters.pipeline import build_bundle
from converters.validate import (
    CONVERSION_TOLERANCE,
    MAX_BEYOND,
    QUANTIZE_TOLERANCE,
    ParityError,
    check_parity,
    output_moves,
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
    assert "does not compute what the source does" in str(info.value)
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
    assert QUANTIZE_TOLERANCE["none"] == CONVERSION_TOLERANCE
    assert CONVERSION_TOLERANCE < QUANTIZE_TOLERANCE["float16"] < QUANTIZE_TOLERANCE["dynamic"]
    assert QUANTIZE_TOLERANCE["dynamic"] == QUANTIZE_TOLERANCE["static"]


def test_int8_stays_within_its_tolerance_and_says_how_far(tmp_path: Path) -> None:
    x_train, x_new, y_train, y_new = _diabetes()
    ridge = make_pipeline(StandardScaler(), Ridge()).fit(x_train, y_train)
    built = build_bundle(
        ridge, x_new, y_new, name="r", version=1, out=tmp_path / "r.zip", quantize="dynamic"
    )
    q = built.report["quantization"]
    assert q["tolerance"] == QUANTIZE_TOLERANCE["dynamic"]
    assert 0 < q["largest"] < q["tolerance"]
    assert built.report["conversion"]["largest"] < CONVERSION_TOLERANCE
