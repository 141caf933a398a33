"""A TFLite model run by the device agent's own code under an older runtime, in a subprocess.

The subprocess is the cached environment's Python (`envs`) with only the `edge_agent` package
on its path (a folder holding a link to it: the hub's own site-packages, with numpy 2, must not
leak in). It opens the model with `edge_agent.inference.tflite.TfliteRuntime`, as a device
does, and writes the model's outputs for the given rows, or the runtime's load error (e.g.
"Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'").
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import edge_agent
from edge_agent.errors import ConfigError
from edge_agent.protocol.frozen import frozen

RUN_TIMEOUT_S = 300.0

# argv: model file, inputs .npy, outputs .npy, task, classes as JSON; prints one JSON line
_SCRIPT = """
import json, sys
import numpy as np
from edge_agent.errors import BundleRejected
from edge_agent.inference.tflite import TfliteRuntime, runtime_version
model, inputs, outputs, task, classes = sys.argv[1:6]
result = {"runtime": runtime_version(), "numpy": np.__version__}
try:
    runtime = TfliteRuntime(open(model, "rb").read(), task, json.loads(classes), 1)
except BundleRejected as exc:
    result["error"] = exc.detail
else:
    np.save(outputs, runtime.outputs(np.load(inputs)))
print(json.dumps(result))
"""


@frozen
class DeviceRun:
    runtime: str  # what ran it: "tflite-runtime 2.14.0"
    numpy: str  # the numpy beside it: "1.26.4"
    outputs: np.ndarray | None  # (n, k) float32; None if the model did not load
    error: str | None  # the runtime's reason for not loading it


def run_tflite(
    python: Path, model_bytes: bytes, x: np.ndarray, task: str, classes: Sequence[Any]
) -> DeviceRun:
    """`model_bytes` opened by the agent's TfliteRuntime under `python`, run on rows `x`."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-device-run-") as tmp:
        folder = Path(tmp)
        env = agent_environment(folder / "path")
        model, inputs, outputs = folder / "model.tflite", folder / "x.npy", folder / "out.npy"
        model.write_bytes(model_bytes)
        np.save(inputs, np.ascontiguousarray(x, dtype=np.float32))
        command = [str(python), "-s", "-c", _SCRIPT, str(model), str(inputs), str(outputs)]
        command += [task, json.dumps([_plain(c) for c in classes])]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"cannot run the model under {python}: {exc}") from exc
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            last = [line for line in done.stderr.strip().splitlines() if line.strip()]
            raise ConfigError(
                f"the device runtime under {python} failed (exit {done.returncode}): "
                f"{last[-1] if last else 'no output'}"
            )
        result = json.loads(lines[-1])
        got = np.load(outputs) if outputs.exists() else None
    return DeviceRun(
        runtime=str(result.get("runtime")),
        numpy=str(result.get("numpy")),
        outputs=got,
        error=result.get("error"),
    )


def agent_environment(folder: Path) -> dict[str, str]:
    """This process's environment variables for a Python of a cached environment that imports
    the agent's own `edge_agent` package, and nothing else from here: `folder` (created) holds
    only a link to it and is its PYTHONPATH; other PYTHON* variables are dropped."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "edge_agent").symlink_to(Path(edge_agent.__file__).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH=str(folder), PYTHONNOUSERSITE="1")
    return env


def _plain(value: Any) -> Any:
    """A class label as JSON takes it (numpy scalars as Python ones)."""
    return value.item() if isinstance(value, np.generic) else value
