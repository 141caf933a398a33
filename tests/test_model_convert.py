"""`edgehub model convert`: a trained model and a data sample in, a bundle out; wrong inputs
get one clear line."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from cloud_hub.cli import main
from edge_agent.bundle import read_bundle


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
