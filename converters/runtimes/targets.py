"""The TFLite runtime a device profile names, and a model run on it.

Each profile in firmware_configs/ names the oldest TFLite runtime its devices run (`[runtime]
tflite`, one of edge_agent.inference.tflite.TFLITE_RUNTIMES). "litert" is the hub's own runtime
(ai-edge-litert), run in this process; an older one runs in its cached environment (`envs`),
which the hub prepares once (`edgehub runtimes prepare`): a conversion never fetches anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from converters.runtimes.device_run import DeviceRun, run_tflite
from converters.runtimes.envs import EnvSpec, prepared_python
from edge_agent.config import load_profile
from edge_agent.errors import BundleRejected, ConfigError
from edge_agent.inference.tflite import TFLITE_RUNTIMES, TfliteRuntime, runtime_version

HUB_RUNTIME = "litert"
ENVS = {
    "tflite-runtime 2.14": EnvSpec(
        "tflite-runtime-2.14", "tflite-runtime 2.14", ("numpy<2", "tflite-runtime==2.14.0")
    ),
}


class NotPrepared(ConfigError):
    """The runtime's cached environment is missing: `edgehub runtimes prepare` builds it."""


def is_prepared(runtime: str) -> bool:
    """Whether `run_on(runtime, ...)` can run here without preparing anything."""
    spec = ENVS.get(check_runtime(runtime))
    return spec is None or prepared_python(spec) is not None


def profile_runtime(profile: str) -> str:
    """The TFLite runtime `profile` names (ConfigError in one line for an unknown profile, or a
    profile naming an unknown runtime)."""
    return str(load_profile(profile)["runtime"]["tflite"])


def check_runtime(name: str) -> str:
    """`name` if it is a known TFLite runtime; else ConfigError in one line."""
    if name not in TFLITE_RUNTIMES:
        raise ConfigError(
            f"TFLite runtime {name!r} is not one edgefleet knows; expected one of "
            f"{', '.join(map(repr, TFLITE_RUNTIMES))}"
        )
    return name


def run_on(
    runtime: str, model_bytes: bytes, x: np.ndarray, task: str, classes: Sequence[Any]
) -> DeviceRun:
    """`model_bytes` opened by the agent's TfliteRuntime under `runtime` and run on rows `x`:
    its outputs, or the runtime's reason for not loading it."""
    check_runtime(runtime)
    spec = ENVS.get(runtime)
    if spec is not None:
        python = prepared_python(spec)
        if python is None:
            raise NotPrepared(
                f"{runtime} is not prepared on this hub: run `edgehub runtimes prepare` once "
                "(pip fetches it, about a minute)"
            )
        return run_tflite(python, model_bytes, x, task, classes)
    here = runtime_version() or ""
    if not here.startswith(f"{HUB_RUNTIME} "):
        raise ConfigError(
            f"validating on {runtime} needs it installed beside the hub (pip install "
            f"edgefleet[litert]); found {here or 'no TFLite runtime'}"
        )
    try:
        opened = TfliteRuntime(model_bytes, task, classes, 1)
    except BundleRejected as exc:
        return DeviceRun(here, np.__version__, None, exc.detail)
    return DeviceRun(here, np.__version__, opened.outputs(x), None)
