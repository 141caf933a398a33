"""Keras -> TFLite conversion (converters.keras_tflite) and the device's TFLite runtime
(edge_agent.inference.tflite), on small Keras models trained here on scikit-learn's datasets.

Every TFLite model is run by `TfliteRuntime`, the class a device runs, and compared with the
Keras model it came from. Subprocess tests cover what an in-process test cannot: a device without
any TFLite runtime, and a hub process whose stderr must stay free of TensorFlow's noise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

from cloud_hub.cli.app import main as hub_main
from converters.keras_tflite import (
    QUANTIZE_MODES,
    TFLITE_AS_IS,
    KerasSource,
    keras_artifact,
    load_keras,
    load_tflite,
)
from converters.pipeline import build_bundle
from converters.runtimes.targets import run_on
from converters.source import Artifact
from converters.validate import QUANTIZE_TOLERANCE
from edge_agent.errors import BadDataError, BundleRejected, ConfigError
from edge_agent.inference.runtime import load_runtime, open_runtime
from edge_agent.inference.tflite import TfliteRuntime
from edge_agent.update.bundle import read_bundle
from edge_agent.update.health import check_health

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Trained:
    path: Path  # the saved .keras file
    source: KerasSource  # loaded back from it
    x: np.ndarray  # float32 rows (standardized features)
    y: np.ndarray
    artifacts: dict[str, Artifact]


def _standardized(x: np.ndarray) -> np.ndarray:
    return ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)


def _train(
    tmp: Path, name: str, x: np.ndarray, y: np.ndarray, hidden: tuple[int, ...], head: Any
) -> Trained:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            *[keras.layers.Dense(h, activation="relu") for h in hidden],
            head,
        ]
    )
    loss = {"softmax": "sparse_categorical_crossentropy", "sigmoid": "binary_crossentropy"}
    model.compile(keras.optimizers.Adam(0.01), loss.get(head.activation.__name__, "mse"))
    model.fit(x, y, epochs=20, batch_size=32, verbose=0)
    path = tmp / f"{name}.keras"
    with warnings.catch_warnings():
        # Keras 3.15 saving variables calls np.array(tensor) in a way numpy 2 deprecates
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        model.save(path)
    source = load_keras(path)
    return Trained(path, source, x, y, {})


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """13 features -> 64 -> 32 -> softmax over 3 classes, with all four TFLite variants."""
    x, y = load_wine(return_X_y=True)
    trained = _train(
        tmp_path_factory.mktemp("wine"),
        "wine",
        _standardized(x),
        y,
        (64, 32),
        keras.layers.Dense(3, activation="softmax"),
    )
    for mode in QUANTIZE_MODES:
        trained.artifacts[mode] = keras_artifact(trained.source, trained.x, mode)
    return trained


@pytest.fixture(scope="module")
def cancer(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """30 features -> 16 -> one sigmoid unit (binary classification)."""
    x, y = load_breast_cancer(return_X_y=True)
    trained = _train(
        tmp_path_factory.mktemp("cancer"),
        "cancer",
        _standardized(x),
        y,
        (16,),
        keras.layers.Dense(1, activation="sigmoid"),
    )
    for mode in ("none", "static"):
        trained.artifacts[mode] = keras_artifact(trained.source, trained.x, mode)
    return trained


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """10 features -> 32 -> one linear unit (regression)."""
    x, y = load_diabetes(return_X_y=True)
    trained = _train(
        tmp_path_factory.mktemp("diabetes"),
        "diabetes",
        _standardized(x),
        y.astype(np.float32),
        (32,),
        keras.layers.Dense(1),
    )
    for mode in ("none", "static"):
        trained.artifacts[mode] = keras_artifact(trained.source, trained.x, mode)
    return trained


def _runtime(trained: Trained, mode: str, threads: int = 1) -> TfliteRuntime:
    source = trained.source
    return TfliteRuntime(trained.artifacts[mode].model_bytes, source.task, source.classes, threads)


def _run_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter from the repository root, TF log settings not preset."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "KERAS_"))}
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


BLOCKER = """
import importlib.abc
import sys

class Block(importlib.abc.MetaPathFinder):
    def __init__(self, *names):
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked)", name=fullname)
        return None
"""


# --- the Keras source ---------------------------------------------------------------------


def test_keras_source_reads_task_classes_and_features(
    wine: Trained, cancer: Trained, diabetes: Trained
) -> None:
    assert wine.source.framework == "keras"
    assert wine.source.description == "Sequential(Dense, Dense, Dense)"
    assert (wine.source.task, wine.source.classes, wine.source.n_features) == (
        "classification",
        [0, 1, 2],
        13,
    )
    assert (cancer.source.task, cancer.source.classes) == ("classification", [0, 1])
    assert (diabetes.source.task, diabetes.source.classes) == ("regression", [])
    assert diabetes.source.scores(diabetes.x[:3]) is None
    binary = cancer.source.scores(cancer.x)
    assert binary is not None and binary.shape == (len(cancer.x), 2)
    np.testing.assert_allclose(binary.sum(axis=1), 1.0, atol=1e-6)
    # the models learned something, so agreement below is not agreement on noise
    assert (wine.source.predict(wine.x) == wine.y).mean() > 0.95
    assert (cancer.source.predict(cancer.x) == cancer.y).mean() > 0.95


def test_explicit_task_and_classes_override_the_output_layer(wine: Trained) -> None:
    named = load_keras(wine.path, task="classification", classes=["barolo", "grignolino", "x"])
    assert named.classes == ["barolo", "grignolino", "x"]
    assert set(named.predict(wine.x[:10])) <= {"barolo", "grignolino", "x"}
    with pytest.raises(BadDataError, match="3 output"):
        load_keras(wine.path, classes=["a", "b"])
    with pytest.raises(BadDataError, match="one value per row"):
        load_keras(wine.path, task="regression")
    with pytest.raises(ConfigError, match="clustering"):
        load_keras(wine.path, task="clustering")


def test_an_output_layer_that_fits_no_task_is_refused() -> None:
    logits = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(BadDataError, match="softmax over k > 1 units") as info:
        KerasSource(logits)
    assert "3 units with activation 'linear'" in str(info.value)
    a, b = keras.Input((2,)), keras.Input((2,))
    multi = keras.Model([a, b], keras.layers.Dense(1)(keras.layers.Concatenate()([a, b])))
    with pytest.raises(BadDataError, match="one input and one output"):
        KerasSource(multi)


# --- conversion and the device runtime ----------------------------------------------------


def test_float32_tflite_matches_keras(wine: Trained) -> None:
    runtime = _runtime(wine, "none")
    ref = wine.source.scores(wine.x)
    got = runtime.scores(wine.x)
    assert got is not None and ref is not None and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-4)
    np.testing.assert_array_equal(runtime.predict(wine.x), wine.source.predict(wine.x))
    assert wine.artifacts["none"].model_bytes == wine.artifacts["none"].float_bytes


@pytest.mark.parametrize(("mode", "atol"), [("float16", 1e-2), ("dynamic", 5e-2), ("static", 0.1)])
def test_quantized_tflite_agrees_with_keras(wine: Trained, mode: str, atol: float) -> None:
    artifact = wine.artifacts[mode]
    assert (artifact.runtime, artifact.model_file, artifact.quantize) == (
        "litert",
        "model.tflite",
        mode,
    )
    assert artifact.float_bytes == wine.artifacts["none"].model_bytes
    runtime = _runtime(wine, mode)
    agreement = (runtime.predict(wine.x) == wine.source.predict(wine.x)).mean()
    assert agreement >= 0.95
    scores, ref = runtime.scores(wine.x), wine.source.scores(wine.x)
    assert scores is not None and ref is not None
    assert scores.dtype == np.float32 and scores.shape == ref.shape
    np.testing.assert_allclose(scores, ref, atol=atol)


def test_static_int8_model_has_int8_input_and_output_and_is_smaller(wine: Trained) -> None:
    interp = Interpreter(model_content=wine.artifacts["static"].model_bytes)
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    assert inp["quantization"][0] > 0 and out["quantization"][0] > 0
    assert list(inp["shape_signature"]) == [-1, 13]
    assert _runtime(wine, "static").input_dtype == np.int8
    sizes = {mode: len(a.model_bytes) for mode, a in wine.artifacts.items()}
    print(f"wine MLP 13-64-32-3 TFLite sizes in bytes: {sizes}")
    assert sizes["static"] < 0.7 * sizes["none"]
    assert sizes["float16"] < sizes["none"] and sizes["dynamic"] < sizes["none"]


def test_binary_sigmoid_model_scores_both_classes(cancer: Trained) -> None:
    ref = cancer.source.predict(cancer.x)
    for mode in ("none", "static"):
        runtime = _runtime(cancer, mode)
        scores = runtime.scores(cancer.x)
        assert scores is not None and scores.shape == (len(cancer.x), 2)
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-6)
        assert (runtime.predict(cancer.x) == ref).mean() >= (1.0 if mode == "none" else 0.95)
    assert _runtime(cancer, "static").input_dtype == np.int8


def test_regression_values_stay_close(diabetes: Trained) -> None:
    ref = diabetes.source.predict(diabetes.x)
    f32 = _runtime(diabetes, "none")
    assert f32.scores(diabetes.x) is None
    got = f32.predict(diabetes.x)
    assert got.shape == (len(diabetes.x),) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)
    int8 = _runtime(diabetes, "static").predict(diabetes.x)
    rmse = float(np.sqrt(np.mean((int8 - ref) ** 2)))
    assert rmse < 0.05 * float(np.std(diabetes.y))


@pytest.mark.parametrize("name", ["wine", "cancer", "diabetes"])
def test_one_inference_gives_the_labels_and_scores_of_two(
    name: str, request: pytest.FixtureRequest
) -> None:
    """predict_with_scores (one invoke, for the accuracy estimate) = predict and scores: softmax,
    a single sigmoid output, and a regressor (no scores)."""
    trained = request.getfixturevalue(name)
    for mode in ("none", "static"):
        runtime = _runtime(trained, mode)
        labels, scores = runtime.predict_with_scores(trained.x)
        np.testing.assert_array_equal(labels, runtime.predict(trained.x))
        expected = runtime.scores(trained.x)
        if expected is None:
            assert scores is None
        else:
            assert scores is not None
            np.testing.assert_array_equal(scores, expected)


def test_batch_size_follows_the_rows(wine: Trained) -> None:
    for mode in ("none", "static"):
        runtime = _runtime(wine, mode, threads=2)
        full = runtime.scores(wine.x[:32])
        assert full is not None
        for n in (1, 7, 32, 1, 7):
            part = runtime.scores(wine.x[:n])
            assert part is not None and part.shape == (n, 3)
            np.testing.assert_allclose(part, full[:n], atol=1e-6)
            assert runtime.predict(wine.x[:n]).shape == (n,)
        empty = runtime.scores(wine.x[:0])
        assert empty is not None and empty.shape == (0, 3)
    with pytest.raises(BadDataError, match="13 features"):
        runtime.predict(wine.x[:, :5])


def test_open_runtime_gives_the_tflite_runtime(wine: Trained) -> None:
    runtime = open_runtime(
        "litert", wine.artifacts["static"].model_bytes, "classification", [0, 1, 2]
    )
    np.testing.assert_array_equal(runtime.predict(wine.x), _runtime(wine, "static").predict(wine.x))


def test_tflite_file_as_input(
    wine: Trained, cancer: Trained, diabetes: Trained, tmp_path: Path
) -> None:
    for mode in ("none", "static"):
        path = tmp_path / f"wine-{mode}.tflite"
        path.write_bytes(wine.artifacts[mode].model_bytes)
        source = load_tflite(path, None, None)
        assert (source.framework, source.task, source.classes, source.n_features) == (
            "tflite",
            "classification",
            [0, 1, 2],
            13,
        )
        assert ("int8" in source.description) == (mode == "static")
        np.testing.assert_array_equal(source.predict(wine.x), _runtime(wine, mode).predict(wine.x))
        shipped = source.convert(wine.x, "none")
        assert shipped.model_bytes == path.read_bytes() and shipped.runtime == "litert"
        assert source.convert(wine.x, "static").note == TFLITE_AS_IS
    regression = tmp_path / "diabetes.tflite"
    regression.write_bytes(diabetes.artifacts["none"].model_bytes)
    assert load_tflite(regression, None, None).task == "regression"
    binary = tmp_path / "cancer.tflite"
    binary.write_bytes(cancer.artifacts["none"].model_bytes)
    assert load_tflite(binary, "classification", None).classes == [0, 1]
    named = load_tflite(binary, "classification", ["benign", "malignant"])
    assert set(named.predict(cancer.x)) == {"benign", "malignant"}


# --- bad input ----------------------------------------------------------------------------


def _corrupt(kind: str, real: bytes) -> bytes:
    return {
        "random": np.random.default_rng(7).bytes(4096),
        "truncated": real[: len(real) // 2],
        "empty": b"",
    }[kind]


@pytest.mark.parametrize("kind", ["random", "truncated", "empty"])
def test_corrupt_keras_file_is_bad_data_naming_the_file(
    wine: Trained, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / f"{kind}.keras"
    path.write_bytes(_corrupt(kind, wine.path.read_bytes()))
    with pytest.raises(BadDataError) as info:
        load_keras(path)
    message = str(info.value)
    assert not isinstance(info.value, ConfigError)
    assert str(path) in message and "expected a Keras .keras model" in message
    assert "\n" not in message and "Traceback" not in message


def test_missing_keras_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such model file"):
        load_keras(tmp_path / "nope.keras")


@pytest.mark.parametrize("kind", ["random", "truncated", "empty"])
def test_corrupt_tflite_is_rejected(wine: Trained, tmp_path: Path, kind: str) -> None:
    data = _corrupt(kind, wine.artifacts["none"].model_bytes)
    path = tmp_path / f"{kind}.tflite"
    path.write_bytes(data)
    with pytest.raises(BadDataError) as info:
        load_tflite(path, None, None)
    assert str(path) in str(info.value) and "expected a TFLite .tflite model" in str(info.value)
    with pytest.raises(BundleRejected) as rejected:
        TfliteRuntime(data, "classification", [0, 1, 2])
    assert rejected.value.reason == "bad-model"


def test_card_that_does_not_fit_the_model_is_rejected(wine: Trained) -> None:
    model = wine.artifacts["none"].model_bytes
    with pytest.raises(BundleRejected, match="lists 2 classes") as info:
        TfliteRuntime(model, "classification", [0, 1])
    assert info.value.reason == "bad-model"
    with pytest.raises(BundleRejected, match="one value per row"):
        TfliteRuntime(model, "regression", [])
    with pytest.raises(BundleRejected) as card:
        TfliteRuntime(model, "ranking", [])
    assert card.value.reason == "bad-card"


def test_unknown_quantize_mode_lists_the_valid_ones(wine: Trained) -> None:
    with pytest.raises(ConfigError, match="'int4'") as info:
        keras_artifact(wine.source, wine.x, "int4")
    for mode in QUANTIZE_MODES:
        assert repr(mode) in str(info.value)


def test_static_quantization_needs_rows_without_nan(wine: Trained) -> None:
    rows = np.full((5, 13), np.nan, dtype=np.float32)
    with pytest.raises(BadDataError, match="without NaN"):
        keras_artifact(wine.source, rows, "static")


def test_features_on_different_scales_get_a_note_with_static_int8(wine: Trained) -> None:
    """Full-integer models quantize the whole input row with one scale: a feature with a tiny
    range next to one with a huge range loses its information. The artifact says so."""
    raw, _ = load_wine(return_X_y=True)
    artifact = keras_artifact(wine.source, raw.astype(np.float32), "static")
    assert "one scale" in artifact.note and "standardize" in artifact.note
    assert wine.artifacts["static"].note == ""


def test_unsupported_op_is_one_line_and_the_converter_log_is_replayed(
    capfd: pytest.CaptureFixture[str],
) -> None:
    import tensorflow as tf

    class Determinant(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            return tf.linalg.det(tf.reshape(x, (-1, 2, 2)))[:, None]

    model = keras.Sequential([keras.Input((4,)), Determinant(), keras.layers.Dense(1)])
    capfd.readouterr()
    with pytest.raises(BadDataError) as info:
        keras_artifact(KerasSource(model), np.ones((4, 4), np.float32), "none")
    message = str(info.value)
    assert "MatrixDeterminant" in message and "\n" not in message
    assert "Sequential(Determinant, Dense)" in message
    assert "MatrixDeterminant" in capfd.readouterr().err  # the converter's own account


# --- processes ----------------------------------------------------------------------------


def test_device_without_a_tflite_runtime_rejects_with_runtime_missing(
    wine: Trained, tmp_path: Path
) -> None:
    model = tmp_path / "model.tflite"
    model.write_bytes(wine.artifacts["none"].model_bytes)
    result = _run_python(
        BLOCKER
        + f"""
sys.meta_path.insert(0, Block("ai_edge_litert", "tflite_runtime"))
import json
from pathlib import Path
from edge_agent.errors import BundleRejected
from edge_agent.inference.runtime import load_runtime, open_runtime
heavy = [m for m in ("tensorflow", "keras", "sklearn", "onnx") if m in sys.modules]
try:
    open_runtime("litert", Path({str(model)!r}).read_bytes(), "classification", [0, 1, 2])
except BundleRejected as exc:
    print(json.dumps({{"reason": exc.reason, "detail": exc.detail, "heavy": heavy}}))
from converters.keras_tflite import load_tflite
from edge_agent.errors import ConfigError
try:
    load_tflite(Path({str(model)!r}), None, None)
except ConfigError as exc:
    print(exc)
""",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    first, hub = result.stdout.splitlines()
    report = json.loads(first)
    assert report["reason"] == "runtime-missing"
    assert "edgefleet[litert]" in report["detail"] and "edgefleet[tflite]" in report["detail"]
    assert report["heavy"] == []
    # on the hub, validating a .tflite input without a runtime is a setup problem
    assert str(model) in hub and "edgefleet[litert]" in hub


@pytest.mark.parametrize("mode", QUANTIZE_MODES)
def test_every_mode_runs_on_tflite_runtime_2_14_with_numpy_1(wine: Trained, mode: str) -> None:
    """The device agent's own TfliteRuntime under tflite-runtime 2.14 and numpy<2 (the suite's
    cached environment, converters.runtimes.envs; not skipped where tflite-runtime cannot be
    installed beside numpy 2) gives the labels the hub's LiteRT gives."""
    artifact = wine.artifacts[mode]
    assert artifact.validated_on == "tflite-runtime 2.14.0"
    run = run_on("tflite-runtime 2.14", artifact.model_bytes, wine.x, "classification", [0, 1, 2])
    assert run.error is None and run.outputs is not None, run.error
    assert run.runtime == "tflite-runtime 2.14.0" and run.numpy.startswith("1.")
    hub = _runtime(wine, mode)
    assert np.mean(run.outputs.argmax(axis=1) == hub.predict(wine.x)) >= 0.99
    assert np.max(np.abs(run.outputs - hub.outputs(wine.x))) <= QUANTIZE_TOLERANCE[mode]


def test_conversion_prints_no_tensorflow_noise(wine: Trained, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", wine.x)
    result = _run_python(
        f"""
import sys
from pathlib import Path
import numpy as np
from converters.keras_tflite import keras_artifact, load_keras, load_tflite
from edge_agent.inference.runtime import load_runtime, open_runtime
assert "tensorflow" not in sys.modules, "importing the converter must not import TensorFlow"
x = np.load({str(tmp_path / "x.npy")!r})
source = load_keras(Path({str(wine.path)!r}))
source.predict(x)
for mode in ("float16", "static"):
    artifact = keras_artifact(source, x, mode)
    open_runtime("litert", artifact.model_bytes, source.task, source.classes).predict(x)
path = Path({str(tmp_path / "m.tflite")!r})
path.write_bytes(artifact.model_bytes)
load_tflite(path, None, None).predict(x)
print("OK")
""",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == "OK\n"


@pytest.mark.parametrize("mode", ["static", "float16"])
def test_keras_model_through_the_cli_passes_the_device_health_gate(
    wine: Trained, mode: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "x.npy", wine.x)
    np.save(tmp_path / "y.npy", wine.y)
    out = tmp_path / "wine.zip"
    argv = ["model", "convert", str(wine.path), "--sample", str(tmp_path / "x.npy")]
    argv += ["--labels", str(tmp_path / "y.npy"), "--name", "wine", "--version", "1"]
    assert hub_main([*argv, "--quantize", mode, "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["report"]
    assert report["quantize"] == mode and report["parity"]["ok"] is True
    bundle = read_bundle(out.read_bytes(), None, 10**8)
    assert (bundle.card.runtime, bundle.card.model_file) == ("litert", "model.tflite")
    assert (bundle.card.framework, bundle.card.classes) == ("keras", (0, 1, 2))
    health = check_health(bundle.card, load_runtime(bundle.card, bundle.model_bytes))
    assert health.ok, health.reason
    assert hub_main(["model", "inspect", str(out)]) == 0
    assert "litert (model.tflite)" in capsys.readouterr().out


# ---- an autoencoder: an anomaly model -------------------------------------------------------


@pytest.mark.parametrize("quantize", ["none", "dynamic"])
def test_a_keras_autoencoder_ships_its_reconstruction_error_as_the_score(
    quantize: str, tmp_path: Path
) -> None:
    """Benign tumours (standardized on them) in, the same back: the TFLite model gives the mean
    squared reconstruction error per row, as computed here from the Keras model's output."""
    x, y = load_breast_cancer(return_X_y=True)
    benign = x[y == 1]
    mean, std = benign.mean(axis=0), benign.std(axis=0)
    scaled = ((x - mean) / std).astype(np.float32)
    normal, malignant = scaled[y == 1], scaled[y == 0]
    trained = _train(tmp_path, "ae", normal[::2], normal[::2], (8,), keras.layers.Dense(30))
    source = trained.source
    assert source.task == "anomaly" and source.description.endswith("-> reconstruction error")
    sample = np.concatenate([normal[1::2], malignant[:40]])
    truth = np.r_[np.zeros(len(normal[1::2])), np.ones(40)].astype(int)
    built = build_bundle(
        source, sample, truth, name="ae", version=1, out=tmp_path / "ae.zip", quantize=quantize
    )
    card_obj, report = built.card, built.report
    assert card_obj["task"] == "anomaly" and card_obj["runtime"] == "litert"
    assert card_obj["output"] == {"score": {"dtype": "float32", "shape": [None, 1]}}
    assert report["parity"] == {"ok": True} and report["flag_agreement"] >= 0.99
    bundle = read_bundle(built.path.read_bytes(), None, 10**8)
    runtime = load_runtime(bundle.card, bundle.model_bytes)
    keras_model = keras.models.load_model(trained.path, compile=False)
    back = np.asarray(keras_model.predict(sample, verbose=0))
    want = np.mean((back - sample) ** 2, axis=1)
    got = runtime.predict(sample)
    assert np.allclose(got, want, rtol=1e-4 if quantize == "none" else 0.1, atol=1e-5)
    assert bundle.card.anomaly is not None and check_health(bundle.card, runtime).ok
    flags = bundle.card.anomaly.flags(got)
    assert flags[len(normal[1::2]) :].mean() > 5 * flags[: len(normal[1::2])].mean()
