"""Window inputs: signal features (edge_agent.signal) against independent computations, the
device's WindowFramer (stride, overlap, refused lines and pauses that restart a window), the
card's window section refused with where and why, and window models converted from
scikit-learn (on signal features, and on flattened windows), small cards and answers that equal
the source model's on windows the test cuts itself."""

from __future__ import annotations

import json
import queue
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import onnxruntime as ort
import pytest
from scipy.signal import periodogram
from sklearn.linear_model import LogisticRegression, Ridge

from cloud_hub.cli.app import main as hub_main
from converters.card import reference_card
from converters.pipeline import build_bundle
from converters.windows import window_items, window_spec
from edge_agent.drift.monitor import DriftMonitor
from edge_agent.errors import BadDataError, BundleRejected, ConfigError, SensorLineError
from edge_agent.framing import framer_for
from edge_agent.framing.watch import watched, watched_names
from edge_agent.framing.windows import MIN_GAP_S, WindowFramer, sample_line_bytes
from edge_agent.inference.pipeline import ActiveModel, Pipeline
from edge_agent.inference.runtime import load_runtime
from edge_agent.protocol.card import INPUT_CARD_VERSION, ModelCard, parse_card
from edge_agent.protocol.input_spec import InputSpec
from edge_agent.protocol.records import TelemetryWindow
from edge_agent.signal import signal_features, signal_names
from edge_agent.sources.backlog import Backlog
from edge_agent.update.bundle import read_bundle
from edge_agent.update.health import check_health
from tests.support.motion import CHANNELS, RATE, dataset, lines, samples, windows_of

SIGNAL = ["mean", "std", "band_power:0.5-4", "band_power:4-12"]


# ---- signal features -------------------------------------------------------------------------


def sine(freq: float, amplitude: float, size: int, rate: float, offset: float = 0.0) -> np.ndarray:
    t = np.arange(size) / rate
    return offset + amplitude * np.sin(2 * np.pi * freq * t + 0.3)


def test_rms_std_mean_min_max_ptp_of_known_signals() -> None:
    # a sine over whole periods: rms A/sqrt(2); on an offset c: mean c, std A/sqrt(2)
    x = sine(5.0, 3.0, 100, 50.0, offset=2.0)  # 10 whole periods
    got = signal_features(x[None, :, None], ["mean", "std", "rms", "min", "max", "ptp"], 50.0)
    want = [
        2.0,
        3.0 / np.sqrt(2),
        np.sqrt(4.0 + 9.0 / 2),
        min(x),
        max(x),
        max(x) - min(x),
    ]
    assert np.allclose(got[0], want, rtol=1e-5, atol=1e-6)
    noise = np.random.default_rng(1).normal(3, 2, size=(5, 64, 2))
    got = signal_features(noise, ["std", "rms"], 10.0).reshape(5, 2, 2)
    for i in range(5):
        for c in range(2):
            col = [float(v) for v in noise[i, :, c]]
            assert got[i, c, 0] == pytest.approx(statistics.pstdev(col), rel=1e-5)
            assert got[i, c, 1] == pytest.approx(np.sqrt(statistics.fmean(v * v for v in col)))


def test_band_power_of_a_pure_sine_is_in_its_band_only() -> None:
    size, rate = 128, 50.0
    f0 = 16 * rate / size  # 6.25 Hz, one of the FFT's frequencies: no leakage
    x = sine(f0, 2.0, size, rate)
    bands = ["band_power:0-6", "band_power:6-7", "band_power:7-26"]
    got = signal_features(x[None, :, None], bands, rate)[0]
    assert got == pytest.approx([0.0, 2.0**2 / 2, 0.0], abs=1e-6)


def test_band_power_is_scipys_power_spectrum_summed_over_the_band() -> None:
    rng = np.random.default_rng(2)
    for size, rate in ((128, 50.0), (75, 20.0)):  # even and odd lengths (the Nyquist bin)
        x = rng.normal(0.5, 1.0, size=(3, size, 2))
        bands = [(0, 1.5), (1.5, 6.1), (3.3, 9.0), (0, rate)]
        names = [f"band_power:{lo}-{hi}" for lo, hi in bands]
        got = signal_features(x, names, rate).reshape(3, 2, len(bands))
        freqs, spectrum = periodogram(
            x, fs=rate, window="boxcar", detrend=False, scaling="spectrum", axis=1
        )
        for j, (lo, hi) in enumerate(bands):
            band = (freqs >= lo) & (freqs < hi)
            assert np.allclose(got[:, :, j], spectrum[:, band, :].sum(axis=1), rtol=1e-4)
        # every band together is the mean square: rms**2
        whole = got[:, :, -1]
        assert np.allclose(whole, np.mean(x**2, axis=1), rtol=1e-5)


def test_columns_go_channel_by_channel_with_their_names() -> None:
    x = np.random.default_rng(3).normal(size=(4, 32, 3))
    got = signal_features(x, ["mean", "ptp"], 10.0)
    assert got.shape == (4, 6) and got.dtype == np.float32
    assert signal_names(CHANNELS, ["mean", "ptp"]) == [
        "ax.mean",
        "ax.ptp",
        "ay.mean",
        "ay.ptp",
        "az.mean",
        "az.ptp",
    ]
    assert np.allclose(got[:, 2], x[:, :, 1].mean(axis=1), atol=1e-6)
    assert np.allclose(got[:, 5], np.ptp(x[:, :, 2], axis=1), atol=1e-5)
    assert signal_features(x[:0], ["mean"], 10.0).shape == (0, 3)


@pytest.mark.parametrize(
    "names, message",
    [
        (["mean", "rsm"], "signal[1]: expected one of mean, std, rms, min, max, ptp or "
         "band_power:LO-HI (Hz, e.g. band_power:0.5-3), got 'rsm'. Did you mean 'rms'?"),
        (["band_powr:0-5"], "got 'band_powr:0-5'. Did you mean 'band_power'?"),
        (["band_power:5-2"], "signal[0]: 'band_power:5-2': expected LO < HI, got 5 and 2 Hz"),
        (["band_power:5.1-5.2"], "expected a band holding at least one frequency of a "
         "128-sample window at 50 Hz (0.390625 Hz apart, up to 25 Hz), got none in [5.1, 5.2)"),
        (["band_power:30-40"], "got none in [30, 40) Hz"),
        (["rms", "band_power:0-5", "band_power:0.0-5"],
         "signal[2]: 'band_power:0.0-5' repeats 'band_power:0-5'"),
        (["band_power:-1-5"], "got 'band_power:-1-5'"),
        (["mean"] * 40, "signal: expected at most 32 features, got 40"),
    ],
)  # fmt: skip
def test_a_name_that_is_not_a_signal_feature_is_refused(names: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        signal_features(np.zeros((1, 128, 1)), names, 50.0)
    assert message in str(caught.value)


def test_windows_of_another_shape_are_refused() -> None:
    with pytest.raises(BadDataError, match=r"expected numbers of shape \(n, samples, channels\)"):
        signal_features(np.zeros((4, 128)), ["mean"], 50.0)


# ---- the card's window section ---------------------------------------------------------------


def window_card(spec: InputSpec, windows: np.ndarray) -> dict[str, Any]:
    """A valid card.json of a window input whose drift reference is `windows` (no model)."""
    x = window_items(windows, spec)
    card = reference_card(watched(spec, x), watched_names(spec))
    card["card_version"] = INPUT_CARD_VERSION
    card["input"] = {"name": "X", **spec.to_json()}
    card["sample"] = {"inputs": [x[0].ravel().tolist()], "outputs": [0]}
    return card


@pytest.fixture(scope="module")
def motion() -> tuple[np.ndarray, np.ndarray]:
    return dataset(60, 128, np.random.default_rng(0))


@pytest.mark.parametrize(
    "change, where",
    [
        ({"signal": ["mean", "rsm"]}, "card.input.window.signal[1]: expected one of mean"),
        ({"signal": ["band_power:20.5-30"]}, "card.input.window.signal[0]: 'band_power:20.5-30': "
         "expected a band holding at least one frequency of a 128-sample window at 40 Hz"),
        ({"signal": "mean"}, "card.input.window.signal: expected a list of feature names"),
        ({"size": 0}, "card.input.window.size: expected a whole number from 1 to 65536, got 0"),
        ({"stride": 1.5}, "card.input.window.stride"),
        ({"rate_hz": 0}, "card.input.window.rate_hz: expected a positive number, got 0.0"),
    ],
)  # fmt: skip
def test_a_bad_window_section_is_refused_naming_the_field(
    motion: tuple[np.ndarray, np.ndarray], change: dict[str, Any], where: str
) -> None:
    spec = window_spec(CHANNELS, 128, 64, 40.0, ["mean", "std"])
    card = window_card(spec, motion[0])
    parse_card(card)
    card["input"]["window"].update(change)
    with pytest.raises(BundleRejected) as caught:
        parse_card(card)
    assert caught.value.reason == "bad-card" and where in caught.value.detail


def test_the_convert_options_are_checked_as_the_card_is() -> None:
    with pytest.raises(ConfigError, match=r"^--signal\[0\]: expected one of .* Did you mean"):
        window_spec(CHANNELS, 128, 64, 50.0, ["mena"])
    with pytest.raises(ConfigError, match=r"^--stride: expected a whole number from 1"):
        window_spec(CHANNELS, 128, 0, 50.0)
    with pytest.raises(ConfigError, match=r"^--channels: expected unique texts"):
        window_spec(["ax", "ax"], 128, 64, 50.0)
    spec = window_spec(CHANNELS, 128, 64, 50.0)
    assert spec.shape == (128, 3) and watched_names(spec) == signal_names(CHANNELS, ["mean", "std"])
    spec = window_spec(CHANNELS, 128, 64, 50.0, SIGNAL)
    assert spec.shape == (12,) and watched_names(spec) == signal_names(CHANNELS, SIGNAL)


# ---- framing ---------------------------------------------------------------------------------


def framer(
    motion: tuple[np.ndarray, np.ndarray],
    size: int,
    stride: int,
    signal: list[str] | None = None,
    clock: Any = None,
) -> WindowFramer:
    spec = window_spec(CHANNELS, size, stride, RATE, signal or [])
    windows = motion[0][:, :size]
    card = parse_card(window_card(spec, windows))
    if clock is None:
        found = framer_for(card)
        assert isinstance(found, WindowFramer)
        return found
    return WindowFramer(card, clock)


def stream(n: int, seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([samples(m, n // 3 + 1, rng) for m in ("walk", "idle", "shake")])[:n]


class Rejects(list[SensorLineError]):
    def __call__(self, exc: SensorLineError) -> None:
        self.append(exc)

    @property
    def reasons(self) -> list[str]:
        return [e.reason for e in self]


@pytest.mark.parametrize("size, stride", [(8, 3), (8, 8), (5, 9), (1, 1), (16, 1)])
def test_a_window_every_stride_samples_once_size_are_there(
    motion: tuple[np.ndarray, np.ndarray], size: int, stride: int
) -> None:
    s = stream(50)
    f = framer(motion, size, stride)
    rejected = Rejects()
    framed = f.frame([("csv", line) for line in lines(s)], rejected)
    assert framed is not None and not rejected
    assert len(framed.x) == (50 - size) // stride + 1
    assert np.array_equal(framed.x, windows_of(s, size, stride))
    # drift watches each channel's mean and std, not the samples
    assert framed.seen.shape == (len(framed.x), 6)
    assert np.allclose(framed.seen[:, 0], framed.x[:, :, 0].mean(axis=1), atol=1e-5)
    assert np.allclose(framed.seen[:, 5], framed.x[:, :, 2].std(axis=1), atol=1e-5)


def test_micro_batches_of_any_size_frame_the_same_windows(
    motion: tuple[np.ndarray, np.ndarray],
) -> None:
    s = stream(70)
    f = framer(motion, 16, 6)
    got = []
    batches = [1, 4, 15, 2, 30, 18]  # 70 lines in all
    at = 0
    for n in batches:
        framed = f.frame([("json", line) for line in lines(s[at : at + n], "json")], Rejects())
        at += n
        if framed is not None:
            got.append(framed.x)
    assert np.array_equal(np.concatenate(got), windows_of(s, 16, 6))
    assert f.frame([], Rejects()) is None


def test_a_refused_line_drops_the_window_being_filled_and_framing_starts_again(
    motion: tuple[np.ndarray, np.ndarray],
) -> None:
    s = stream(60)
    f = framer(motion, 10, 4)
    text = lines(s)
    bad = {13: b"0.1,0.2", 30: b"0.1,abc,9.8", 31: b"1e9,0,9.8", 45: b"0.1,0.2,9.8" + b" " * 300}
    messages = [("csv", bad.get(i, line)) for i, line in enumerate(text)]
    messages.insert(50, ("image", b"\x89PNG"))
    rejected = Rejects()
    framed = f.frame(messages, rejected)
    assert rejected.reasons == ["field-count", "non-numeric", "out-of-range", "garbage", "garbage"]
    # the good runs between refused lines, each framed on its own
    runs = [s[0:13], s[14:30], s[32:45], s[46:50], s[50:60]]
    want = [windows_of(run, 10, 4) for run in runs if len(run) >= 10]
    assert framed is not None and np.array_equal(framed.x, np.concatenate(want))
    # a window was being filled each time but at 31 (right after the refused 30)
    assert f.restarts == 4


def test_a_pause_longer_than_the_gap_restarts_the_window(
    motion: tuple[np.ndarray, np.ndarray],
) -> None:
    now = [100.0]
    f = framer(motion, 10, 5, clock=lambda: now[0])
    assert f.gap_s == MIN_GAP_S  # 10 periods at 50 Hz are shorter
    s = stream(40)
    text = [("csv", line) for line in lines(s)]
    assert f.frame(text[:8], Rejects()) is None
    now[0] += MIN_GAP_S * 0.9  # a slow batch: not a pause
    framed = f.frame(text[8:12], Rejects())
    assert framed is not None and np.array_equal(framed.x, [s[0:10]])
    now[0] += MIN_GAP_S * 1.1  # the sensor stopped: the window being filled is dropped
    assert f.frame(text[12:20], Rejects()) is None and f.restarts == 1
    framed = f.frame(text[20:40], Rejects())
    assert framed is not None and np.array_equal(framed.x, windows_of(s[12:40], 10, 5))


def test_drift_counts_only_windows_that_do_not_overlap_the_last_one_it_counted(
    motion: tuple[np.ndarray, np.ndarray],
) -> None:
    """The model answers every window; drift counts every ceil(size / stride)-th one since
    framing (re)started, whatever the micro-batches, so its items share no sample."""
    s = stream(120)
    text = [("csv", line) for line in lines(s)]
    for size, stride, every in [(16, 5, 4), (16, 8, 2), (16, 16, 1), (8, 12, 1)]:
        f = framer(motion, size, stride)
        counted, answered = [], 0
        for at in range(0, len(text), 7):
            framed = f.frame(text[at : at + 7], Rejects())
            if framed is None:
                continue
            watch = range(len(framed.x)) if framed.watch is None else framed.watch
            counted += [answered + int(i) for i in watch]
            answered += len(framed.x)
        assert answered == (120 - size) // stride + 1
        assert counted == list(range(0, answered, every)), (size, stride)
    # a refused line restarts framing, and the count with it
    f = framer(motion, 16, 5)
    first = f.frame(text[:26], Rejects())
    assert first is not None and first.watch is not None and list(first.watch) == [0]
    f.frame([("csv", b"not a sample")], Rejects())
    again = f.frame(text[26:52], Rejects())
    assert again is not None and again.watch is not None and list(again.watch) == [0]


def walking(start: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Samples start..start+n of one endless walk (tests.support.motion's, with its phases
    fixed: each `samples` call starts a walk of its own), as the sensor prints them."""
    t = (start + np.arange(n))[:, None] / RATE
    wave = np.array([1.5, 0.8, 1.0]) * np.sin(2 * np.pi * 1.8 * t + np.array([0.3, 1.9, 4.1]))
    wave[:, 2] += 9.81
    return np.round(wave + 0.15 * rng.normal(size=(n, 3)), 3).astype(np.float32)


def _drift_free_statuses(
    card: ModelCard, runtime: Any, stride: int, reports: int, every: int, seed: int
) -> Counter[str]:
    """Reports of the card's drift monitor on a drift-free stream of windows `stride` samples
    apart, counting every `every`-th window (cut by slicing here, not by the framer)."""
    size = card.input.window.size  # type: ignore[union-attr]
    monitor = DriftMonitor(card)
    rng = np.random.default_rng(seed)
    got: Counter[str] = Counter()
    needed = monitor.window * every * stride
    at = 10**7  # well after the samples the model and its card saw
    while sum(got.values()) < reports:
        windows = windows_of(walking(at, needed + size, rng), size, stride)[::every]
        at += needed
        report = monitor.add(watched(card.input, windows), runtime.predict(windows), None)
        if report is not None:
            got[report["status"]] += 1
    return got


def test_overlapping_windows_of_a_drift_free_stream_warn_in_at_most_one_report_in_a_hundred(
    tmp_path: Path,
) -> None:
    """The design's false-alarm bound (at most 1% of drift-free reports warn), on windows of
    128 samples every 16: counted as the framer counts them (every 8th) over 500 reports; and
    why: counting every overlapping window, a quarter or more of the reports warn."""
    rng = np.random.default_rng(21)
    size, stride = 128, 16
    train = windows_of(walking(0, 3000 * size, rng), size, size)
    y = train[:, :, 0].std(axis=1)
    model = Ridge(alpha=10.0).fit(train.reshape(len(train), -1), y)
    held = windows_of(walking(3000 * size, 2000 * size, rng), size, size)
    out = tmp_path / "walk.zip"
    spec = window_spec(CHANNELS, size, stride, RATE)
    build_bundle(
        model,
        held,
        held[:, :, 0].std(axis=1),
        name="walk",
        version=1,
        out=out,
        input_spec=spec,
        quantize="none",
    )
    card, runtime, _ = open_bundle(out)
    every = -(-size // stride)
    counted = _drift_free_statuses(card, runtime, stride, 500, every, seed=1)
    assert counted["warn"] + counted["alert"] <= 5, counted
    overlapping = _drift_free_statuses(card, runtime, stride, 40, 1, seed=2)
    assert overlapping["warn"] + overlapping["alert"] >= 10, overlapping


def test_signal_features_are_framed_by_the_one_implementation(
    motion: tuple[np.ndarray, np.ndarray],
) -> None:
    s = stream(300)
    f = framer(motion, 128, 32, SIGNAL)
    framed = f.frame([("csv", line) for line in lines(s)], Rejects())
    assert framed is not None
    want = signal_features(windows_of(s, 128, 32), SIGNAL, RATE)
    assert np.array_equal(framed.x, want) and framed.seen is framed.x


def test_a_sample_line_is_short_and_its_values_fit_the_reference_range(
    motion: tuple[np.ndarray, np.ndarray],
) -> None:
    limit = sample_line_bytes(list(CHANNELS))
    assert 150 < limit < 250  # far below a row's 4096
    f = framer(motion, 8, 8)
    rejected = Rejects()
    longest_json = b'{"ax": -1.2345678901234567e-05, "ay": -1.2345678901234567e-05, "az": 9.81}'
    ok = f.frame([("json", longest_json)] * 8, rejected)
    assert ok is not None and not rejected
    f.frame([("csv", b"0.1,0.2," + b"9" * limit)], rejected)
    # the reference's windows have means about 0, 0 and 9.81 and stds up to about 3
    f.frame([("csv", b"60,0,9.8"), ("csv", b"0,0,-60")], rejected)
    assert rejected.reasons == ["garbage", "out-of-range", "out-of-range"]
    assert f"line is {8 + limit} bytes, the limit is {limit}" in rejected[0].detail
    assert "field 1 'ax': expected a value in [" in rejected[1].detail


# ---- converting ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def features_model(motion: tuple[np.ndarray, np.ndarray]) -> LogisticRegression:
    windows, labels = motion
    x = signal_features(windows, SIGNAL, RATE)
    return LogisticRegression(max_iter=5000).fit(x, labels)


def open_bundle(path: Path) -> tuple[ModelCard, Any, bytes]:
    bundle = read_bundle(path.read_bytes(), None, 10**8)
    return bundle.card, load_runtime(bundle.card, bundle.model_bytes), bundle.model_bytes


def test_a_model_on_signal_features_serves_a_stream_of_samples(
    motion: tuple[np.ndarray, np.ndarray], features_model: LogisticRegression, tmp_path: Path
) -> None:
    rng = np.random.default_rng(11)
    windows, labels = dataset(30, 128, rng)  # windows the model was not trained on
    spec = window_spec(CHANNELS, 128, 64, RATE, SIGNAL)
    out = tmp_path / "motion.zip"
    built = build_bundle(
        features_model,
        window_items(windows, spec),
        labels,
        name="motion",
        version=1,
        out=out,
        input_spec=spec,
    )
    assert built.report["parity"] == {"ok": True}
    card, runtime, model_bytes = open_bundle(out)
    assert card.input == spec and card.feature_names == signal_names(CHANNELS, SIGNAL)
    assert check_health(card, runtime).ok
    # a stream the device reads, and what scikit-learn says on windows the test cuts itself
    s = np.concatenate([samples(m, 400, rng) for m in ("idle", "shake", "walk", "idle")])
    framed = framer_for(card).frame([("csv", line) for line in lines(s)], Rejects())
    assert framed is not None and len(framed.x) == (len(s) - 128) // 64 + 1
    cut = windows_of(s, 128, 64)
    want = features_model.predict(signal_features(cut, SIGNAL, RATE))
    assert list(runtime.predict(framed.x)) == list(want)
    # the ONNX model in the bundle, run by onnxruntime itself on the features
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    assert list(session.run(None, {name: signal_features(cut, SIGNAL, RATE)})[0]) == list(want)


def test_a_window_card_is_small_and_watches_a_handful_of_values(tmp_path: Path) -> None:
    sizes = {}
    for size in (128, 512):
        rng = np.random.default_rng(size)
        w, y = dataset(40, size, rng)
        model = LogisticRegression(max_iter=3000).fit(w.reshape(len(w), -1), y)
        spec = window_spec(CHANNELS, size, size // 2, RATE)
        built = build_bundle(
            model, w, y, name="flat", version=1, out=tmp_path / f"{size}.zip", input_spec=spec
        )
        card = built.card
        assert [f["name"] for f in card["reference"]["features"]] == [
            f"{c}.{s}" for c in CHANNELS for s in ("mean", "std")
        ]
        assert card["input"]["shape"] == [None, size, 3]
        sizes[size] = len(json.dumps(card, separators=(",", ":")))
    # the flattened workaround's card, profiled per time step, weighed 1.66 MB
    assert sizes[128] < 64 * 1024 and sizes[512] < 64 * 1024, sizes


def test_the_cli_converts_a_model_on_signal_features_from_raw_windows(
    motion: tuple[np.ndarray, np.ndarray],
    features_model: LogisticRegression,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    windows, labels = motion
    joblib.dump(features_model, tmp_path / "m.joblib")
    np.save(tmp_path / "w.npy", windows)
    np.save(tmp_path / "y.npy", labels)
    out = tmp_path / "m.zip"
    common = ["model", "convert", str(tmp_path / "m.joblib"), "--name", "motion", "--version"]
    args = [*common, "1", "--sample", str(tmp_path / "w.npy"), "--labels", str(tmp_path / "y.npy")]
    window = ["--channels", "ax,ay,az", "--window", "128", "--stride", "64", "--rate", "50"]
    signal = ["--signal", ",".join(SIGNAL)]
    assert hub_main([*args, *window, *signal, "-o", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["report"]["parity"] == {"ok": True}
    card, runtime, _ = open_bundle(out)
    assert card.input == window_spec(CHANNELS, 128, 64, RATE, SIGNAL)
    x = signal_features(windows, SIGNAL, RATE)
    assert list(runtime.predict(x)) == list(features_model.predict(x))
    assert hub_main(["model", "inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "128 samples of ax, ay, az at 50 Hz, every 64" in shown
    assert "mean, std, band_power:0.5-4, band_power:4-12" in shown

    def refused(extra: list[str]) -> str:
        assert hub_main([*args, *extra, "-o", str(tmp_path / "no.zip")]) != 0
        return capsys.readouterr().err

    assert "expected --channels, --stride and --rate with it" in refused(["--window", "128"])
    assert "describe a --window input; give --window" in refused(["--stride", "4"])
    assert "--signal[1]: expected one of mean" in refused([*window, "--signal", "mean,rsm"])
    assert "expected window items of shape (n, 64, 3), got an array of shape (180, 128, 3)" in (
        refused(["--channels", "ax,ay,az", "--window", "64", "--stride", "8", "--rate", "50"])
    )
    assert "expects the training windows as a .npy array" in refused([*window, "--sample", "w.csv"])


def window_pipeline(features_model: LogisticRegression, tmp_path: Path, on_window: Any) -> Pipeline:
    """A pipeline serving a model on signal features of 128-sample windows every 64."""
    spec = window_spec(CHANNELS, 128, 64, RATE, SIGNAL)
    windows, labels = dataset(10, 128, np.random.default_rng(3))
    out = tmp_path / "m.zip"
    build_bundle(
        features_model,
        window_items(windows, spec),
        labels,
        name="m",
        version=1,
        out=out,
        input_spec=spec,
    )
    card, runtime, _ = open_bundle(out)
    pipeline = Pipeline(on_drift=lambda body: None, on_window=on_window)
    pipeline.active = ActiveModel.build(card, runtime, 200, 100, 1e4)
    return pipeline


def test_a_window_models_telemetry_counts_the_lines_it_took_even_before_a_window_is_full(
    motion: tuple[np.ndarray, np.ndarray], features_model: LogisticRegression, tmp_path: Path
) -> None:
    """The rollout gate's error rate divides refused lines by the lines a window model took
    (edge_agent.protocol.records.TelemetryWindow.lines), so the pipeline reports them, in
    the window they came in, even when they complete no window yet."""
    records: list[TelemetryWindow] = []
    pipeline = window_pipeline(features_model, tmp_path, records.append)
    s = stream(300)
    text = [("csv", line) for line in lines(s)]
    pipeline.process(text[:100])  # no window yet: 100 of 128 samples
    pipeline.flush_window()
    assert [(r.count, r.lines, r.error_count) for r in records] == [(0, 100, 0)]
    pipeline.process([*text[100:200], ("csv", b"0.1,oops,9.8")])  # the refused line restarts
    pipeline.process(text[200:])
    pipeline.flush_window()
    # samples 1-128 and 65-192 made two windows; after the restart, 100 samples make none
    assert [(r.count, r.lines, r.error_count) for r in records[1:]] == [(2, 200, 1)]


def test_lines_the_queue_had_no_room_for_restart_the_window(
    motion: tuple[np.ndarray, np.ndarray], features_model: LogisticRegression, tmp_path: Path
) -> None:
    """A device too slow for its sensor loses lines at its queue: the window being filled
    then must not join the samples before the hole to those after it."""
    records: list[TelemetryWindow] = []
    pipeline = window_pipeline(features_model, tmp_path, records.append)
    text = [("csv", line) for line in lines(stream(300))]
    backlog = Backlog(maxsize=150, max_bytes=10**9)
    refused = 0
    for line in text[:160]:  # the main loop is busy: 150 wait, 10 are refused
        try:
            backlog.put_nowait(line)
        except queue.Full:
            refused += 1
    pipeline.process(backlog.get_batch(1000, timeout=1.0))
    for line in text[160:]:
        backlog.put_nowait(line)
    pipeline.process(backlog.get_batch(1000, timeout=1.0))
    pipeline.flush_window()
    # 150 samples make one window (1-128), then framing starts again: 140 make one more.
    # Spanning the hole, 290 samples would have made three (at 128, 192 and 256).
    assert refused == 10
    assert sum(r.count for r in records) == 2
    assert sum(r.lines or 0 for r in records) == 290
    assert pipeline.active.framer.restarts == 1  # samples 129-150 were a window half filled
