"""Keras -> TFLite conversions validated on the oldest runtime the target profile names.

The suite builds the environment devices on older boards have (numpy<2, tflite-runtime 2.14,
the agent's base requirements) once, in the checkout's .cache/ (tests/conftest.py sets
EDGEFLEET_CACHE_DIR), and runs models there: the converter's, and the agent's own code loading
a bundle. Nothing here skips when that environment cannot be built: the test fails, saying why.
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

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_wine

from cloud_hub.cli.app import main as hub_main
from cloud_hub.runtimes.prepare import prepare
from converters.keras_tflite import KerasSource, keras_artifact, load_keras
from converters.runtimes.device_run import agent_environment
from converters.runtimes.envs import EnvSpec
from converters.runtimes.targets import ENVS, profile_runtime, run_on
from edge_agent.errors import ConfigError
from edge_agent.inference.tflite import TfliteRuntime, open_interpreter
from edge_agent.update.bundle import read_bundle

OLD = "tflite-runtime 2.14"


@dataclass
class Wine:
    path: Path  # the saved .keras model
    source: KerasSource
    x: np.ndarray
    y: np.ndarray
    folder: Path


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> Wine:
    """13 features -> 64 -> 32 -> softmax over 3: its 64x32 Dense kernel (2,048 weights) is
    large enough for dynamic-range int8, which the converter quantizes per channel by default
    (FULLY_CONNECTED version 12)."""
    folder = tmp_path_factory.mktemp("wine")
    x, y = load_wine(return_X_y=True)
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((13,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=20, batch_size=32, verbose=0)
    path = folder / "wine.keras"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        model.save(path)
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    return Wine(path, load_keras(path), x, y, folder)


def test_the_cached_environment_is_numpy_1_with_tflite_runtime_2_14() -> None:
    python = prepare(ENVS[OLD])
    stamp = python.parent.parent / "requirements.txt"
    built = stamp.stat().st_mtime_ns
    versions = subprocess.run(
        [
            str(python),
            "-c",
            "import numpy, tflite_runtime; print(numpy.__version__, tflite_runtime.__version__)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert int(versions[0].split(".")[0]) == 1 and versions[1] == "2.14.0"
    # asked again: the same environment, not built again
    assert prepare(ENVS[OLD]) == python and stamp.stat().st_mtime_ns == built


def test_the_default_dynamic_op_set_is_refused_by_2_14_and_the_one_shipped_loads(
    wine: Wine,
) -> None:
    # the converter's default, as TensorFlow gives it: 2.14 cannot load it
    converter = tf.lite.TFLiteConverter.from_keras_model(wine.source.model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    default = bytes(converter.convert())
    refused = run_on(OLD, default, wine.x, wine.source.task, wine.source.classes)
    assert refused.outputs is None and refused.error is not None
    assert "FULLY_CONNECTED' version '12'" in refused.error, refused.error
    assert refused.runtime == "tflite-runtime 2.14.0" and refused.numpy.startswith("1.")

    artifact = keras_artifact(wine.source, wine.x, "dynamic")
    assert artifact.validated_on == "tflite-runtime 2.14.0"
    assert artifact.op_set == "per-tensor int8 Dense weights"
    assert "FULLY_CONNECTED version 12" in artifact.note
    # still int8 weights (the 64x32 kernel; 13x64 is under TFLite's 1,024-weight minimum)
    tensors = open_interpreter(artifact.model_bytes).get_tensor_details()
    assert [list(t["shape"]) for t in tensors if t["dtype"] == np.int8] == [[32, 64]]
    # run there, independently of the converter's own check: the same answers as the hub's
    on_device = run_on(OLD, artifact.model_bytes, wine.x, "classification", [0, 1, 2])
    assert on_device.error is None and on_device.outputs is not None
    hub = TfliteRuntime(artifact.model_bytes, "classification", [0, 1, 2])
    assert np.mean(on_device.outputs.argmax(axis=1) == hub.predict(wine.x)) >= 0.99
    assert np.max(np.abs(on_device.outputs - hub.outputs(wine.x))) < 0.1
    assert np.mean(on_device.outputs.argmax(axis=1) == wine.source.predict(wine.x)) >= 0.97
    assert artifact.on_target is not None and artifact.on_target["beyond"] == 0


@pytest.mark.parametrize("mode", ["none", "float16", "static"])
def test_other_modes_load_on_2_14_as_converted(wine: Wine, mode: str) -> None:
    artifact = keras_artifact(wine.source, wine.x, mode)
    assert artifact.validated_on == "tflite-runtime 2.14.0"
    assert artifact.op_set.startswith("default")
    run = run_on(OLD, artifact.model_bytes, wine.x, "classification", [0, 1, 2])
    assert run.error is None, run.error


def _convert(wine: Wine, out: Path, *extra: str) -> list[str]:
    argv = ["model", "convert", str(wine.path), "--sample", str(wine.folder / "x.npy")]
    argv += ["--labels", str(wine.folder / "y.npy"), "--name", "wine", "--version", "1"]
    return [*argv, "-o", str(out), *extra]


def test_the_cli_converts_for_a_profile_and_the_card_says_what_it_was_validated_on(
    wine: Wine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "wine.zip"
    assert hub_main(_convert(wine, out, "--json")) == 0  # default profile: raspberry-pi-4
    report = json.loads(capsys.readouterr().out)["report"]
    assert report["validated_on"] == "tflite-runtime 2.14.0" and report["parity"]["ok"]
    assert report["op_set"] == "per-tensor int8 Dense weights"
    assert report["target"]["beyond"] == 0
    card = read_bundle(out.read_bytes(), None, 10**8).card.raw
    assert card["validation"]["validated_on"] == "tflite-runtime 2.14.0"
    assert hub_main(["model", "inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "validated on" in shown and "tflite-runtime 2.14.0" in shown
    assert "per-tensor int8 Dense weights" in shown

    x86 = tmp_path / "x86.zip"
    assert hub_main(_convert(wine, x86, "--profile", "generic-x86_64")) == 0
    shown = capsys.readouterr().out
    assert "validated on" in shown and "litert " in shown
    card = read_bundle(x86.read_bytes(), None, 10**8).card.raw
    assert card["validation"]["validated_on"].startswith("litert ")
    assert card["validation"]["op_set"].startswith("default")


AGENT = """
import json, sys
from pathlib import Path
import numpy as np
from edge_agent.inference.runtime import load_runtime
from edge_agent.inference.tflite import runtime_version
from edge_agent.update.bundle import read_bundle
from edge_agent.update.health import check_health
bundle = read_bundle(Path(sys.argv[1]).read_bytes(), None, 10**8)
runtime = load_runtime(bundle.card, bundle.model_bytes)
health = check_health(bundle.card, runtime)
heavy = [m for m in ("tensorflow", "keras", "sklearn", "onnx", "ai_edge_litert")
         if m in sys.modules]
print(json.dumps({
    "numpy": np.__version__, "runtime": runtime_version(), "health": [health.ok, health.reason],
    "predictions": [int(v) for v in runtime.predict(np.load(sys.argv[2]))], "heavy": heavy,
}))
"""


def test_the_agent_in_the_numpy_1_environment_loads_the_bundle_and_predicts(
    wine: Wine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "wine.zip"
    assert hub_main(_convert(wine, out)) == 0
    capsys.readouterr()
    script = tmp_path / "agent.py"
    script.write_text(textwrap.dedent(AGENT))
    done = subprocess.run(
        [str(prepare(ENVS[OLD])), "-s", str(script), str(out), str(wine.folder / "x.npy")],
        env=agent_environment(tmp_path / "path"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["numpy"].startswith("1.") and got["runtime"] == "tflite-runtime 2.14.0"
    assert got["health"] == [True, ""] or got["health"][0] is True, got["health"]
    assert got["heavy"] == []
    bundle = read_bundle(out.read_bytes(), None, 10**8)
    hub = TfliteRuntime(bundle.model_bytes, "classification", [0, 1, 2]).predict(wine.x)
    device = np.asarray(got["predictions"])
    assert len(device) == len(wine.x) and np.mean(device == hub) >= 0.99


def test_a_tflite_file_the_profile_runtime_cannot_load_is_refused_in_one_line(
    wine: Wine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A .tflite input ships as it is: no op set to fall back to."""
    converter = tf.lite.TFLiteConverter.from_keras_model(wine.source.model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    model = tmp_path / "wine.tflite"
    model.write_bytes(bytes(converter.convert()))
    argv = ["model", "convert", str(model), "--sample", str(wine.folder / "x.npy")]
    argv += ["--labels", str(wine.folder / "y.npy"), "--name", "wine", "--version", "1"]
    out = tmp_path / "out.zip"
    assert hub_main([*argv, "-o", str(out), "--profile", "jetson-nano"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edgehub: error: "), err
    assert "tflite-runtime 2.14" in err and "FULLY_CONNECTED version 12" in err, err
    assert "Traceback" not in err and not out.exists()
    # for a profile on LiteRT it ships
    assert hub_main([*argv, "-o", str(out), "--profile", "generic-x86_64"]) == 0
    assert out.exists()


def test_unknown_runtimes_and_profiles_are_one_line(
    wine: Wine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        keras_artifact(wine.source, wine.x, "dynamic", "tflite-runtime 2.13")
    text = str(info.value)
    assert "\n" not in text and "'tflite-runtime 2.13'" in text and "'litert'" in text
    with pytest.raises(ConfigError) as info:
        profile_runtime("raspbery-pi-4")
    assert "Did you mean 'raspberry-pi-4'" in str(info.value)
    assert profile_runtime("jetson-nano") == OLD and profile_runtime("generic-x86_64") == "litert"
    assert hub_main(_convert(wine, tmp_path / "w.zip", "--profile", "raspi")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "profile 'raspi' does not exist" in err, err
    assert not (tmp_path / "w.zip").exists()


def test_an_environment_pip_cannot_build_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_CACHE_DIR", str(tmp_path))
    spec = EnvSpec("no-such", "tflite-runtime 0.0.1", ("tflite-runtime==0.0.1",))
    with pytest.raises(ConfigError) as info:
        prepare(spec)
    text = str(info.value)
    assert "\n" not in text and text.startswith("cannot prepare tflite-runtime 0.0.1: pip install")
    assert "tflite-runtime==0.0.1" in text
    left = sorted(p.name for p in (tmp_path / "runtimes").iterdir())
    assert left == ["no-such.lock"], left  # no half-built environment


BUILD = """
import sys
from cloud_hub.runtimes.prepare import prepare
from converters.runtimes.envs import EnvSpec
python = prepare(EnvSpec("tiny", "a tiny environment", ("pyserial==3.5",), agent=False))
print(python)
"""


def test_two_processes_asking_at_once_build_the_environment_once(tmp_path: Path) -> None:
    """Each asks for the same missing environment; the lock lets one build it (in a temporary
    folder renamed into place), and the other finds it ready."""
    env = {**os.environ, "EDGEFLEET_CACHE_DIR": str(tmp_path)}
    command = [sys.executable, "-c", BUILD]
    started = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=240) for p in started]
    assert [p.returncode for p in started] == [0, 0], results
    paths = {out.strip() for out, _ in results}
    assert paths == {str(tmp_path / "runtimes" / "tiny" / "bin" / "python")}
    assert sum("preparing a tiny environment" in err for _, err in results) == 1, results
    assert sorted(p.name for p in (tmp_path / "runtimes").iterdir()) == ["tiny", "tiny.lock"]
    import_serial = [paths.pop(), "-c", "import serial, sys; print(serial.__version__)"]
    assert subprocess.run(import_serial, capture_output=True, text=True).stdout == "3.5\n"


def test_a_hub_that_has_not_prepared_the_runtime_converts_without_fetching_and_says_so(
    wine: Wine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Converters are pure transforms (no network): with the profile's runtime not prepared,
    a conversion ships the most conservative op set unchecked, says so, and builds nothing;
    `edgehub runtimes` lists it as not prepared."""
    monkeypatch.setenv("EDGEFLEET_CACHE_DIR", str(tmp_path / "cache"))
    artifact = keras_artifact(wine.source, wine.x, "dynamic")
    assert artifact.validated_on == "" and artifact.op_set == "per-tensor int8 weights"
    assert "not checked on tflite-runtime 2.14" in artifact.note
    assert "`edgehub runtimes prepare` once" in artifact.note
    assert not (tmp_path / "cache").exists()  # nothing fetched, nothing built
    # the op set it fell back to is one 2.14 loads (checked in the prepared environment)
    monkeypatch.setenv("EDGEFLEET_CACHE_DIR", os.environ["EDGEFLEET_CACHE_DIR_PREPARED"])
    run = run_on(OLD, artifact.model_bytes, wine.x, "classification", [0, 1, 2])
    assert run.error is None, run.error

    monkeypatch.setenv("EDGEFLEET_CACHE_DIR", str(tmp_path / "cache"))
    assert hub_main(["runtimes", "list", "--json"]) == 0
    rows = {r["runtime"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[OLD]["state"] == "not prepared" and "raspberry-pi-4" in rows[OLD]["profiles"]
    assert rows["litert"]["state"] == "ready" and rows["litert"]["profiles"] == ["generic-x86_64"]


def test_runtimes_lists_and_prepares(capsys: pytest.CaptureFixture[str]) -> None:
    assert hub_main(["runtimes", "list"]) == 0
    table = capsys.readouterr().out
    assert "tflite-runtime 2.14" in table and "ready" in table and "not prepared" not in table
    assert hub_main(["runtimes", "prepare", "--json"]) == 0  # ready: nothing built again
    prepared = json.loads(capsys.readouterr().out)
    assert Path(prepared[OLD]).is_file()
    assert hub_main(["runtimes", "prepare", "tflite 2.14"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TFLite runtime 'tflite 2.14' is not one edgefleet knows" in err
