"""`edgehub model convert`: a trained model and a data sample in, a bundle out; wrong inputs
get one clear line."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import joblib
import numpy as np
import onnx
import pytest
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cloud_hub.cli.app import main
from edge_agent.inference.runtime import OnnxRuntime
from edge_agent.update.bundle import read_bundle


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("convert")
    data = load_iris()
    model = LogisticRegression(max_iter=500).fit(data.data, data.target)
    joblib.dump(model, folder / "model.joblib")
    header = (
        ",".join(n.replace(" ", "_").replace("(", "").replace(")", "") for n in data.feature_names)
        + ",species"
    )
    rows = [",".join(map(str, r)) + f",{t}" for r, t in zip(data.data, data.target, strict=True)]
    (folder / "sample.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    np.save(folder / "sample.npy", data.data.astype(np.float32))
    return folder / "model.joblib", folder / "sample.csv", folder / "sample.npy"


def _convert(*args: str) -> list[str]:
    return ["model", "convert", *args, "--name", "iris", "--version", "1"]


def test_convert_csv_with_label_column(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, csv_path, _ = trained
    out = tmp_path / "iris-1.zip"
    assert (
        main(_convert(str(model), "--sample", str(csv_path), "--label", "species", "-o", str(out)))
        == 0
    )
    bundle = read_bundle(out.read_bytes(), None, 10**8)
    assert bundle.card.feature_names[0] == "sepal_length_cm"
    assert bundle.card.n_features == 4


def _headerless(csv_path: Path, tmp_path: Path) -> Path:
    """The sample without its header row: the first row is data."""
    path = tmp_path / "headerless.csv"
    path.write_text("".join(csv_path.read_text().splitlines(keepends=True)[1:]))
    return path


def test_convert_headerless_csv_label_by_index(
    trained: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, csv_path, _ = trained
    sample = _headerless(csv_path, tmp_path)
    out = tmp_path / "iris-1.zip"
    argv = _convert(str(model), "--sample", str(sample), "--label", "4", "-o", str(out))
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["report"]["label_agreement"] >= 0.97
    assert captured.err == (
        f"edgehub: note: {sample} has no header row (its first row is all numbers): read as "
        "data, the features named f0..f3\n"
    )
    bundle = read_bundle(out.read_bytes(), None, 10**8)
    assert bundle.card.feature_names == ["f0", "f1", "f2", "f3"]  # not the first row's numbers
    assert bundle.card.n_features == 4


def test_headerless_csv_keeps_its_first_row(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    from converters.inputs import load_table

    _, csv_path, _ = trained
    sample = _headerless(csv_path, tmp_path)
    x, y, names, _, _ = load_table(sample, "4")
    assert names is None
    assert x.shape == (150, 4) and y is not None and y.shape == (150,)
    assert x[0].tolist() == pytest.approx([5.1, 3.5, 1.4, 0.2])
    x, y, _, _, _ = load_table(sample, None)
    assert x.shape == (150, 5) and y is None


def test_headerless_csv_label_by_name_is_refused(
    trained: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, csv_path, _ = trained
    sample = _headerless(csv_path, tmp_path)
    out = str(tmp_path / "iris-1.zip")
    for label in ("species", "5", "-1"):
        _one_line_error(
            capsys,
            _convert(str(model), "--sample", str(sample), "--label", label, "-o", out),
            f"--label {label!r}: the file has no header (its first row is all numbers)",
            "by its index, 0 to 4",
        )


def test_convert_npy_without_labels_json(
    trained: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, _, npy = trained
    out = tmp_path / "iris-1.zip"
    assert main([*_convert(str(model), "--sample", str(npy), "-o", str(out)), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["report"]
    assert report["label_agreement"] >= 0.97


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edgehub: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def test_wrong_inputs_get_one_clear_line(
    trained: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, csv_path, npy = trained
    out = str(tmp_path / "x.zip")
    not_a_model = tmp_path / "junk.pkl"
    not_a_model.write_bytes(b"\x00not a pickle at all")
    a_dict = tmp_path / "dict.pkl"
    a_dict.write_bytes(pickle.dumps({"weights": [1, 2]}))
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b,c,d\n1,2,3,4\n1,2,oops,4\n")
    short_csv = tmp_path / "short.csv"
    short_csv.write_text("a,b,c,d\n1,2,3\n")
    wrong_width = tmp_path / "wide.npy"
    np.save(wrong_width, np.ones((5, 7), dtype=np.float32))
    text = tmp_path / "data.txt"
    text.write_text("1,2,3,4\n")

    _one_line_error(
        capsys,
        _convert(str(tmp_path / "nope.joblib"), "--sample", str(npy), "-o", out),
        "nope.joblib",
        "no such model file",
    )
    _one_line_error(
        capsys,
        _convert(str(not_a_model), "--sample", str(npy), "-o", out),
        "junk.pkl",
        "expected a pickled or joblib",
    )
    _one_line_error(
        capsys, _convert(str(a_dict), "--sample", str(npy), "-o", out), "dict.pkl", "got dict"
    )
    _one_line_error(
        capsys,
        _convert(str(model), "--sample", str(bad_csv), "-o", out),
        "bad.csv:3",
        "'c'",
        "expected a number, got 'oops'",
    )
    _one_line_error(
        capsys,
        _convert(str(model), "--sample", str(short_csv), "-o", out),
        "short.csv:2",
        "expected 4 fields",
    )
    _one_line_error(
        capsys,
        _convert(str(model), "--sample", str(csv_path), "--label", "kind", "-o", out),
        "'kind' is not a column",
    )
    _one_line_error(
        capsys,
        _convert(str(model), "--sample", str(wrong_width), "-o", out),
        "wide.npy",
        "expected 4 features",
        "got 7",
    )
    _one_line_error(
        capsys,
        _convert(str(model), "--sample", str(text), "-o", out),
        "expected a .csv file with a header or a .npy file",
    )
    for name, version, needle in (("Iris!", "1", "model name"), ("iris", "one", "NAME@VERSION")):
        argv = ["model", "convert", str(model), "--sample", str(npy), "-o", out]
        _one_line_error(capsys, [*argv, "--name", name, "--version", version], needle)
    assert not (tmp_path / "x.zip").exists()


# ---- other model formats, quantization, thresholds, inspect ----------------------------------
@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """An MLP with one outlier weight on a pixel that is always 0: harmless in float32,
    ruinous in int8 (the outlier sets the weight scale, every other weight rounds to 0)."""
    folder = tmp_path_factory.mktemp("digits")
    x, y = load_digits(return_X_y=True)
    assert not x[:, 0].any()
    model = MLPClassifier((32,), max_iter=300, random_state=0).fit(x, y)
    model.coefs_[0][0, :] = 1e4
    joblib.dump(model, folder / "outlier.joblib")
    np.save(folder / "x.npy", x.astype(np.float32))
    np.save(folder / "y.npy", y)
    return folder / "outlier.joblib", folder / "x.npy", folder / "y.npy"


def test_int8_that_ruins_accuracy_fails_unless_forced(
    digits: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, x, y = digits
    out = tmp_path / "d.zip"
    argv = ["model", "convert", str(model), "--sample", str(x), "--labels", str(y)]
    argv += ["--name", "digits", "--version", "1", "-o", str(out), "--quantize", "static"]
    _one_line_error(capsys, argv, "parity check failed", "accuracy", "expected at most 0.0100")
    assert not out.exists()
    _one_line_error(
        capsys, [*argv, "--max-accuracy-drop", "0.5"], "parity check failed", "at most 0.5000"
    )
    assert main([*argv, "--force"]) == 0
    assert "PARITY FAILED" in capsys.readouterr().out
    card = read_bundle(out.read_bytes(), None, 10**8).card
    assert card.validation["parity"] == {
        "ok": False,
        "forced": True,
        "detail": card.validation["parity"]["detail"],
    }
    assert main(["model", "inspect", str(out)]) == 0
    assert "PARITY FAILED" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["-0.1", "2", "lots"])
def test_threshold_must_be_a_fraction(
    digits: tuple[Path, Path, Path], value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model, x, _ = digits
    argv = [*_convert(str(model), "--sample", str(x), "-o", "o.zip"), "--max-rmse-rise", value]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert f"expected a number from 0 to 1, got {value!r}" in capsys.readouterr().err


def test_static_int8_mlp_is_small_and_keeps_accuracy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, y = load_breast_cancer(return_X_y=True)
    model = make_pipeline(StandardScaler(), MLPClassifier((128, 128), max_iter=300, random_state=0))
    joblib.dump(model.fit(x, y), tmp_path / "mlp.pkl")
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    np.save(tmp_path / "y.npy", y)
    argv = ["model", "convert", str(tmp_path / "mlp.pkl"), "--sample", str(tmp_path / "x.npy")]
    argv += ["--labels", str(tmp_path / "y.npy"), "--name", "tumor", "--version", "3"]
    assert main([*argv, "-o", str(tmp_path / "t.zip"), "--quantize", "static", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["report"]
    assert report["quantize"] == "static"
    assert report["size_ratio"] < 0.35
    assert report["accuracy_before"] - report["accuracy_after"] <= 0.01
    card = read_bundle((tmp_path / "t.zip").read_bytes(), None, 10**8).card
    assert card.raw["quantize"] == "static"
    assert card.raw["input"]["min"] == [f.min for f in card.features]


def test_onnx_file_with_zipmap_is_brought_to_the_contract(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, y = load_wine(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y + 10)
    onnx_model = to_onnx(model, x[:1].astype(np.float32))  # skl2onnx's default: a ZipMap
    assert [o.name for o in onnx_model.graph.output] == ["output_label", "output_probability"]
    (tmp_path / "wine.onnx").write_bytes(onnx_model.SerializeToString())
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    np.save(tmp_path / "y.npy", y + 10)
    argv = ["model", "convert", str(tmp_path / "wine.onnx"), "--sample", str(tmp_path / "x.npy")]
    argv += ["--labels", str(tmp_path / "y.npy"), "--name", "wine", "--version", "2"]
    assert main([*argv, "-o", str(tmp_path / "w.zip"), "--quantize", "none", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["report"]
    assert report["max_abs_diff"] == 0.0 and report["label_agreement"] == 1.0
    bundle = read_bundle((tmp_path / "w.zip").read_bytes(), None, 10**8)
    assert bundle.card.classes == (10, 11, 12)
    assert bundle.card.framework == "onnx"
    graph = onnx.load_from_string(bundle.model_bytes).graph
    assert [i.name for i in graph.input] == ["X"]
    assert [o.name for o in graph.output] == ["label", "probabilities"]
    assert all(n.op_type != "ZipMap" for n in graph.node)
    runtime = OnnxRuntime(bundle.model_bytes)
    sample = np.asarray(bundle.card.sample_inputs, np.float32)
    assert runtime.predict(sample).tolist() == list(bundle.card.sample_outputs)
    assert runtime.scores(sample).shape == (len(sample), 3)


def test_inspect_shows_card_and_report(
    trained: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, csv_path, _ = trained
    out = tmp_path / "iris-1.zip"
    argv = _convert(str(model), "--sample", str(csv_path), "--label", "species", "-o", str(out))
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["model", "inspect", str(out)]) == 0
    table = capsys.readouterr().out
    for needle in ("iris@1", "scikit-learn", "LogisticRegression", "petal_width_cm", "parity OK"):
        assert needle in table
    assert main(["model", "inspect", str(out), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["name"] == "iris" and card["validation"]["parity"]["ok"] is True
    _one_line_error(capsys, ["model", "inspect", str(csv_path)], "not a valid bundle", "zip")
    _one_line_error(capsys, ["model", "inspect", str(tmp_path / "none.zip")], "cannot read")


def test_broken_model_files_and_data_leave_no_bundle(
    trained: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, _, npy = trained
    out = tmp_path / "x.zip"
    real = model.read_bytes()
    files = {
        "empty.joblib": b"",
        "truncated.joblib": real[: len(real) // 2],
        "empty.onnx": b"",
        "truncated.onnx": to_onnx(
            LogisticRegression(max_iter=500).fit(*load_iris(return_X_y=True)),
            np.zeros((1, 4), np.float32),
        ).SerializeToString()[:200],
        "random.onnx": bytes(range(256)) * 4,
        "model.h6": real,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    for name, needle in (
        ("empty.joblib", "expected a pickled or joblib"),
        ("truncated.joblib", "expected a pickled or joblib"),
        ("empty.onnx", "got an empty file"),
        ("truncated.onnx", "expected an ONNX model"),
        ("random.onnx", "expected an ONNX model"),
        ("model.h6", "expected a model file ending in one of"),
    ):
        _one_line_error(
            capsys,
            _convert(str(tmp_path / name), "--sample", str(npy), "-o", str(out)),
            name,
            needle,
        )
    data = {
        "inf.csv": "a,b,c,d\n1,2,3,4\n1,inf,3,4\n",
        "empty.csv": "",
        "header-only.csv": "a,b,c,d\n",
    }
    for name, text in data.items():
        (tmp_path / name).write_text(text)
    np.save(tmp_path / "nan.npy", np.full((3, 4), np.nan, np.float32))
    for name, needle in (
        ("inf.csv", "expected finite values or NaN, got infinity"),
        ("empty.csv", "expected a header row and at least one data row"),
        ("header-only.csv", "expected a header row and at least one data row"),
        ("nan.npy", "entirely NaN"),
    ):
        _one_line_error(
            capsys, _convert(str(model), "--sample", str(tmp_path / name), "-o", str(out)), needle
        )
    assert not out.exists()
    assert list(tmp_path.glob(".*")) == []  # no temporary bundle left behind either


def test_an_empty_label_cell_is_named_not_turned_into_text(
    trained: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, sample, _ = trained
    lines = sample.read_text().splitlines()
    lines[8] = lines[8].rsplit(",", 1)[0] + ","  # the label cell of the file's line 9
    holed = tmp_path / "holed.csv"
    holed.write_text("\n".join(lines) + "\n")
    argv = _convert(str(model), "--sample", str(holed), "--label", "species", "-o", "o.zip")
    _one_line_error(capsys, argv, f"{holed}:9, column 'species': expected a label, got an empty")


def test_nan_for_a_model_that_cannot_take_it_is_one_line(
    trained: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, sample, _ = trained
    lines = sample.read_text().splitlines()
    lines[4] = "," + lines[4].split(",", 1)[1]  # the first feature of data row index 3: empty
    holed = tmp_path / "holed.csv"
    holed.write_text("\n".join(lines) + "\n")
    argv = _convert(str(model), "--sample", str(holed), "--label", "species", "-o", "o.zip")
    _one_line_error(
        capsys,
        argv,
        "1 row(s) hold missing values",
        "row index 3",
        "column(s) [0]",
        "LogisticRegression cannot take missing values",
    )


def test_nan_for_a_model_that_takes_it_still_converts(tmp_path: Path) -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, y = load_breast_cancer(return_X_y=True)
    x = x.copy()
    x[::7, 2] = np.nan
    model = HistGradientBoostingClassifier(max_iter=20).fit(x, y)
    joblib.dump(model, tmp_path / "hgb.joblib")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    argv = _convert(
        str(tmp_path / "hgb.joblib"),
        "--sample",
        str(tmp_path / "x.npy"),
        "--labels",
        str(tmp_path / "y.npy"),
        "-o",
        str(tmp_path / "h.zip"),
    )
    assert main(argv) == 0
    assert (tmp_path / "h.zip").is_file()


def test_output_at_a_directory_is_one_line(
    trained: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, sample, _ = trained
    argv = _convert(str(model), "--sample", str(sample), "--label", "species", "-o", str(tmp_path))
    _one_line_error(capsys, argv, f"-o {tmp_path}: expected a bundle file path", "a directory")


def test_output_under_a_file_is_one_line_before_any_conversion(
    trained: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, sample, _ = trained
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder\n")
    for out in (a_file / "iris.zip", a_file / "deeper" / "iris.zip"):
        argv = _convert(str(model), "--sample", str(sample), "--label", "species", "-o", str(out))
        _one_line_error(
            capsys,
            argv,
            f"-o {out}: expected a bundle file path in a folder, but {a_file} is a file",
        )
    assert a_file.read_text() == "not a folder\n"


def test_a_bundle_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    """The library's own writer: the system's reason, the path, no OSError."""
    from converters.bundle import write_bundle
    from edge_agent.errors import StorageError

    blocker = tmp_path / "blocker"
    blocker.write_text("")
    card = {"model_file": "model.onnx"}
    with pytest.raises(StorageError, match=str(blocker / "x.zip")):
        write_bundle(blocker / "x.zip", card, b"model")
