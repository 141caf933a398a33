"""A Keras Conv1D on (128, 3) accelerometer windows (tests.support.motion), converted to TFLite
with the window as its input, as is: its card says how a device frames the samples and watches
each channel's mean and std; the device's runtime answers as Keras does on the windows the
device frames from a stream of sample lines, and the hub's CLI takes the raw windows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_hub.cli.app import main as hub_main
from converters.keras_tflite import KerasSource
from converters.pipeline import build_bundle
from converters.windows import window_spec
from edge_agent.errors import SensorLineError
from edge_agent.framing import framer_for
from edge_agent.inference.runtime import load_runtime
from edge_agent.protocol.card import ModelCard
from edge_agent.update.bundle import read_bundle
from edge_agent.update.health import check_health
from tests.support.conv1d import train_conv1d
from tests.support.motion import CHANNELS, MOTIONS, RATE, dataset, lines, samples, windows_of

SPEC = window_spec(CHANNELS, 128, 64, RATE)


class Trained:
    def __init__(self, tmp: Path) -> None:
        rng = np.random.default_rng(0)
        windows, names = dataset(80, 128, rng)
        self.labels = np.asarray([MOTIONS.index(n) for n in names])
        self.path = tmp / "motion.keras"
        self.model = train_conv1d(windows, self.labels, self.path)
        self.x, self.y = dataset(40, 128, rng)  # windows it was not trained on
        self.y_index = np.asarray([MOTIONS.index(n) for n in self.y])

    def predict(self, windows: np.ndarray) -> np.ndarray:
        return self.model.predict(windows, verbose=0).argmax(axis=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return Trained(tmp_path_factory.mktemp("conv1d"))


def open_bundle(path: Path) -> tuple[ModelCard, Any]:
    bundle = read_bundle(path.read_bytes(), None, 10**8)
    return bundle.card, load_runtime(bundle.card, bundle.model_bytes)


@pytest.mark.parametrize("quantize", ["none", "dynamic"])
def test_a_conv1d_on_windows_is_served_as_it_is(
    trained: Trained, quantize: str, tmp_path: Path
) -> None:
    assert np.mean(trained.predict(trained.x) == trained.y_index) > 0.95
    out = tmp_path / "motion.zip"
    built = build_bundle(
        KerasSource(trained.model),
        trained.x,
        trained.y_index,
        name="motion",
        version=1,
        out=out,
        quantize=quantize,
        input_spec=SPEC,
    )
    assert built.report["parity"] == {"ok": True}
    card, runtime = open_bundle(out)
    assert card.runtime == "litert" and card.input == SPEC
    assert card.sample_items().shape[1:] == (128, 3)
    assert card.feature_names == [f"{c}.{s}" for c in CHANNELS for s in ("mean", "std")]
    assert len(json.dumps(card.raw)) < 64 * 1024
    assert check_health(card, runtime).ok
    # a stream of sample lines, framed by the device, answered as Keras answers the windows
    rng = np.random.default_rng(3)
    stream = np.concatenate([samples(m, 300, rng) for m in ("walk", "idle", "shake", "walk")])
    rejected: list[SensorLineError] = []
    framed = framer_for(card).frame([("csv", line) for line in lines(stream)], rejected.append)
    assert framed is not None and not rejected
    assert len(framed.x) == (len(stream) - 128) // 64 + 1
    want = trained.predict(windows_of(stream, 128, 64))
    got = runtime.predict(framed.x)
    agreement = float(np.mean(got == want))
    assert agreement == 1.0 if quantize == "none" else agreement > 0.95, agreement


def test_the_cli_converts_a_conv1d_from_raw_windows(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "w.npy", trained.x)
    np.save(tmp_path / "y.npy", trained.y_index)
    out = tmp_path / "cli.zip"
    argv = ["model", "convert", str(trained.path), "--sample", str(tmp_path / "w.npy")]
    argv += ["--labels", str(tmp_path / "y.npy"), "--name", "motion", "--version", "1"]
    argv += ["--channels", "ax,ay,az", "--window", "128", "--stride", "64", "--rate", "50"]
    assert hub_main([*argv, "-o", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["report"]["parity"]["ok"] is True
    card, runtime = open_bundle(out)
    assert card.input == SPEC and (card.framework, card.classes) == ("keras", (0, 1, 2))
    assert np.mean(runtime.predict(trained.x) == trained.predict(trained.x)) > 0.95
    # a Conv1D does not take signal features: said before anything is converted
    argv += ["--signal", "mean,std"]
    assert hub_main([*argv, "-o", str(tmp_path / "no.zip")]) != 0
    err = capsys.readouterr().err
    assert "takes items of shape (128, 3); the window input gives items of shape (6)" in err
