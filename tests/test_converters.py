"""converters/: sklearn -> ONNX -> int8 -> parity -> card -> bundle, on sklearn datasets."""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import f1_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from converters.bundle import CARD_MEMBER, write_bundle
from converters.card import to_jsonable
from converters.pipeline import BuildReport, build_bundle
from converters.quantize import has_quantizable_weights, quantize_dynamic_int8, quantize_onnx
from converters.sklearn_onnx import ConversionError, to_onnx_model
from converters.validate import ParityError, check_parity, macro_f1
from edge_agent.errors import BadDataError, ConfigError, StorageError
from edge_agent.protocol.card import ModelCard, parse_card


class Unconvertible(ClassifierMixin, BaseEstimator):
    """A custom estimator skl2onnx has never heard of."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> Unconvertible:
        self.classes_ = np.unique(y)
        self.n_features_in_ = x.shape[1]
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), self.classes_[0])


def read_bundle(path: Path) -> tuple[list[str], dict[str, Any], bytes]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        card = json.loads(zf.read(CARD_MEMBER).decode("utf-8"))
        model = zf.read(card["model_file"])
    return names, card, model


def run_model(model: bytes, rows: list[list[float]]) -> list[Any]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    out = session.run(None, {"X": np.asarray(rows, dtype=np.float32)})[0]
    return np.asarray(out).ravel().tolist()


# --- fixtures: each model trained once per module -------------------------------------------


@pytest.fixture(scope="module")
def wine() -> Any:
    return load_wine()


@pytest.fixture(scope="module")
def wine_mlp(wine: Any) -> Pipeline:
    return make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(64,), max_iter=1000, random_state=0),
    ).fit(wine.data, wine.target)


@pytest.fixture(scope="module")
def wine_build(wine: Any, wine_mlp: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("wine") / "wine-1.zip"
    return build_bundle(
        wine_mlp,
        wine.data,
        wine.target,
        name="wine",
        version=1,
        out=out,
        feature_names=list(wine.feature_names),
    )


# --- classification: wine MLP ----------------------------------------------------------------


def test_wine_mlp_keeps_its_labels_after_int8(wine_build: BuildReport) -> None:
    report = wine_build.report
    assert report["label_agreement"] >= 0.97
    assert report["accuracy_before"] - report["accuracy_after"] <= 0.01
    assert report["max_abs_diff"] < 0.05
    assert report["size_bytes_after"] < report["size_bytes_before"]
    assert report["latency_p50_ms"] > 0
    assert report["parity"] == {"ok": True}


def test_wine_bundle_holds_a_card_the_agent_parses(wine: Any, wine_build: BuildReport) -> None:
    names, card_obj, _ = read_bundle(wine_build.path)
    assert names == ["card.json", "model.onnx"]
    assert card_obj == wine_build.card
    card = parse_card(card_obj)
    assert isinstance(card, ModelCard)
    assert card.task == "classification"
    assert card.n_features == 13
    assert card.feature_names == list(wine.feature_names)
    assert card.classes == (0, 1, 2)
    assert card.input_name == "X"
    assert card.min_agreement == 0.9
    assert str(card.model) == "wine@1"
    assert sum(card.prediction_counts) == card_obj["reference"]["rows"]
    assert sum(card.features[0].counts) == card_obj["reference"]["rows"]
    assert len(card.sample_inputs) == 16


def test_wine_card_sample_matches_the_shipped_model(wine_build: BuildReport) -> None:
    _, card, model = read_bundle(wine_build.path)
    assert run_model(model, card["sample"]["inputs"]) == card["sample"]["outputs"]
    graph = onnx.load_from_string(model).graph
    assert [o.name for o in graph.output] == ["label", "probabilities"]
    assert any(node.op_type == "MatMulInteger" for node in graph.node)


def test_quantize_does_not_log_the_preprocessing_hint(
    wine: Any, wine_mlp: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    fp32 = to_onnx_model(wine_mlp, wine.data).SerializeToString()
    with caplog.at_level(logging.INFO):
        quantized = quantize_dynamic_int8(fp32)
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]
    assert len(quantized) < len(fp32)


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_weights_take_seven_bits_so_no_cpu_saturates_them(
    wine: Any, wine_mlp: Pipeline, mode: str
) -> None:
    # x86 without VNNI sums pairs of uint8 x int8 products in 16 bits (VPMADDUBSW): two
    # weights near 127 saturate it, and the device answers differently from the hub. With
    # |w| <= 64, 2 * 255 * 64 = 32640 fits. Checked on the weights themselves, so a hub with
    # VNNI (where nothing saturates) still sees it.
    fp32 = to_onnx_model(wine_mlp, wine.data).SerializeToString()
    artifact = quantize_onnx(fp32, mode, wine.data.astype(np.float32))
    model = onnx.load_from_string(artifact.model_bytes)
    weights = [
        onnx.numpy_helper.to_array(init)
        for init in model.graph.initializer
        if init.data_type == onnx.TensorProto.INT8 and init.dims  # not a scalar zero point
    ]
    assert weights, "no int8 weight found"
    for w in weights:
        assert max(-int(w.min()), int(w.max())) <= 64, (int(w.min()), int(w.max()))


def test_string_labels_and_weightless_graph(tmp_path: Path) -> None:
    data = load_breast_cancer()
    labels = np.asarray(data.target_names)[data.target]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(data.data, labels)
    fp32 = to_onnx_model(clf, data.data).SerializeToString()
    assert not has_quantizable_weights(onnx.load_from_string(fp32))
    assert quantize_dynamic_int8(fp32) == fp32

    result = build_bundle(clf, data.data, labels, name="cancer", version=3, out=tmp_path / "c.zip")
    card = parse_card(result.card)
    assert card.classes == ("benign", "malignant")
    assert result.card["output"]["label"]["dtype"] == "string"
    assert set(card.sample_outputs) <= {"benign", "malignant"}
    assert result.report["label_agreement"] == 1.0


# --- regression: diabetes --------------------------------------------------------------------


@pytest.mark.parametrize(
    "regressor",
    [
        make_pipeline(StandardScaler(), Ridge()),
        GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=0),
    ],
    ids=["ridge", "gbr"],
)
def test_regressor_bundle(regressor: Any, tmp_path: Path) -> None:
    x, y = load_diabetes(return_X_y=True)
    regressor.fit(x, y)
    result = build_bundle(regressor, x, y, name="diabetes", version=2, out=tmp_path / "d.zip")
    report = result.report
    assert report["task"] == "regression"
    assert report["max_abs_diff"] < 1e-2
    assert abs(report["rmse_after"] - report["rmse_before"]) / report["rmse_before"] < 1e-4
    assert report["mae_after"] == pytest.approx(report["mae_before"], rel=1e-4)

    _, card_obj, model = read_bundle(result.path)
    card = parse_card(card_obj)
    assert card.task == "regression"
    assert card.n_features == 10
    assert card.classes == ()
    preds = card_obj["reference"]["predictions"]
    assert len(preds["counts"]) == len(preds["edges"]) + 1
    assert sum(preds["counts"]) == card_obj["reference"]["rows"]
    got = run_model(model, card_obj["sample"]["inputs"])
    assert np.allclose(got, card_obj["sample"]["outputs"])


# --- what cannot be converted ----------------------------------------------------------------


def test_unsupported_estimator_names_itself(wine: Any) -> None:
    est = Unconvertible().fit(wine.data, wine.target)
    with pytest.raises(ConversionError, match=r"Unconvertible.*supported") as info:
        to_onnx_model(est, wine.data)
    assert "https://onnx.ai/sklearn-onnx/supported.html" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert isinstance(info.value, BadDataError)


class NotAModel(BaseEstimator):
    """Neither classifier nor regressor."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> NotAModel:
        self.mean_ = x.mean(axis=0)
        return self


def test_estimator_that_is_neither_classifier_nor_regressor(wine: Any) -> None:
    est = NotAModel().fit(wine.data, wine.target)
    with pytest.raises(ConversionError, match=r"cannot convert NotAModel: .*supported"):
        to_onnx_model(est, wine.data)


def test_unsupported_step_inside_a_pipeline(wine: Any, tmp_path: Path) -> None:
    pipe = make_pipeline(StandardScaler(), Unconvertible()).fit(wine.data, wine.target)
    with pytest.raises(ConversionError, match=r"cannot convert Unconvertible \(inside Pipeline"):
        build_bundle(pipe, wine.data, wine.target, name="w", version=1, out=tmp_path / "w.zip")
    assert list(tmp_path.iterdir()) == []


def test_unfitted_estimator(wine: Any) -> None:
    with pytest.raises(ConversionError, match="not fitted"):
        to_onnx_model(MLPClassifier(), wine.data)


# --- bad input -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_clf(wine: Any) -> Any:
    return LogisticRegression(max_iter=5000).fit(wine.data, wine.target)


def _with_nan_column(x: np.ndarray) -> np.ndarray:
    bad = x.copy()
    bad[:, 4] = np.nan
    return bad


def _with_inf(x: np.ndarray) -> np.ndarray:
    bad = x.copy()
    bad[3, 2] = np.inf
    return bad


@pytest.mark.parametrize(
    ("make_x", "make_y", "message"),
    [
        (lambda x: x[:, 0], lambda y: y, r"expected a 2-D array .* got shape \(178,\)"),
        (lambda x: x[None], lambda y: y, r"expected a 2-D array .* got shape \(1, 178, 13\)"),
        (lambda x: x[:0], lambda y: y[:0], r"at least one row .* got shape \(0, 13\)"),
        (lambda x: x[:, :12], lambda y: y, r"expected 13 features .* got 12"),
        (lambda x: x, lambda y: y[:-8], r"y: expected 178 targets .* got 170"),
        (lambda x: x, lambda y: np.c_[y, y], r"y: expected a 1-D array .* got shape \(178, 2\)"),
        (_with_nan_column, lambda y: y, r"column\(s\) \[4\] entirely NaN"),
        (_with_inf, lambda y: y, r"infinity .* column\(s\) \[2\]"),
        (lambda x: x.astype(str).astype(object) + "kg", lambda y: y, r"convertible to float32"),
    ],
    ids=["1d", "3d", "empty", "n-features", "y-length", "y-2d", "nan-column", "inf", "text"],
)
def test_bad_data_says_expected_and_got(
    wine: Any, small_clf: Any, tmp_path: Path, make_x: Any, make_y: Any, message: str
) -> None:
    with pytest.raises(BadDataError, match=message):
        build_bundle(
            small_clf,
            make_x(wine.data),
            make_y(wine.target),
            name="wine",
            version=1,
            out=tmp_path / "w.zip",
        )
    assert not (tmp_path / "w.zip").exists()


def test_bad_arguments(wine: Any, small_clf: Any, tmp_path: Path) -> None:
    out = tmp_path / "w.zip"
    x, y = wine.data, wine.target
    with pytest.raises(ConfigError, match="quantize: expected one of"):
        build_bundle(small_clf, x, y, name="wine", version=1, out=out, quantize="int4")
    with pytest.raises(BadDataError, match="model name"):
        build_bundle(small_clf, x, y, name="Wine Model!", version=1, out=out)
    with pytest.raises(BadDataError, match="version"):
        build_bundle(small_clf, x, y, name="wine", version=0, out=out)
    with pytest.raises(BadDataError, match="feature_names: expected 13 names"):
        build_bundle(small_clf, x, y, name="wine", version=1, out=out, feature_names=["a"])
    with pytest.raises(BadDataError, match="sample_x: expected a 2-D array"):
        to_onnx_model(small_clf, x[0])


# --- parity ----------------------------------------------------------------------------------


def test_check_parity_thresholds() -> None:
    ok = {"task": "classification", "accuracy_before": 0.95, "accuracy_after": 0.945}
    check_parity(ok)
    bad = {**ok, "accuracy_after": 0.93}
    with pytest.raises(ParityError, match=r"accuracy 0.9500 before conversion, 0.9300 after"):
        check_parity(bad)
    check_parity(bad, max_accuracy_drop=0.05)
    reg = {"task": "regression", "rmse_before": 10.0, "rmse_after": 10.05}
    check_parity(reg)
    with pytest.raises(ParityError, match=r"RMSE 10 before conversion, 10.5 after"):
        check_parity({**reg, "rmse_after": 10.5})
    assert issubclass(ParityError, BadDataError)


def test_parity_failure_blocks_unless_forced(wine: Any, small_clf: Any, tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"name": "wine", "version": 1, "max_accuracy_drop": -1.0}
    with pytest.raises(ParityError):
        build_bundle(small_clf, wine.data, wine.target, out=tmp_path / "a.zip", **kwargs)
    assert not (tmp_path / "a.zip").exists()
    forced = build_bundle(
        small_clf, wine.data, wine.target, out=tmp_path / "b.zip", force=True, **kwargs
    )
    assert forced.report["parity"]["ok"] is False
    assert parse_card(read_bundle(forced.path)[1]).validation["parity"]["forced"] is True


def test_macro_f1_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    y_true, y_pred = rng.integers(0, 4, 200), rng.integers(0, 5, 200)
    assert macro_f1(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, average="macro"))


# --- the bundle file -------------------------------------------------------------------------


def test_write_bundle_is_deterministic_and_leaves_no_temp_files(
    wine_build: BuildReport, tmp_path: Path
) -> None:
    _, card, model = read_bundle(wine_build.path)
    first, second = tmp_path / "a" / "one.zip", tmp_path / "b" / "two.zip"
    write_bundle(first, card, model)
    write_bundle(second, card, model)
    write_bundle(second, card, model)  # overwrite in place
    assert first.read_bytes() == second.read_bytes() == wine_build.path.read_bytes()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["one.zip", "two.zip"]
    with zipfile.ZipFile(first) as zf:
        infos = zf.infolist()
    assert [i.filename for i in infos] == ["card.json", "model.onnx"]
    # the card deflated, the model stored (so that a new version's delta stays small)
    assert [i.compress_type for i in infos] == [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED]
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}


def test_write_bundle_keeps_the_old_file_when_replace_fails(
    wine_build: BuildReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, card, model = read_bundle(wine_build.path)
    target = tmp_path / "wine.zip"
    target.write_bytes(b"previous bundle")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError, match=f"{target}: disk full"):  # ours, naming the file
        write_bundle(target, card, model)
    assert target.read_bytes() == b"previous bundle"
    assert [p.name for p in tmp_path.iterdir()] == ["wine.zip"]


def test_write_bundle_rejects_bad_cards(tmp_path: Path) -> None:
    with pytest.raises(BadDataError, match="model_file: expected a plain file name"):
        write_bundle(tmp_path / "x.zip", {"model_file": "../evil.onnx"}, b"")
    with pytest.raises(BadDataError, match="JSON-serializable"):
        write_bundle(tmp_path / "x.zip", {"model_file": "m.onnx", "v": float("nan")}, b"")
    assert list(tmp_path.iterdir()) == []


def test_to_jsonable_converts_numpy() -> None:
    obj = {"a": np.int64(3), "b": np.float32(0.5), "c": np.array([1, 2]), "d": (np.str_("x"),)}
    assert to_jsonable(obj) == {"a": 3, "b": 0.5, "c": [1, 2], "d": ["x"]}
    assert to_jsonable([np.float64("nan")]) == [None]
    json.dumps(to_jsonable(obj), allow_nan=False)
