"""Image models on scikit-learn's digits (8x8 gray, 0..16, as pixels 0..255): converted (a
LogisticRegression on flattened images to ONNX, a Keras Conv2D to TFLite), checked by the
device's health gate, framed from PNG, PGM and .npy messages of other sizes, inferred as the
source model does on the same images, and watched for drift on image statistics: a brighter
camera is flagged, the same camera is not."""

from __future__ import annotations

import hashlib
import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from cloud_hub.cli.app import main as hub_main
from converters.card import MAX_CARD_BYTES
from converters.images import image_items, image_spec
from converters.keras_tflite import KerasSource
from converters.pipeline import build_bundle
from edge_agent.errors import BadDataError, BundleRejected, SensorLineError
from edge_agent.imaging import encode_npy, image_stats, stat_names
from edge_agent.inference.pipeline import ActiveModel, Pipeline
from edge_agent.inference.runtime import load_runtime
from edge_agent.protocol.card import INPUT_CARD_VERSION, ModelCard, parse_card
from edge_agent.protocol.records import DriftReport
from edge_agent.update.bundle import read_bundle
from edge_agent.update.health import check_health
from tests.support.images import RGB, pgm, png

SPEC = image_spec("8x8x1")


class Digits:
    """The digits as pixels 0..255 (n, 8, 8, 1) uint8, their labels, and the model inputs."""

    def __init__(self) -> None:
        data = load_digits()
        raw = data.images.astype(np.int64)  # 0..16
        self.raw = raw
        self.pixels = ((raw * 255 + 8) // 16).astype(np.uint8)[..., None]
        self.y = data.target
        self.x = image_items(self.pixels, SPEC)
        self.train = np.arange(len(self.y)) % 2 == 0
        self.test = ~self.train


@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits()


@pytest.fixture(scope="module")
def logistic(digits: Digits) -> LogisticRegression:
    x = digits.x[digits.train].reshape(-1, 64)
    return LogisticRegression(max_iter=3000).fit(x, digits.y[digits.train])


def open_bundle(path: Path) -> tuple[ModelCard, Any]:
    bundle = read_bundle(path.read_bytes(), None, 10**8)
    return bundle.card, load_runtime(bundle.card, bundle.model_bytes)


@pytest.fixture(scope="module")
def served(
    digits: Digits, logistic: LogisticRegression, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ModelCard, Any]:
    out = tmp_path_factory.mktemp("bundle") / "digits.zip"
    x, y = digits.x[digits.test], digits.y[digits.test]
    build_bundle(logistic, x, y, name="digits", version=1, out=out, input_spec=SPEC)
    return open_bundle(out)


# ---- conversion ------------------------------------------------------------------------------


@pytest.mark.parametrize("quantize", ["none", "dynamic", "static"])
def test_a_model_on_flattened_images_serves_images(
    digits: Digits, logistic: LogisticRegression, tmp_path: Path, quantize: str
) -> None:
    x, y = digits.x[digits.test], digits.y[digits.test]
    built = build_bundle(
        logistic,
        x,
        y,
        name="digits",
        version=1,
        out=tmp_path / "d.zip",
        input_spec=SPEC,
        quantize=quantize,
    )
    card, runtime = open_bundle(built.path)
    assert card.input == SPEC and built.card["card_version"] == INPUT_CARD_VERSION
    assert built.card["input"]["shape"] == [None, 8, 8, 1]
    assert [f.name for f in card.features] == stat_names(1)  # watched: statistics, not pixels
    assert built.card["estimator"] == "LogisticRegression on flattened 8x8x1"
    assert card.sample_items().shape == (16, 8, 8, 1)
    assert np.array_equal(runtime.predict(x), logistic.predict(x.reshape(len(x), -1)))
    assert built.report["label_agreement"] == 1.0
    assert check_health(card, runtime).ok
    reference = image_stats(x / SPEC.image.scale)  # type: ignore[union-attr]
    assert np.isclose(card.features[0].mean, reference[:, 0].mean(), rtol=1e-4)


def test_a_conv2d_on_8x8x1_images_converts_to_tflite(digits: Digits, tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(digits.x[digits.train], digits.y[digits.train], epochs=10, verbose=0)
    path = tmp_path / "cnn.keras"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        model.save(path)
    x, y = digits.x[digits.test], digits.y[digits.test]
    want = model.predict(x, verbose=0).argmax(axis=1)
    for quantize in ("none", "dynamic", "static"):
        out = tmp_path / f"cnn-{quantize}.zip"
        built = build_bundle(
            KerasSource(model),
            x,
            y,
            name="cnn",
            version=1,
            out=out,
            input_spec=SPEC,
            quantize=quantize,
        )
        card, runtime = open_bundle(out)
        assert card.runtime == "litert" and card.input.shape == (8, 8, 1)
        agreement = float(np.mean(runtime.predict(x) == want))
        assert agreement == 1.0 if quantize == "none" else agreement > 0.97, (quantize, agreement)
        assert built.report["accuracy_after"] > 0.9
        assert check_health(card, runtime).ok
    # the hub's CLI takes the saved model and the pixels as a person has them
    np.save(tmp_path / "pixels.npy", digits.pixels[digits.test][..., 0])  # (n, 8, 8)
    np.save(tmp_path / "labels.npy", y)
    argv = [
        *("model", "convert", str(path), "--sample", str(tmp_path / "pixels.npy")),
        *("--labels", str(tmp_path / "labels.npy"), "--image", "8x8x1", "--name", "cnn"),
        *("--version", "2", "-o", str(tmp_path / "cli.zip"), "--json"),
    ]
    assert hub_main(argv) == 0
    card, runtime = open_bundle(tmp_path / "cli.zip")
    assert card.input == SPEC and float(np.mean(runtime.predict(x) == want)) > 0.97


def test_a_model_that_does_not_take_the_images_is_refused(
    digits: Digits, logistic: LogisticRegression, tmp_path: Path
) -> None:
    big = image_spec("16x16x1")
    items = image_items(digits.pixels[:50], big)
    with pytest.raises(BadDataError, match=r"takes 64 features; the image input gives items of"):
        build_bundle(
            logistic, items, None, name="d", version=1, out=tmp_path / "x.zip", input_spec=big
        )
    dense = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    with pytest.raises(BadDataError, match=r"with a Flatten layer inside"):
        build_bundle(
            KerasSource(dense),
            digits.x[:50],
            None,
            name="d",
            version=1,
            out=tmp_path / "y.zip",
            input_spec=SPEC,
        )


def test_the_cli_says_what_an_image_conversion_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["model", "convert", "m.joblib", "--name", "d", "--version", "1", "-o", "x.zip"]
    assert hub_main([*common, "--sample", "s.csv", "--image", "8x8x1"]) != 0
    assert "--image expects the training images as a .npy array" in capsys.readouterr().err
    assert hub_main([*common, "--sample", "s.npy", "--scale", "2"]) != 0
    assert "describe an --image input; give --image" in capsys.readouterr().err
    assert hub_main([*common, "--sample", "s.npy", "--image", "8x8"]) != 0
    assert "--image: expected HxWxC such as 8x8x1" in capsys.readouterr().err
    np.save(tmp_path / "bad.npy", np.full((3, 8, 8), 300.0))
    assert hub_main([*common, "--sample", str(tmp_path / "bad.npy"), "--image", "8x8x1"]) != 0
    assert "expected pixels from 0 to 255, got 300 to 300" in capsys.readouterr().err


# ---- framing and serving ---------------------------------------------------------------------


def model_of(card: ModelCard, runtime: Any, window: int = 100) -> ActiveModel:
    return ActiveModel.build(card, runtime, drift_window=window, warn_every=100, alert_every=1e4)


def test_images_of_any_format_and_size_become_the_model_input(
    digits: Digits, served: tuple[ModelCard, Any]
) -> None:
    card, runtime = served
    framer = model_of(card, runtime).framer
    i = np.flatnonzero(digits.test)[:4]
    gray = digits.pixels[i]
    doubled = gray.repeat(2, axis=1).repeat(2, axis=2)  # 16x16: resized back exactly
    messages = [
        ("image", png(gray[0], 0)),
        ("image", png(np.repeat(doubled[1], 3, axis=2), RGB)),  # RGB: to gray by luma
        ("image", pgm(digits.raw[i[2]], 16)),  # the digits' own 0..16 scale
        ("image", encode_npy(gray[3][..., 0])),
        ("csv", b"1,2,3"),
        ("image", png(gray[0], 0)[:-20]),
        ("image", b"GIF89a not this one"),
    ]
    rejected: list[SensorLineError] = []
    framed = framer.frame(messages, rejected.append)
    assert framed is not None
    assert np.allclose(framed.x, digits.x[i], atol=1e-5)
    assert np.allclose(framed.seen, image_stats(gray.astype(np.float32)), rtol=1e-4, atol=1e-3)
    assert [(e.reason, e.detail[:30]) for e in rejected] == [
        ("garbage", "expected image input for a ima"),
        ("bad-image", "truncated PNG: chunk 'IDAT' cl"),
        ("bad-image", "expected PNG, PGM/PPM, .npy or"),
    ]
    assert framer.frame([("image", b"")], rejected.append) is None


def brighter(pixels: np.ndarray, by: int) -> np.ndarray:
    return np.minimum(pixels.astype(np.int64) + by, 255).astype(np.uint8)


def test_served_images_give_the_source_models_answers_and_drift_flags_brightness(
    digits: Digits, logistic: LogisticRegression, served: tuple[ModelCard, Any]
) -> None:
    card, runtime = served
    results: list[dict[str, Any]] = []
    reports: list[DriftReport] = []
    pipeline = Pipeline(
        on_drift=lambda body: reports.append(
            DriftReport.from_body(json.loads(json.dumps(body)), "")
        ),
        on_window=lambda window: None,
        on_result=results.append,
    )
    pipeline.active = model_of(card, runtime, window=100)
    # images the card's reference never saw, from the same writers (the digits are ordered by
    # writer: a run of them is another population, so the order is shuffled)
    order = np.random.default_rng(1).permutation(np.flatnonzero(digits.train))
    same = digits.pixels[order[:400]]
    for start in range(0, len(same), 16):  # micro-batches, as the agent's main loop makes them
        pipeline.process([("image", png(p, 0)) for p in same[start : start + 16]])
    want = logistic.predict(image_items(same, SPEC).reshape(len(same), -1))
    assert [r["prediction"] for r in results] == want.tolist()
    assert len(reports) == 4 and all(r.status == "ok" for r in reports)

    lit = brighter(digits.pixels[order[400:600]], 60)  # a brighter camera
    for start in range(0, len(lit), 16):
        pipeline.process([("image", png(p, 0)) for p in lit[start : start + 16]])
    shifted = reports[4:]
    assert len(shifted) == 2 and all(r.status != "ok" for r in shifted)
    assert all("mean" in r.features_moved for r in shifted)


# ---- a sample too large for the card ---------------------------------------------------------
@pytest.fixture(scope="module")
def large(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """Digits as 96x96x3 images (27,648 values each: one would take the card past its bound),
    a LogisticRegression on them, as a bundle."""
    spec = image_spec("96x96x3")
    pixels = np.kron(digits.pixels[:400, ..., 0], np.ones((12, 12), np.uint8))
    x = image_items(np.stack([pixels] * 3, axis=-1), spec)
    y = digits.y[:400]
    model = LogisticRegression(max_iter=200).fit(x[::2].reshape(200, -1), y[::2])
    out = tmp_path_factory.mktemp("large") / "large.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_bundle(model, x[1::2], y[1::2], name="big", version=1, out=out, input_spec=spec)
    return out, x[1::2]


def test_a_sample_too_large_for_the_card_travels_beside_it(
    large: tuple[Path, np.ndarray],
) -> None:
    path, x = large
    card_json = json.loads(zipfile.ZipFile(path).read("card.json"))
    assert len(json.dumps(card_json)) < MAX_CARD_BYTES
    assert set(card_json["sample"]) == {"file", "sha256", "items", "outputs"}
    card, runtime = open_bundle(path)  # as the agent reads it: the member checked by the card
    assert card.sample_items().shape == (16, 96, 96, 3)
    given = {item.tobytes() for item in x}
    assert all(item.tobytes() in given for item in card.sample_items())  # the images given
    result = check_health(card, runtime)
    assert result.ok, result.reason


def _rezipped(path: Path, change: dict[str, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(buf, "w") as dst:
        for name in src.namelist():
            data = change.get(name, src.read(name))
            if data is not None:
                dst.writestr(name, data)
    return buf.getvalue()


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def test_a_changed_or_missing_sample_member_is_refused(large: tuple[Path, np.ndarray]) -> None:
    path, x = large
    card_json = json.loads(zipfile.ZipFile(path).read("card.json"))
    wrong_shape = _npy(np.zeros((16, 96, 96, 1), np.float32))
    cases: list[tuple[dict[str, bytes | None], str, str]] = [
        ({"sample.npy": _npy(x[:16] * 0)}, "tampered", "does not match the card's sha256"),
        ({"sample.npy": None}, "bad-bundle", "expected members"),
        ({"sample.npy": b"not an npy"}, "tampered", "does not match"),
    ]
    for change, reason, message in cases:
        with pytest.raises(BundleRejected) as info:
            read_bundle(_rezipped(path, change), None, 10**9)
        assert info.value.reason == reason and message in str(info.value)
    # a card that names a member of the wrong shape, signed as if it were right
    digest = hashlib.sha256(wrong_shape).hexdigest()
    card_json["sample"]["sha256"] = digest
    data = _rezipped(path, {"sample.npy": wrong_shape, "card.json": json.dumps(card_json).encode()})
    with pytest.raises(BundleRejected, match=r"expected float32 \(16, 96, 96, 3\)"):
        read_bundle(data, None, 10**9)
    with pytest.raises(BadDataError, match="read with the card"):
        parse_card(json.loads(zipfile.ZipFile(path).read("card.json"))).sample_items()


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ({"file": "x.npy", "sha256": "0" * 64, "items": 1}, "expected 'sample.npy'"),
        ({"file": "sample.npy", "sha256": "ab", "items": 1}, "64 lowercase hex digits"),
        ({"file": "sample.npy", "sha256": "0" * 64, "items": 0}, "expected 1 to 64"),
        ({"file": "sample.npy", "sha256": "0" * 64, "items": 1, "inputs": []}, "got both"),
    ],
)
def test_bad_sample_file_sections_are_named(
    large: tuple[Path, np.ndarray], sample: dict[str, Any], expected: str
) -> None:
    card_json = json.loads(zipfile.ZipFile(large[0]).read("card.json"))
    card_json["sample"] = {**sample, "outputs": [0] * int(sample["items"])}
    with pytest.raises(BundleRejected) as info:
        parse_card(card_json)
    assert info.value.reason == "bad-card" and expected in str(info.value)
