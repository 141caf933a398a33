"""A window model end to end: a Keras Conv1D on (128, 3) accelerometer windows (tests.support.
motion), converted to TFLite with the window as its input, signed and rolled out by a real hub to
a whole agent over a private mosquitto, and fed sample lines over a serial pseudo-terminal.

The test counts for itself what went in and what came out: the lines it wrote give
floor((n - 128) / 64) + 1 windows per run between two refused lines, the predictions the agent
publishes on its local results topic equal those of the bundle's model run by LiteRT's own
interpreter on windows the test cuts by slicing, the hub stores every window inferred and both
refused lines, and the drift reports at the hub, on each channel's mean and std, are quiet on
the motions the model knows and flag the mean of the channel a tilted mounting moves (drift
counts every other window: they overlap by half).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from cloud_hub.broker.local import RunningBroker
from converters.keras_tflite import KerasSource
from converters.pipeline import build_bundle
from converters.windows import window_spec
from edge_agent.protocol.messages import ModelRef
from tests.support.conv1d import train_conv1d
from tests.support.device_rig import Deployed, deployed
from tests.support.motion import CHANNELS, MOTIONS, RATE, dataset, lines, samples, windows_of

pytestmark = pytest.mark.broker
DEVICE = "imu-01"
MODEL = ModelRef("motion", 1)
SIZE, STRIDE = 128, 64
SPEC = window_spec(CHANNELS, SIZE, STRIDE, RATE)
DRIFT_WINDOW = 30  # windows per drift report
WAIT_S = 60.0
TILT = 3.0  # m/s^2 of gravity on ax: the sensor mounted at an angle


class Sensor:
    """The device end of a pseudo-terminal: what the test writes, the agent reads from the
    other end as a serial port."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        self.port = os.ttyname(self._slave)

    def write(self, text: list[bytes]) -> None:
        data = memoryview(b"".join(line + b"\n" for line in text))
        while data:
            data = data[os.write(self.master, data) :]

    def close(self) -> None:
        os.close(self.master)
        os.close(self._slave)


@dataclass
class Rig(Deployed):
    sensor: Sensor
    model_bytes: bytes

    def port_open(self) -> bool:
        return f"serial:{self.sensor.port}" in self.open_inputs()


def run_tflite(model_bytes: bytes, windows: np.ndarray) -> list[int]:
    """The bundle's model run by LiteRT's interpreter itself, one window at a time."""
    interp = Interpreter(model_content=model_bytes)
    interp.resize_tensor_input(interp.get_input_details()[0]["index"], [1, SIZE, len(CHANNELS)])
    interp.allocate_tensors()
    into, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    found = []
    for window in windows:
        interp.set_tensor(into, window[None].astype(np.float32))
        interp.invoke()
        found.append(int(interp.get_tensor(out)[0].argmax()))
    return found


@pytest.fixture
def rig(broker: RunningBroker, tmp_path: Path) -> Iterator[Rig]:
    rng = np.random.default_rng(0)
    windows, names = dataset(80, SIZE, rng)
    model = train_conv1d(
        windows, np.asarray([MOTIONS.index(n) for n in names]), tmp_path / "motion.keras"
    )
    reference, ref_names = dataset(60, SIZE, rng)  # windows it was not trained on
    bundle = tmp_path / "motion-1.zip"
    build_bundle(
        KerasSource(model),
        reference,
        np.asarray([MOTIONS.index(n) for n in ref_names]),
        name=MODEL.name,
        version=MODEL.version,
        out=bundle,
        quantize="none",
        input_spec=SPEC,
    )
    with zipfile.ZipFile(bundle) as z:
        model_bytes = z.read("model.tflite")
    sensor = Sensor()
    more = (
        "[telemetry]\nstatus_interval_s = 0.2\ninterval_s = 0.2\n"
        # every row tested (no rate floor): the reports are checked against the rows fed
        f"[drift]\nwindow = {DRIFT_WINDOW}\nmin_interval_s = 0\n"
        f'[results]\nenabled = true\nhost = "{broker.host}"\nport = {broker.port}\nqos = 1\n'
        f'[[inputs]]\nkind = "serial"\nport = "{sensor.port}"\nreopen_delay = 0.05\n'
    )
    try:
        with deployed(broker, tmp_path, DEVICE, bundle, more) as deployed_rig:
            rig = deployed_rig.extended(Rig, sensor=sensor, model_bytes=model_bytes)
            rig.wait("the serial port open, at the hub", rig.port_open)
            yield rig
    finally:
        sensor.close()


def test_a_conv1d_served_from_sample_lines_on_a_serial_port(rig: Rig) -> None:
    rng = np.random.default_rng(42)

    def motions(n: int) -> np.ndarray:  # the three motions one after the other, n samples
        third = -(-n // 3)
        return np.concatenate([samples(m, third, rng) for m in ("walk", "idle", "shake")])[:n]

    # three runs of samples between two refused lines; the third from a tilted sensor
    # windows overlap by half: drift counts every other one (the 1st, 3rd, ... of a run)
    half = SIZE + (DRIFT_WINDOW - 2) * STRIDE  # 1920 samples: 29 windows, drift counts 15
    whole = SIZE + (2 * DRIFT_WINDOW - 2) * STRIDE  # 3840 samples: 59 windows, drift counts 30
    tilted = motions(whole)
    tilted[:, 0] += TILT
    runs = [motions(half), motions(half), tilted]
    refused = [b"0.012,ERR,9.810", b"0.1,0.2"]
    text = [*lines(runs[0]), refused[0], *lines(runs[1]), refused[1], *lines(runs[2])]
    rig.sensor.write(text)

    expected = [(len(run) - SIZE) // STRIDE + 1 for run in runs]
    assert expected == [29, 29, 59]
    got = rig.results.predictions(sum(expected))
    cut = np.concatenate([windows_of(run, SIZE, STRIDE) for run in runs])
    assert got == run_tflite(rig.model_bytes, cut)
    assert set(got[:30]) == {0, 1, 2}  # walk, idle and shake were told apart

    # the hub holds what the agent did: each window inferred once, both refused lines
    def counted() -> bool:
        windows = rig.windows()
        errors = {
            r: sum(w.errors.get(r, 0) for w in windows) for r in ("non-numeric", "field-count")
        }
        return (
            sum(w.count for w in windows) == sum(expected)
            and errors == {"non-numeric": 1, "field-count": 1}
            # the lines taken, which the rollout gate's error rate divides by: 2 of 7,682 refused
            and sum(w.lines or 0 for w in windows) == sum(len(run) for run in runs)
        )

    rig.wait("the telemetry windows at the hub", counted)
    rig.wait("two drift reports", lambda: len(rig.drift()) == 2)
    quiet, shifted = rig.drift()
    watched = {f"{c}.{s}" for c in CHANNELS for s in ("mean", "std")}
    assert set(quiet.psi) == watched and quiet.window == DRIFT_WINDOW
    assert quiet.status == "ok" and quiet.missing_rows == 0, (quiet.status, quiet.features_moved)
    assert shifted.status != "ok" and "ax.mean" in shifted.features_moved, (
        shifted.status,
        shifted.features_moved,
    )
    assert all(r.model == MODEL for r in rig.drift())
