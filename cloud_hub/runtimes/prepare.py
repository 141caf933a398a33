"""Building the cached runtime environments the converters check TFLite models on
(converters.runtimes.envs): a virtual environment per runtime, with pip, once per cache.

An environment is built under a lock (several hub processes, or test workers, may ask at the
same time), atomically: in a temporary folder beside its final place, renamed there only when
pip has installed everything, so a half-built environment is never used.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from converters.runtimes.envs import EnvSpec, env_folder, prepared_python, wanted_requirements
from edge_agent.errors import ConfigError

PYTHON = "3.11"  # the newest Python tflite-runtime 2.14 has wheels for (cp38 to cp311)
PIP_TIMEOUT_S = 900.0


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def prepare(spec: EnvSpec, say: Callable[[str], None] = _say) -> Path:
    """The Python of `spec`'s environment, built first if the cache has none (ConfigError in
    one line if it cannot be: no Python 3.11, pip cannot install the packages)."""
    python = prepared_python(spec)
    if python is not None:
        return python
    final = env_folder(spec)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{spec.name}.lock"):
        python = prepared_python(spec)
        if python is not None:  # another process built it while this one waited
            return python
        say(f"edgefleet: preparing {spec.title} (first use, ~1 min) in {final} ...")
        building = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=root))
        try:
            _build(building, spec, wanted_requirements(spec))
            if final.exists():  # built with other requirements: replaced
                shutil.rmtree(final)
            building.rename(final)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        say(f"edgefleet: {spec.title} ready")
    return final / "bin" / "python"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def base_python() -> str:
    """A Python 3.11 to build the environment with: this one's base interpreter, else
    python3.11 on PATH."""
    here = getattr(sys, "_base_executable", None) or sys.executable
    if sys.version_info[:2] == (3, 11):
        return here
    found = shutil.which(f"python{PYTHON}")
    if found is None:
        raise ConfigError(
            f"validating on a device runtime needs Python {PYTHON} (tflite-runtime 2.14 has no "
            f"wheels for Python {sys.version_info[0]}.{sys.version_info[1]}); "
            f"found no python{PYTHON} on PATH"
        )
    return found


def _build(folder: Path, spec: EnvSpec, wanted: str) -> None:
    _run([base_python(), "-m", "venv", str(folder)], spec, "creating its virtual environment")
    requirements = folder / "requirements.txt"
    requirements.write_text(wanted)
    _run(
        [
            str(folder / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "-r",
            str(requirements),
        ],
        spec,
        f"pip install {' '.join(spec.requirements)}",
    )


def _run(command: list[str], spec: EnvSpec, what: str) -> None:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot prepare {spec.title}: {what} failed ({exc})") from exc
    if done.returncode != 0:
        raise ConfigError(f"cannot prepare {spec.title}: {what} failed: {_last_error(done.stderr)}")


def _last_error(text: str) -> str:
    """pip's own error line (the first "ERROR:"), else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors[0] if errors else lines[-1] if lines else "no output")[:300]
