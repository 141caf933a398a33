"""The command lines' one-line errors (`hub_fails`, `agent_fails`: the exit code is not 0, stderr
is one line, no traceback) and `bundle`, a small bundle the hub accepts."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from cloud_hub.cli import app as hub_cli
from edge_agent import cli as agent_cli


def one_line_error(capsys: pytest.CaptureFixture[str], code: int, prog: str) -> str:
    _, err = capsys.readouterr()
    assert code != 0
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert err.startswith(f"{prog}: error: ")
    return err.strip()


def hub_fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    return one_line_error(capsys, hub_cli.main(list(argv)), "edgehub")


def agent_fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    return one_line_error(capsys, agent_cli.main(list(argv)), "edge-agent")


def bundle(name: str = "wine", version: int = 1) -> bytes:
    """A bundle the hub accepts: card.json and the model file it names."""
    card = {
        "card_version": 1,
        "name": name,
        "version": version,
        "task": "classification",
        "runtime": "onnxruntime",
        "model_file": "model.onnx",
        "input": {"name": "input"},
        "classes": [0, 1],
        "reference": {
            "features": [
                {
                    "name": "f0",
                    "edges": [0.5],
                    "counts": [3, 3],
                    "mean": 0.5,
                    "std": 0.5,
                    "missing_rate": 0.0,
                    "min": 0.0,
                    "max": 1.0,
                }
            ],
            "predictions": {"counts": [3, 3]},
        },
        "sample": {"inputs": [[0.0], [1.0]], "outputs": [0, 1]},
        "health": {"max_latency_ms": 50.0, "min_agreement": 0.9},
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("card.json", json.dumps(card))
        z.writestr("model.onnx", b"not really onnx")
    return buf.getvalue()
